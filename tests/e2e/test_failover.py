"""Issue 3 end to end: persistence, health checks and failover against the real ``lbproxy``.

The seed appliance's acceptance test, automated: two clients see different real servers; one
server dies; within 6 s both are on the survivor and no GET fails; the server comes back; within
6 s new clients spread again. The same with cookie persistence, with the fallback server, with
server states set in the config, and with HTTP health checks whose state changes are logged.

Every server is a real process (tests/e2e/backend.py) killed with SIGKILL, which is what a pulled
cable looks like on loopback minus the timeouts: the kernel refuses new connects at once. In each
pair of clients one keeps its connection to the proxy alive like a browser and the other opens
one per request. Run with ``pytest -s`` to see the measured times.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.process import Lbproxy, backend, free_port, lbproxy, stop

pytestmark = pytest.mark.e2e

# One request's socket timeout: bounds every client I/O; a loopback answer takes milliseconds.
REQUEST_TIMEOUT = 5.0
# The seed's acceptance test has its clients request about every 100 ms.
PACE = 0.1
# The appliance's promise: HAProxy's defaults (inter 2 s, fall 3) take a dead server out of
# the rotation within 6 s, and rise 2 brings a live one back sooner than that.
DETECTION_LIMIT = 6.0
# A phase gives up this long after it began, so a broken proxy fails the test with what was
# seen instead of hanging: the limit under test plus room to observe a late transition.
PHASE_LIMIT = DETECTION_LIMIT + 3.0
# Iterations per phase: PHASE_LIMIT at PACE, with room for requests that answer at once.
MAX_TICKS = int(PHASE_LIMIT / PACE) + 10
# Requests one client thread may make: a whole phase at PACE, and then some.
MAX_REQUESTS = 2 * MAX_TICKS
# Clients go on this long after the server was marked DOWN, to show that the state change
# itself costs no request either.
SETTLE = 1.0
# The defaults, written out: the test is about exactly these numbers.
HEALTH_DEFAULTS = "{interval: 2s, rise: 2, fall: 3, timeout: 1s}"
COOKIE = "SERVERID"
# HAProxy's cookie clearing for a server without a cookie (src/http_ana.c), byte for byte.
CLEARED = f"{COOKIE}=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/"


@dataclass(frozen=True)
class Reply:
    status: int
    server: str  # the real server that answered (its X-Served-By header)
    body: str
    set_cookies: tuple[str, ...]
    cache_control: str | None


def connect(port: int, source: str) -> http.client.HTTPConnection:
    """A client connection from ``source`` (a 127.0.0.x address of this host)."""
    return http.client.HTTPConnection(
        "127.0.0.1", port, timeout=REQUEST_TIMEOUT, source_address=(source, 0)
    )


def send_get(conn: http.client.HTTPConnection, cookie: str | None, path: str = "/") -> Reply:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    return Reply(
        status=resp.status,
        server=resp.getheader("X-Served-By") or "",
        body=body,
        set_cookies=tuple(resp.msg.get_all("Set-Cookie") or ()),
        cache_control=resp.getheader("Cache-Control"),
    )


def get(port: int, source: str, cookie: str | None = None, path: str = "/") -> Reply:
    """One GET on a fresh connection from ``source``."""
    conn = connect(port, source)
    try:
        return send_get(conn, cookie, path)
    finally:
        conn.close()


def jar_value(set_cookie: str) -> str | None:
    """What a browser keeps from one of our ``Set-Cookie`` values: the label, or None if cleared."""
    name, _, rest = set_cookie.partition("=")
    assert name == COOKIE, set_cookie
    value = rest.split(";", 1)[0]
    return value or None


@dataclass
class Client:
    """A browser-like client: one source address, a cookie jar if cookies are in play.

    ``keep_alive``: one connection to the proxy for all requests, as a browser keeps it
    (reopened by http.client only when the proxy closed it after a response); otherwise a
    fresh connection per request.
    """

    port: int
    source: str
    cookies: bool = False
    keep_alive: bool = False
    cookie: str | None = None
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # when each failed request started
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, server)
    took: list[float] = field(default_factory=list)  # seconds each answer in ``seen`` took
    set_cookies: list[tuple[float, str]] = field(default_factory=list)
    last: Reply | None = None
    conn: http.client.HTTPConnection | None = None

    def request(self) -> Reply | None:
        started = time.monotonic()
        cookie = self.cookie if self.cookies else None
        try:
            if self.keep_alive:
                self.conn = self.conn or connect(self.port, self.source)
                reply = send_get(self.conn, cookie)
            else:
                reply = get(self.port, self.source, cookie)
        except (OSError, http.client.HTTPException) as error:
            self.close()
            self.failures.append(f"{self.source}: {type(error).__name__}: {error}")
            self.failed_at.append(started)
            return None
        # The body names the same server as the header: the answer really came from it.
        if reply.status != 200 or not reply.body.startswith(f"{reply.server} GET / "):
            self.failures.append(f"{self.source}: {reply.status} {reply.body!r}")
            self.failed_at.append(started)
            return None
        for value in reply.set_cookies:
            self.set_cookies.append((started, value))
            if self.cookies:
                self.cookie = jar_value(value)
        self.seen.append((started, reply.server))
        self.took.append(time.monotonic() - started)
        self.last = reply
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @property
    def server(self) -> str | None:
        return self.seen[-1][1] if self.seen else None

    def servers_since(self, moment: float) -> set[str]:
        return {server for when, server in self.seen if when >= moment}

    def cookies_since(self, moment: float) -> list[str]:
        return [value for when, value in self.set_cookies if when >= moment]


def stats(port: int) -> dict[str, dict[str, object]]:
    """The stats page's JSON rows keyed ``pool/label``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/?json")
        resp = conn.getresponse()
        assert resp.status == 200
        rows = json.loads(resp.read())
    finally:
        conn.close()
    return {f"{row['pool']}/{row['label']}": row for row in rows}


