"""Issue 3 end to end, persistence details against the real ``lbproxy`` process.

First requests from one client that arrive together, ``balance: source`` across two lbproxy
instances and across a dead server, the cookie as the real server sees it (``indirect``: never)
and as the client gets it (HAProxy's bytes, with the configured attributes), a crowd of source-
persistent clients through a kill, and curl bound to two loopback addresses.
"""

from __future__ import annotations

import http.client
import pathlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.process import backend, free_port, lbproxy, stop
from tests.e2e.test_failover import (
    COOKIE,
    HEALTH_DEFAULTS,
    PACE,
    PHASE_LIMIT,
    REQUEST_TIMEOUT,
    SETTLE,
    Client,
    failures,
    get,
    requesting,
    running,
    stats,
    write_config,
)

pytestmark = pytest.mark.e2e

# Requests fired at once by one client: more than the proxy's two cores can serve one by one,
# so they overlap inside it (haproxy/haproxy#3243 needed only two).
TOGETHER = 8
# Client addresses for the hashing test: enough that each of three servers gets several.
HASH_CLIENTS = [f"127.0.0.{n}" for n in range(30, 70)]


def together(port: int, source: str) -> tuple[list[str], list[str]]:
    """TOGETHER first requests from ``source`` released at once: (servers, errors)."""
    barrier = threading.Barrier(TOGETHER)
    served: list[str] = []
    errors: list[str] = []

    def fire() -> None:
        try:
            barrier.wait(timeout=REQUEST_TIMEOUT)
            served.append(get(port, source).server)
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=fire, daemon=True) for _ in range(TOGETHER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * REQUEST_TIMEOUT)
    return served, errors


def test_first_requests_arriving_together_stick_to_one_server(tmp_path: pathlib.Path) -> None:
    with running(
        tmp_path, ["web1", "web2", "web3"], persistence="{source: {timeout: 5m, mask: 32}}"
    ) as setup:
        first_servers: list[str] = []
        for n in range(5):
            served, errors = together(setup.port, f"127.0.0.{20 + n}")
            assert errors == []
            assert len(served) == TOGETHER
            assert len(set(served)) == 1, served
            first_servers.append(served[0])
        # Different clients are still balanced: round robin gave them different servers.
        assert len(set(first_servers)) == 3, first_servers


def mapping(port: int) -> dict[str, str]:
    """Which real server answers each of HASH_CLIENTS through the proxy on ``port``."""
    return {source: get(port, source).server for source in HASH_CLIENTS}


def wait_status(stats_port: int, label: str, status: str) -> bool:
    deadline = time.monotonic() + PHASE_LIMIT
    while time.monotonic() < deadline:
        if stats(stats_port)[f"www/{label}"]["status"] == status:
            return True
        time.sleep(PACE)
    return False


def test_balance_source_two_instances_agree_and_a_dead_server_moves_only_its_clients(
    tmp_path: pathlib.Path,
) -> None:
    labels = ["web1", "web2", "web3"]
    ports = {label: free_port() for label in labels}
    servers = [f"{{label: {label}, address: 127.0.0.1:{p}}}" for label, p in ports.items()]
    proxies = []
    for name in ("one", "two"):
        config = tmp_path / f"{name}.yaml"
        port, stats_port = free_port(), free_port()
        write_config(
            config,
            port=port,
            stats_port=stats_port,
            servers=servers,
            balance="source",
            health_check=HEALTH_DEFAULTS,
        )
        proxies.append((config, port, stats_port))
    with ExitStack() as stack:
        procs = {label: stack.enter_context(backend(label, p)) for label, p in ports.items()}
        for config, port, _ in proxies:
            stack.enter_context(lbproxy(config, ("127.0.0.1", port)))
        (_, port1, stats1), (_, port2, stats2) = proxies

        before = mapping(port1)
        # Consistent hashing over the labels: two instances agree without talking.
        assert mapping(port2) == before
        assert set(before.values()) == set(labels)

        stop(procs["web2"])
        # Refused connects move web2's clients along the ring at once, before any check.
        during = mapping(port1)
        assert mapping(port2) == during
        moved = {source for source in HASH_CLIENTS if during[source] != before[source]}
        assert moved == {source for source, label in before.items() if label == "web2"}
        assert "web2" not in during.values()
        print(
            f"\n[balance source] killing 1 of 3 servers moved {len(moved)} of "
            f"{len(HASH_CLIENTS)} clients, exactly those it served"
        )
        assert wait_status(stats1, "web2", "DOWN")
        assert wait_status(stats2, "web2", "DOWN")
        assert mapping(port1) == during == mapping(port2)

        procs["web2"] = stack.enter_context(backend("web2", ports["web2"]))
        assert wait_status(stats1, "web2", "UP")
        assert wait_status(stats2, "web2", "UP")
        # No table: once the server is back, its clients hash to it again.
        assert mapping(port1) == before == mapping(port2)


def echo_handler(label: str) -> type[BaseHTTPRequestHandler]:
    """A real server that answers with the Cookie header it received ("-" if none)."""

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = (self.headers.get("Cookie") or "-").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", label)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Echo