def pace(started: float) -> None:
    time.sleep(max(0.0, PACE - (time.monotonic() - started)))


def write_config(
    path: pathlib.Path,
    *,
    port: int,
    stats_port: int,
    servers: Sequence[str],
    **keys: str,
) -> None:
    """One virtual server ``www`` on ``port``; ``servers`` are YAML flow mappings."""
    lines = [
        f"global: {{grace: 1s, stats: {{bind: 127.0.0.1:{stats_port}}}}}",
        "virtual_servers:",
        "  - label: www",
        f"    bind: 127.0.0.1:{port}",
        *(f"    {key}: {value}" for key, value in keys.items()),
        "    real_servers:",
        *(f"      - {server}" for server in servers),
    ]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Setup:
    port: int
    stats_port: int
    ports: dict[str, int]  # server label -> port, the fallback's label included
    procs: dict[str, subprocess.Popen[bytes]]
    stack: ExitStack
    proxy: Lbproxy

    def kill(self, label: str) -> None:
        stop(self.procs[label])  # SIGKILL: no goodbye, new connects are refused at once

    def restart(self, label: str) -> None:
        """The same server again on the same port; returns once it listens."""
        self.procs[label] = self.stack.enter_context(backend(label, self.ports[label]))

    def status(self, label: str) -> str:
        return str(stats(self.stats_port)[f"www/{label}"]["status"])


@contextmanager
def running(
    tmp_path: pathlib.Path,
    labels: Sequence[str],
    *,
    extra: dict[str, str] | None = None,
    fallback: str | None = None,
    **keys: str,
) -> Iterator[Setup]:
    """Real servers ``labels`` (with per-label YAML ``extra``) behind one lbproxy process.

    ``fallback`` names a further server process that becomes the pool's fallback server.
    """
    port, stats_port = free_port(), free_port()
    ports = {label: free_port() for label in labels}
    extra = extra or {}
    servers = [
        f"{{label: {label}, address: 127.0.0.1:{p}{extra.get(label, '')}}}"
        for label, p in ports.items()
    ]
    if fallback is not None:
        ports[fallback] = free_port()
        keys["fallback"] = f"127.0.0.1:{ports[fallback]}"
    config = tmp_path / "lb.yaml"
    write_config(config, port=port, stats_port=stats_port, servers=servers, **keys)
    with ExitStack() as stack:
        procs = {label: stack.enter_context(backend(label, p)) for label, p in ports.items()}
        proxy = stack.enter_context(lbproxy(config, ("127.0.0.1", port)))
        yield Setup(port, stats_port, ports, procs, stack, proxy)


@dataclass
class Failover:
    """When things happened after the kill, in seconds (None: not within the phase)."""

    killed_at: float  # monotonic time of the kill
    first_failed_check: float | None  # the checker's first failed probe (stats check_status)
    down: float | None  # the stats page shows the server DOWN
    all_moved: float | None  # every client's last answer came from the survivor


def fail_over(setup: Setup, clients: Sequence[Client], killed: str, survivor: str) -> Failover:
    """Kill ``killed`` and keep the clients requesting every PACE until it is DOWN (+SETTLE)."""
    killed_at = time.monotonic()
    setup.kill(killed)
    result = Failover(killed_at, None, None, None)
    for _ in range(MAX_TICKS):
        tick = time.monotonic()
        if tick - killed_at > PHASE_LIMIT:
            break
        for client in clients:
            client.request()
        row = stats(setup.stats_port)[f"www/{killed}"]
        elapsed = time.monotonic() - killed_at
        if result.first_failed_check is None and row["check_status"] not in ("", "L4OK", "L7OK"):
            result.first_failed_check = elapsed
        if result.down is None and row["status"] == "DOWN":
            result.down = elapsed
        if result.all_moved is None and all(c.server == survivor for c in clients):
            result.all_moved = elapsed
        moved, down = result.all_moved, result.down
        if moved is not None and down is not None and elapsed - down >= SETTLE:
            break
        pace(tick)
    return result


@dataclass
class Recovery:
    listening_at: float  # monotonic time the restarted server listened again
    up: float | None  # the stats page shows it UP
    spread: float | None  # a new client landed on it
    newcomers: list[Client]


def recover(setup: Setup, clients: Sequence[Client], restored: str, *, cookies: bool) -> Recovery:
    """Restart ``restored``; the old clients go on, and each tick one new client arrives."""
    setup.restart(restored)
    result = Recovery(time.monotonic(), None, None, [])
    for index in range(MAX_TICKS):
        tick = time.monotonic()
        if tick - result.listening_at > PHASE_LIMIT:
            break
        for client in clients:
            client.request()
        # A new address each time (127.0.0.10 and up): no table entry, no cookie yet.
        newcomer = Client(setup.port, f"127.0.0.{10 + index}", cookies=cookies)
        newcomer.request()
        result.newcomers.append(newcomer)
        elapsed = time.monotonic() - result.listening_at
        if result.up is None and setup.status(restored) == "UP":
            result.up = elapsed
        if newcomer.server == restored:
            result.spread = elapsed
            result.up = elapsed if result.up is None else result.up
            break
        pace(tick)
    return result


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def report(title: str, failover: Failover, recovery: Recovery | None = None) -> None:
    line = (
        f"\n[{title}] after the kill: first failed check {seconds(failover.first_failed_check)}, "
        f"all clients on the survivor {seconds(failover.all_moved)}, "
        f"server DOWN {seconds(failover.down)}"
    )
    if recovery is not None:
        line += (
            f"; after the restart: UP {seconds(recovery.up)}, "
            f"a new client on it {seconds(recovery.spread)}"
        )
    print(line)