@contextmanager
def echo_server(label: str) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), echo_handler(label))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=REQUEST_TIMEOUT)


def exchange(port: int, cookie: str | None) -> tuple[str, str, list[str], str | None]:
    """(server, the Cookie header the server saw, Set-Cookie values, Cache-Control)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Cookie": cookie} if cookie is not None else {})
        resp = conn.getresponse()
        seen = resp.read().decode()
        assert resp.status == 200
        return (
            resp.getheader("X-Served-By") or "",
            seen,
            resp.msg.get_all("Set-Cookie") or [],
            resp.getheader("Cache-Control"),
        )
    finally:
        conn.close()


def test_the_cookie_never_reaches_the_server_and_carries_its_attributes(
    tmp_path: pathlib.Path,
) -> None:
    port, stats_port = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    with echo_server("echo1") as p1, echo_server("echo2") as p2:
        write_config(
            config,
            port=port,
            stats_port=stats_port,
            servers=[
                f"{{label: echo1, address: 127.0.0.1:{p1}}}",
                f"{{label: echo2, address: 127.0.0.1:{p2}}}",
            ],
            persistence=f"{{cookie: {COOKIE}, httponly: true, samesite: Lax, domain: Example.COM}}",
        )
        with lbproxy(config, ("127.0.0.1", port)):
            server, seen, set_cookies, cache = exchange(port, "a=1; b=2")
            assert seen == "a=1; b=2"
            # HAProxy's order: path, domain, HttpOnly, Secure (TLS only), then attributes.
            assert set_cookies == [
                f"{COOKIE}={server}; path=/; domain=example.com; HttpOnly; SameSite=Lax"
            ]
            assert cache == "private"

            # indirect: ours is taken out, the application's cookies keep their order.
            again = exchange(port, f"a=1; {COOKIE}={server}; b=2")
            assert again == (server, "a=1; b=2", [], None)
            alone = exchange(port, f"{COOKIE}={server}")
            assert alone == (server, "-", [], None)

            # An unknown label is no cookie: balanced, a new cookie, still stripped.
            other, seen, set_cookies, _ = exchange(port, f"{COOKIE}=nosuch; c=3")
            assert seen == "c=3"
            assert [value.split(";")[0] for value in set_cookies] == [f"{COOKIE}={other}"]
            # A forged value (quotes) is no cookie either, and never reaches the server.
            forged = exchange(port, f'{COOKIE}="{server}"')
            assert forged[1] == "-"
            assert len(forged[2]) == 1


# The crowd test: clients, and the pause between one client's requests. Twelve clients at
# 20 requests/s each keep the proxy busy on two cores, so many requests are in flight at the
# kill, and several kept-alive connections to the dead server sit in the proxy's pool.
CROWD = 12
CROWD_PACE = 0.05


def test_a_crowd_through_a_kill_only_the_dead_servers_clients_move(
    tmp_path: pathlib.Path,
) -> None:
    with running(
        tmp_path,
        ["web1", "web2", "web3"],
        persistence="{source: {timeout: 5m, mask: 32}}",
        health_check=HEALTH_DEFAULTS,
    ) as setup:
        clients = [
            Client(setup.port, f"127.0.0.{40 + i}", keep_alive=i % 2 == 0) for i in range(CROWD)
        ]
        for client in clients:
            client.request()
        before = {client.source: client.server for client in clients}
        assert set(before.values()) == {"web1", "web2", "web3"}, failures(clients)
        with requesting(clients, interval=CROWD_PACE):
            time.sleep(SETTLE)
            setup.kill("web2")
            dead_since = time.monotonic()  # the process is gone: nothing it answers comes later
            assert wait_status(setup.stats_port, "web2", "DOWN")
            time.sleep(SETTLE)
        for client in clients:
            client.close()
        total = sum(len(client.seen) for client in clients)
        print(f"\n[crowd] {CROWD} clients, {total} requests through the kill, none failed")
        assert failures(clients) == []
        for client in clients:
            if before[client.source] == "web2":
                assert client.servers_since(dead_since) <= {"web1", "web3"}
                assert client.server in ("web1", "web3")
            else:
                assert client.servers_since(0) == {before[client.source]}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_from_two_addresses_sees_two_servers_and_sticks(tmp_path: pathlib.Path) -> None:
    """The seed's manual check, with curl bound to 127.0.0.2 and 127.0.0.3."""
    with running(
        tmp_path, ["web1", "web2"], persistence="{source: {timeout: 5m, mask: 32}}"
    ) as setup:
        url = f"http://127.0.0.1:{setup.port}/"

        def curl(source: str) -> str:
            result = subprocess.run(
                ["curl", "-sS", "--max-time", str(REQUEST_TIMEOUT), "--interface", source, url],
                capture_output=True,
                text=True,
                timeout=2 * REQUEST_TIMEOUT,
            )
            assert result.returncode == 0, result.stderr
            return result.stdout.split()[0]

        # In order: round robin gives the first two new clients one server each.
        first, second = curl("127.0.0.2"), curl("127.0.0.3")
        assert {first, second} == {"web1", "web2"}
        for _ in range(3):
            assert (curl("127.0.0.2"), curl("127.0.0.3")) == (first, second)