@contextmanager
def requesting(clients: Sequence[Client], interval: float = PACE) -> Iterator[None]:
    """Each client requests every ``interval`` in its own thread until the block ends."""
    done = threading.Event()

    def loop(client: Client) -> None:
        for _ in range(int(MAX_REQUESTS * PACE / interval)):
            tick = time.monotonic()
            if done.is_set():
                return
            client.request()
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))

    threads = [threading.Thread(target=loop, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT + 1.0)
        assert not any(thread.is_alive() for thread in threads)


def failures(clients: Sequence[Client]) -> list[str]:
    return [failure for client in clients for failure in client.failures]


def one_each(a: Client, b: Client) -> tuple[str, str]:
    """One request from each of two new clients: they are answered, by different servers;
    the server of ``a``, then of ``b``."""
    a.request()
    b.request()
    assert a.server is not None, failures([a, b])
    assert b.server is not None, failures([a, b])
    assert a.server != b.server
    return a.server, b.server


def stick(a: Client, b: Client, a_server: str, b_server: str) -> None:
    """Three more requests each: every answer so far came from each client's own server."""
    for _ in range(3):
        a.request()
        b.request()
    assert a.servers_since(0) == {a_server}
    assert b.servers_since(0) == {b_server}


def assert_within_detection_limit(failover: Failover) -> None:
    """Every client on the survivor, and the killed server DOWN, within DETECTION_LIMIT."""
    assert failover.all_moved is not None
    assert failover.all_moved <= DETECTION_LIMIT
    assert failover.down is not None
    assert failover.down <= DETECTION_LIMIT


def test_source_persistence_both_clients_on_the_survivor_then_new_clients_spread(
    tmp_path: pathlib.Path,
) -> None:
    # mask 32: with the default /24, 127.0.0.2 and 127.0.0.3 are one client (one network) and
    # must stick to one server; /32 makes each address its own client, like two hosts.
    with running(
        tmp_path,
        ["web1", "web2"],
        balance="roundrobin",
        persistence="{source: {timeout: 5m, mask: 32}}",
        health_check=HEALTH_DEFAULTS,
    ) as setup:
        a = Client(setup.port, "127.0.0.2", keep_alive=True)
        b = Client(setup.port, "127.0.0.3")
        # Round robin over two equal servers: the first two new clients, in order, get one each.
        killed, survivor = one_each(a, b)
        stick(a, b, killed, survivor)

        failover = fail_over(setup, [a, b], killed, survivor)
        # A refused connect moves the request to the next server before anything was sent, so
        # not even the request in flight at the first failed check may fail.
        assert failures([a, b]) == []
        assert_within_detection_limit(failover)
        assert b.servers_since(0) == {survivor}  # the survivor's client never moved
        late = Client(setup.port, "127.0.0.5")  # a new client while the server is down
        late.request()
        assert late.server == survivor, late.failures
        assert f"server www/{killed} is DOWN: connection refused" in setup.proxy.stderr()

        # HAProxy (stick on src + option redispatch) rewrites the stick entry of a redispatched
        # client to the server that answered (process_store_rules stores the new server id), so
        # that client stays on the survivor until the entry expires; lbproxy does the same. The
        # spread shows with NEW client addresses, which have no entry yet.
        recovery = recover(setup, [a, b], killed, cookies=False)
        report("source persistence", failover, recovery)
        assert failures([a, b, *recovery.newcomers]) == []
        assert recovery.spread is not None
        assert recovery.spread <= DETECTION_LIMIT
        assert setup.status(killed) == "UP"
        assert a.servers_since(recovery.listening_at) == {survivor}
        assert b.servers_since(recovery.listening_at) == {survivor}
        assert not a.set_cookies
        assert not b.set_cookies
        assert f"server www/{killed} is UP" in setup.proxy.stderr()
        a.close()


def test_cookie_persistence_redispatch_to_the_survivor_with_a_new_cookie(
    tmp_path: pathlib.Path,
) -> None:
    with running(
        tmp_path,
        ["web1", "web2"],
        persistence=f"{{cookie: {COOKIE}}}",
        health_check=HEALTH_DEFAULTS,
    ) as setup:
        a = Client(setup.port, "127.0.0.2", cookies=True, keep_alive=True)
        b = Client(setup.port, "127.0.0.3", cookies=True)
        killed, survivor = one_each(a, b)
        for client in (a, b):
            assert client.last is not None
            assert client.last.set_cookies == (f"{COOKIE}={client.server}; path=/",)
            assert client.last.cache_control == "private"  # HAProxy's nocache
            assert client.cookie == client.server
        sticky_from = time.monotonic()
        stick(a, b, killed, survivor)
        assert a.cookies_since(sticky_from) == []
        assert b.cookies_since(sticky_from) == []

        failover = fail_over(setup, [a, b], killed, survivor)
        assert failures([a, b]) == []
        assert_within_detection_limit(failover)
        # Redispatched once with a new cookie, which then holds: no cookie on later answers.
        assert a.cookies_since(failover.killed_at) == [f"{COOKIE}={survivor}; path=/"]
        assert a.cookie == survivor
        assert b.cookies_since(failover.killed_at) == []
        assert b.servers_since(0) == {survivor}

        recovery = recover(setup, [a, b], killed, cookies=True)
        report("cookie persistence", failover, recovery)
        assert failures([a, b, *recovery.newcomers]) == []
        assert recovery.spread is not None
        assert recovery.spread <= DETECTION_LIMIT
        # The redispatched client keeps its cookie, so it stays; a new client gets the other.
        assert a.servers_since(recovery.listening_at) == {survivor}
        assert a.cookies_since(recovery.listening_at) == []
        assert b.servers_since(recovery.listening_at) == {survivor}
        newcomer = recovery.newcomers[-1]
        assert newcomer.cookie == killed
        assert [value for _, value in newcomer.set_cookies] == [f"{COOKIE}={killed}; path=/"]
        a.close()


def test_fallback_takes_over_clears_the_cookie_and_hands_back(tmp_path: pathlib.Path) -> None:
    with running(
        tmp_path,
        ["web1", "web2"],
        fallback="sorry",
        persistence=f"{{cookie: {COOKIE}}}",
        health_check=HEALTH_DEFAULTS,
    ) as setup:
        a = Client(setup.port, "127.0.0.2", cookies=True, keep_alive=True)
        b = Client(setup.port, "127.0.0.3", cookies=True)
        a.request()
        b.request()
        assert {a.cookie, b.cookie} == {"web1", "web2"}, failures([a, b])

        killed_at = time.monotonic()
        setup.kill("web1")
        setup.kill("web2")
        on_fallback: float | None = None
        all_down: float | None = None
        for _ in range(MAX_TICKS):
            tick = time.monotonic()
            if tick - killed_at > PHASE_LIMIT:
                break
            a.request()
            b.request()
            rows = stats(setup.stats_port)
            elapsed = time.monotonic() - killed_at
            if on_fallback is None and a.server == b.server == "sorry":
                on_fallback = elapsed
            statuses = {rows["www/web1"]["status"], rows["www/web2"]["status"]}
            if all_down is None and statuses == {"DOWN"}:
                all_down = elapsed
            if on_fallback is not None and all_down is not None and elapsed - all_down >= SETTLE:
                break
            pace(tick)
        print(
            f"\n[fallback] after killing both: answered by the fallback {seconds(on_fallback)}, "
            f"both DOWN {seconds(all_down)}"
        )
        assert failures([a, b]) == []
        assert on_fallback is not None
        assert on_fallback <= DETECTION_LIMIT
        assert all_down is not None
        assert all_down <= DETECTION_LIMIT
        for client in (a, b):
            assert client.servers_since(killed_at) == {"sorry"}
            # Every answer from the fallback expires the cookie, HAProxy's bytes exactly.
            cleared = client.cookies_since(killed_at)
            assert cleared
            assert set(cleared) == {CLEARED}
            assert client.cookie is None
        assert "0 active left" in setup.proxy.stderr()

        setup.restart("web1")
        listening_at = time.monotonic()
        back: float | None = None
        for _ in range(MAX_TICKS):
            tick = time.monotonic()
            if tick - listening_at > PHASE_LIMIT:
                break
            a.request()
            if a.server == "web1":
                back = time.monotonic() - listening_at
                break
            pace(tick)
        print(f"[fallback] after restarting web1: requests back on it {seconds(back)}")
        assert failures([a]) == []
        assert back is not None
        assert back <= DETECTION_LIMIT
        assert a.last is not None
        assert a.last.set_cookies == (f"{COOKIE}=web1; path=/",)
        assert a.cookie == "web1"
        rows = stats(setup.stats_port)
        assert rows["www/web1"]["status"] == "UP"
        assert rows["www/web2"]["status"] == "DOWN"
        a.close()


def test_drain_weight_zero_and_maint_from_the_config(tmp_path: pathlib.Path) -> None:
    states = {"web2": ", state: drain", "web3": ", weight: 0", "web4": ", state: maint"}
    labels = ["web1", "web2", "web3", "web4"]
    with running(
        tmp_path,
        labels,
        extra=states,
        persistence=f"{{cookie: {COOKIE}}}",
        health_check=HEALTH_DEFAULTS,
    ) as setup:
        rows = stats(setup.stats_port)
        shown = {label: rows[f"www/{label}"]["status"] for label in labels}
        assert shown == {"web1": "UP", "web2": "DRAIN", "web3": "DRAIN", "web4": "MAINT"}
        newcomers = [Client(setup.port, f"127.0.0.{10 + i}", cookies=True) for i in range(6)]
        for newcomer in newcomers:
            newcomer.request()
        assert [n.server for n in newcomers] == ["web1"] * 6, failures(newcomers)
        # A client whose cookie names a draining server is still served there, cookie kept.
        holders = [
            Client(setup.port, "127.0.0.2", cookies=True, cookie=s) for s in ("web2", "web3")
        ]
        for holder in holders:
            for _ in range(3):
                holder.request()
            assert holder.servers_since(0) == {holder.cookie}, holder.failures
            assert holder.set_cookies == []
        # Maintenance: not even a cookie holder; redispatched once, then its new cookie holds.
        maint = Client(setup.port, "127.0.0.3", cookies=True, cookie="web4")
        for _ in range(3):
            maint.request()
        assert maint.servers_since(0) == {"web1"}, maint.failures
        assert [value for _, value in maint.set_cookies] == [f"{COOKIE}=web1; path=/"]
        assert failures([*newcomers, *holders, maint]) == []
        rows = stats(setup.stats_port)
        assert rows["www/web4"]["total"] == 0
        assert rows["www/web2"]["total"] == 3
        assert rows["www/web3"]["total"] == 3
        # Draining servers are still checked; one in maintenance is not even probed (HAProxy
        # stops checks in MAINT too). Checks start spread over one interval.
        started = time.monotonic()
        while any(rows[f"www/{label}"]["check_status"] != "L4OK" for label in labels[:3]):
            assert time.monotonic() - started < PHASE_LIMIT, rows
            time.sleep(PACE)
            rows = stats(setup.stats_port)
        assert rows["www/web4"]["check_status"] == ""


# One state-change line of the health checker on stderr: who, which way, the cause, the code.
STATE_LINE = re.compile(
    r"lbproxy\.health: (?:fallback )?server (\S+) is (UP|DOWN): (.*) \((L4\w+|L7\w+|PASSIVE)\), "
    r"\d+ active (?:left|up)$"
)


def state_changes(stderr: str) -> list[tuple[str, ...]]:
    matches = (STATE_LINE.search(line) for line in stderr.splitlines())
    return [tuple(str(group) for group in m.groups()) for m in matches if m is not None]


def test_http_checks_log_every_state_change_with_its_cause(tmp_path: pathlib.Path) -> None:
    port, stats_port, web1, web2 = free_port(), free_port(), free_port(), free_port()
    binds = {name: free_port() for name in ("strict", "content", "wrongbody")}
    # Never accepts: the kernel completes the connects from its backlog, nobody answers, so an
    # HTTP check connects and then runs into its timeout (a hung application).
    with socket.create_server(("127.0.0.1", 0), backlog=64) as stuck:
        stuck_port = stuck.getsockname()[1]
        config = tmp_path / "lb.yaml"
        config.write_text(
            f"global: {{grace: 1s, stats: {{bind: 127.0.0.1:{stats_port}}}}}\n"
            "virtual_servers:\n"
            "  - label: www\n"
            f"    bind: 127.0.0.1:{port}\n"
            "    health_check: {interval: 2s, rise: 2, fall: 3, timeout: 1s,"
            " http: {path: /health, expect: 200}}\n"
            "    real_servers:\n"
            f"      - {{label: web1, address: 127.0.0.1:{web1}}}\n"
            f"      - {{label: stuck, address: 127.0.0.1:{stuck_port}}}\n"
            "  - label: strict\n"
            f"    bind: 127.0.0.1:{binds['strict']}\n"
            "    health_check: {http: {path: /health, expect: 204}}\n"
            f"    real_servers: [{{label: web2, address: 127.0.0.1:{web2}}}]\n"
            "  - label: content\n"
            f"    bind: 127.0.0.1:{binds['content']}\n"
            "    health_check: {http: {path: /health, body: OK}}\n"
            f"    real_servers: [{{label: web2, address: 127.0.0.1:{web2}}}]\n"
            "  - label: wrongbody\n"
            f"    bind: 127.0.0.1:{binds['wrongbody']}\n"
            "    health_check: {http: {path: /health, body: NOPE}}\n"
            f"    real_servers: [{{label: web2, address: 127.0.0.1:{web2}}}]\n"
        )
        with ExitStack() as stack:
            first = stack.enter_context(backend("web1", web1))
            stack.enter_context(backend("web2", web2))
            proxy = stack.enter_context(lbproxy(config, ("127.0.0.1", port)))
            started = time.monotonic()
            # web1 passes its HTTP check first, so its DOWN below is a real transition.
            while stats(stats_port)["www/web1"]["check_status"] != "L7OK":
                assert time.monotonic() - started < PHASE_LIMIT, proxy.stderr()
                time.sleep(PACE)

            killed_at = time.monotonic()
            stop(first)
            expected_down = {"www/web1", "www/stuck", "strict/web2", "wrongbody/web2"}
            down_after: dict[str, float] = {}
            while set(down_after) != expected_down and time.monotonic() - killed_at < PHASE_LIMIT:
                rows = stats(stats_port)
                for key in expected_down - set(down_after):
                    if rows[key]["status"] == "DOWN":
                        down_after[key] = time.monotonic() - killed_at
                time.sleep(PACE)
            rows = stats(stats_port)
            assert rows["content/web2"]["status"] == "UP"
            assert rows["content/web2"]["check_status"] == "L7OK"
            assert set(down_after) == expected_down, proxy.stderr()
            assert down_after["www/web1"] <= DETECTION_LIMIT

            stack.enter_context(backend("web1", web1))
            listening_at = time.monotonic()
            up: float | None = None
            while up is None and time.monotonic() - listening_at < PHASE_LIMIT:
                if stats(stats_port)["www/web1"]["status"] == "UP":
                    up = time.monotonic() - listening_at
                time.sleep(PACE)
            print(
                f"\n[http check] web1 DOWN {seconds(down_after['www/web1'])} after the kill, "
                f"UP {seconds(up)} after the restart; stuck DOWN "
                f"{seconds(down_after['www/stuck'] + killed_at - started)} after start-up"
            )
            assert up is not None
            assert up <= DETECTION_LIMIT
            # Exactly one line per transition, each naming its cause.
            assert sorted(state_changes(proxy.stderr())) == sorted(
                [
                    ("www/web1", "DOWN", "connection refused", "L4CON"),
                    ("www/stuck", "DOWN", "timeout", "L7TOUT"),
                    ("strict/web2", "DOWN", "status 200 (expected 204)", "L7STS"),
                    ("wrongbody/web2", "DOWN", "body does not contain 'NOPE'", "L7RSP"),
                    ("www/web1", "UP", "status 200", "L7OK"),
                ]
            )


# The hung-server test shortens the server timeout so a request stuck on the frozen server ends
# in seconds; the shipped default is 60 s (HAProxy's usual `timeout server`).
HUNG_SERVER_TIMEOUT = 2.0


def test_hung_server_leaves_the_rotation_by_its_http_check(tmp_path: pathlib.Path) -> None:
    """SIGSTOP: the kernel still accepts connects but nobody answers, as with a hung process.

    A TCP check cannot see this (the connect succeeds); an HTTP check times out. Requests
    already sent to the frozen server cannot be moved (they may have been acted on) and end
    with 504 after the server timeout, as in HAProxy; once the server is DOWN no request may
    reach it and none may fail.
    """
    with running(
        tmp_path,
        ["web1", "web2"],
        persistence="{source: {timeout: 5m, mask: 32}}",
        health_check="{interval: 2s, rise: 2, fall: 3, timeout: 1s, http: {path: /health}}",
        timeouts=f"{{server: {HUNG_SERVER_TIMEOUT}s}}",
    ) as setup:
        a = Client(setup.port, "127.0.0.2")
        b = Client(setup.port, "127.0.0.3")
        frozen, survivor = one_each(a, b)
        frozen_at = time.monotonic()
        os.kill(setup.procs[frozen].pid, signal.SIGSTOP)
        try:
            # Each client in its own thread: a request stuck on the frozen server must not hold
            # up the other client or the watch on the stats page.
            with requesting([a, b]):
                down: float | None = None
                while time.monotonic() - frozen_at < PHASE_LIMIT:
                    if down is None and setup.status(frozen) == "DOWN":
                        down = time.monotonic() - frozen_at
                    if down is not None and time.monotonic() - frozen_at - down >= SETTLE:
                        break
                    time.sleep(PACE)
                # Requests sent after DOWN must be answered: give the last stuck one its time.
                time.sleep(HUNG_SERVER_TIMEOUT)
        finally:
            os.kill(setup.procs[frozen].pid, signal.SIGCONT)
        sent = ", ".join(f"{when - frozen_at:.2f}" for when in a.failed_at)
        print(
            f"\n[hung server] DOWN {seconds(down)} after SIGSTOP; {len(a.failures)} request(s) of "
            f"its client failed, sent at [{sent}] s after it"
        )
        assert down is not None
        assert down <= DETECTION_LIMIT
        assert b.failures == []
        assert b.servers_since(0) == {survivor}
        assert a.server == survivor
        # Only requests sent before the server was marked DOWN may fail, and only with 504.
        assert all(" 504 " in failure for failure in a.failures), a.failures
        assert all(when - frozen_at < down for when in a.failed_at), a.failed_at
        stats_row = stats(setup.stats_port)[f"www/{frozen}"]
        assert stats_row["check_status"] == "L7TOUT"

        thawed_at = time.monotonic()
        up: float | None = None
        while up is None and time.monotonic() - thawed_at < PHASE_LIMIT:
            if setup.status(frozen) == "UP":
                up = time.monotonic() - thawed_at
            time.sleep(PACE)
        print(f"[hung server] UP {seconds(up)} after SIGCONT")
        assert up is not None
        assert up <= DETECTION_LIMIT


# Longest request head the closing server reads before giving up on a client (the proxy's own
# heads are far smaller); bounds its memory like any server.
CLOSER_HEAD_LIMIT = 64 * 1024


class ClosingServer:
    """A real server that reads each request whole and closes without answering a byte.

    What a crashed worker behind a live listener looks like. It records what it received, so
    the test sees whether the proxy sent a request twice.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(PACE)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[tuple[str, str, int]] = []  # (method, path, body bytes)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ClosingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=REQUEST_TIMEOUT)
        self.sock.close()

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(REQUEST_TIMEOUT)
                try:
                    self._read_one(conn)
                except OSError:
                    pass  # health checks connect and leave; nothing to record

    def _read_one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < CLOSER_HEAD_LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            body += chunk
        self.received.append((method, path, len(body)))


def send(port: int, method: str, path: str, cookie: str, body: bytes | None) -> tuple[int, str]:
    """(status, body) of one request with our cookie set to ``cookie``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers={"Cookie": f"{COOKIE}={cookie}"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_resend_only_what_is_safe(tmp_path: pathlib.Path) -> None:
    """A server that closes before answering: idempotent requests go elsewhere, POST never.

    ``closer`` and ``dead`` drain (cookie holders only), so after one of them fails the only
    server a request can move to is web2, and the cookie chooses where each request starts.
    """
    with ClosingServer() as closer:
        dead = free_port()  # nothing listens: connects are refused
        port, stats_port, web2 = free_port(), free_port(), free_port()
        config = tmp_path / "lb.yaml"
        write_config(
            config,
            port=port,
            stats_port=stats_port,
            servers=[
                f"{{label: closer, address: 127.0.0.1:{closer.port}, state: drain}}",
                f"{{label: dead, address: 127.0.0.1:{dead}, state: drain}}",
                f"{{label: web2, address: 127.0.0.1:{web2}}}",
            ],
            persistence=f"{{cookie: {COOKIE}}}",
            health_check=HEALTH_DEFAULTS,
        )
        with backend("web2", web2), lbproxy(config, ("127.0.0.1", port)):
            # Closed before any response byte: GET and DELETE are sent again, to web2.
            assert send(port, "GET", "/g", "closer", None) == (200, "web2 GET /g 0\n")
            assert send(port, "DELETE", "/d", "closer", None) == (200, "web2 DELETE /d 0\n")
            # A POST that reached a server is never sent twice: 502.
            status, _ = send(port, "POST", "/p", "closer", b"hello")
            assert status == 502
            # PUT is idempotent, but its body was consumed on the way to the first server.
            status, _ = send(port, "PUT", "/u", "closer", b"hello")
            assert status == 502
            # A refused connect sent nothing: even a POST moves on, its body intact.
            assert send(port, "POST", "/r", "dead", b"hello") == (200, "web2 POST /r 5\n")
            # web2 got exactly the three requests that it answered.
            assert stats(stats_port)["www/web2"]["total"] == 3
        assert closer.received == [
            ("GET", "/g", 0),
            ("DELETE", "/d", 0),
            ("POST", "/p", 5),
            ("PUT", "/u", 5),
        ]


# The pulled-cable test's proxy timeouts. Connect: a loopback or LAN connect takes well under
# a millisecond, and 1 s leaves room for one lost SYN's retransmission (Linux resends after
# 1 s); the shipped 5 s (HAProxy's usual `timeout connect`) would hold a client that much
# longer. Server: short, so the request on the wire when the cable goes ends in seconds.
CABLE_CONNECT_TIMEOUT = "1s"
CABLE_SERVER_TIMEOUT = "2s"
# Connections that fill the unplugged server's accept queue (listen backlog 1 takes two);
# each waits this long before the next is tried, so a refused one ends the filling quickly.
CABLE_FILL_MAX = 8
CABLE_FILL_TIMEOUT = 0.2


class CableServer:
    """A real server (in this process) whose cable can be pulled.

    Once pulled, new connects time out (nobody accepts, the full accept queue makes the kernel
    drop SYNs, as on a dead link) and requests on open connections are never answered.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.pulled = threading.Event()
        self.released = threading.Event()  # end of the test: silent handlers may go
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=False)
        self.http.daemon_threads = True
        self.http.request_queue_size = 1  # the listen backlog: few fillers needed
        self.http.server_bind()
        self.http.server_activate()
        self.port = int(self.http.server_address[1])
        self.fillers: list[socket.socket] = []
        self._thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": PACE}, daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if server.pulled.is_set():
                    server.released.wait(PHASE_LIMIT + REQUEST_TIMEOUT)
                    self.close_connection = True
                    return
                body = f"{server.label} GET {self.path} 0\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Served-By", server.label)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> CableServer:
        self._thread.start()
        return self

    def pull(self) -> None:
        self.pulled.set()
        self.http.shutdown()  # stops accepting; the listening socket stays open
        for _ in range(CABLE_FILL_MAX):
            filler = socket.socket()
            filler.settimeout(CABLE_FILL_TIMEOUT)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                return  # the queue is full: from now on SYNs are dropped
            self.fillers.append(filler)
        raise AssertionError("the accept queue never filled up")

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        if not self.pulled.is_set():
            self.http.shutdown()
        for filler in self.fillers:
            filler.close()
        self.http.server_close()
        self._thread.join(timeout=REQUEST_TIMEOUT)


def test_pulled_cable_the_tcp_check_takes_the_server_out(tmp_path: pathlib.Path) -> None:
    """The seed's own wording: pull the cable of one server, both clients on the survivor.

    Unlike a killed process, nothing is refused: connects time out and the request on the wire
    is never answered, so it fails (504 after the server timeout, as in HAProxy); every later
    request is answered, at worst after one connect timeout.
    """
    with CableServer("web1") as web1, ExitStack() as stack:
        port, stats_port, web2 = free_port(), free_port(), free_port()
        config = tmp_path / "lb.yaml"
        write_config(
            config,
            port=port,
            stats_port=stats_port,
            servers=[
                f"{{label: web1, address: 127.0.0.1:{web1.port}}}",
                f"{{label: web2, address: 127.0.0.1:{web2}}}",
            ],
            persistence="{source: {timeout: 5m, mask: 32}}",
            health_check=HEALTH_DEFAULTS,
            timeouts=f"{{connect: {CABLE_CONNECT_TIMEOUT}, server: {CABLE_SERVER_TIMEOUT}}}",
        )
        stack.enter_context(backend("web2", web2))
        proxy = stack.enter_context(lbproxy(config, ("127.0.0.1", port)))
        a = Client(port, "127.0.0.2", keep_alive=True)
        b = Client(port, "127.0.0.3")
        for _ in range(3):
            a.request()
            b.request()
        assert a.servers_since(0) == {"web1"}, failures([a, b])
        assert b.servers_since(0) == {"web2"}, failures([a, b])

        pulled_at = time.monotonic()
        web1.pull()
        first_failed_check: float | None = None
        down: float | None = None
        with requesting([a, b]):
            while time.monotonic() - pulled_at < PHASE_LIMIT:
                row = stats(stats_port)["www/web1"]
                elapsed = time.monotonic() - pulled_at
                if first_failed_check is None and row["check_status"] == "L4TOUT":
                    first_failed_check = elapsed
                if down is None and row["status"] == "DOWN":
                    down = elapsed
                if down is not None and a.server == "web2" and elapsed - down >= SETTLE:
                    break
                time.sleep(PACE)
        a.close()
        after = [
            (when - pulled_at, server, took)
            for (when, server), took in zip(a.seen, a.took, strict=True)
            if when >= pulled_at
        ]
        answered = after[0][0] + after[0][2] if after else None
        print(
            f"\n[pulled cable] first failed check {seconds(first_failed_check)}, DOWN "
            f"{seconds(down)}; its client's failed request(s) sent at "
            f"{[round(when - pulled_at, 2) for when in a.failed_at]} s; its first answer since "
            f"(from {after[0][1] if after else None}) came {seconds(answered)} after the pull, "
            f"slowest {seconds(max(took for _, _, took in after) if after else None)}"
        )
        assert down is not None
        assert down <= DETECTION_LIMIT
        assert first_failed_check is not None
        assert b.failures == []
        assert b.servers_since(0) == {"web2"}
        # Only the request on the wire when the cable went may fail, and only as the proxy's 504.
        assert len(a.failures) <= 1, a.failures
        assert all(" 504 " in f for f in a.failures), a.failures
        assert all(when - pulled_at < first_failed_check for when in a.failed_at)
        # Every later request is answered by the survivor, the first one within the 6 s.
        assert after
        assert {server for _, server, _ in after} == {"web2"}
        assert answered is not None
        assert answered <= DETECTION_LIMIT
        assert "server www/web1 is DOWN: timeout (L4TOUT)" in proxy.stderr()
