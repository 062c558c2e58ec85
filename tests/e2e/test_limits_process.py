"""The ``lbproxy`` process with a YAML file using several fallbacks, a server maxconn with its
queue timeout and a connection limit; the client is http.client, the servers are a real
process and a holding HTTP server in a thread."""

from __future__ import annotations

import csv
import http.client
import pathlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.process import backend, free_port, lbproxy

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT = 10.0
POLL = 0.02
# Every wait for the proxy's state gives up after this many polls (10 s).
MAX_POLLS = 500


class Holding:
    """A real server that holds each request until released, counting how many it holds."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = self.total = 0
        holding = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with holding.lock:
                    holding.now += 1
                    holding.total += 1
                    holding.most = max(holding.most, holding.now)
                holding.release.wait(REQUEST_TIMEOUT)
                with holding.lock:
                    holding.now -= 1
                body = b"held\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.port = int(self.http.server_address[1])

    @contextmanager
    def running(self) -> Iterator[Holding]:
        thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.http.shutdown()
            self.http.server_close()


def get(port: int, path: str, results: dict[str, int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        results[path] = resp.status
    finally:
        conn.close()


def csv_rows(stats: int) -> dict[tuple[str, str], dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", stats, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/;csv")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    lines = text.splitlines()
    header = lines[0].removeprefix("# ").split(",")
    return {(v[0], v[1]): dict(zip(header, v, strict=True)) for v in csv.reader(lines[1:])}


def wait_until(condition: object) -> None:
    assert callable(condition)
    for _ in range(MAX_POLLS):
        if condition():
            return
        time.sleep(POLL)
    raise AssertionError("the proxy never reached the expected state")


def test_queue_timeout_fallback_order_and_stats_through_the_process(
    tmp_path: pathlib.Path,
) -> None:
    port, sorry_bind, sorry_port, stats = free_port(), free_port(), free_port(), free_port()
    dead = free_port()
    holding = Holding()
    config = tmp_path / "lbproxy.yaml"
    config.write_text(
        "global:\n"
        f"  stats: {{bind: 127.0.0.1:{stats}}}\n"
        "virtual_servers:\n"
        "  - label: shop\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    health_check: {enabled: false}\n"
        "    timeouts: {queue: 3s}\n"
        "    limits: {max_connections: 50}\n"
        f"    real_servers: [{{label: app, address: 127.0.0.1:{holding.port}, maxconn: 1}}]\n"
        "  - label: sorry\n"
        f"    bind: 127.0.0.1:{sorry_bind}\n"
        f"    real_servers: [{{label: gone, address: 127.0.0.1:{dead}}}]\n"
        "    health_check: {interval: 200ms, fall: 1, rise: 1}\n"
        "    fallback:\n"
        f"      - {{address: 127.0.0.1:{dead}, health_check: {{interval: 200ms, fall: 1}}}}\n"
        f"      - {{address: 127.0.0.1:{sorry_port}, label: sorry}}\n"
    )
    with (
        holding.running(),
        backend("sorry-page", sorry_port),
        lbproxy(config, wait_for=("127.0.0.1", stats)) as proxy,
    ):
        results: dict[str, int] = {}
        held = threading.Thread(target=get, args=(port, "/held", results))
        held.start()
        wait_until(lambda: holding.now == 1)
        late = threading.Thread(target=get, args=(port, "/late", results))
        late.start()
        # While it waits, the stats show it queued for the pool.
        wait_until(lambda: csv_rows(stats)[("shop", "BACKEND")]["qcur"] == "1")
        assert "/late" not in results
        late.join(REQUEST_TIMEOUT)
        assert results["/late"] == 503
        holding.release.set()
        held.join(REQUEST_TIMEOUT)
        assert results["/held"] == 200
        assert holding.total == 1
        assert holding.most == 1
        rows = csv_rows(stats)
        assert rows[("shop", "app")]["slim"] == "1"
        assert rows[("shop", "BACKEND")]["qmax"] == "1"
        assert rows[("shop", "FRONTEND")]["slim"] == "50"

        # The first fallback is down by its own check; the second answers.
        wait_until(lambda: csv_rows(stats)[("sorry", "fallback")]["status"] == "DOWN")
        answers: dict[str, int] = {}
        get(sorry_bind, "/", answers)
        assert answers["/"] == 200
        rows = csv_rows(stats)
        assert rows[("sorry", "sorry")]["stot"] == "1"
        assert rows[("sorry", "fallback")]["stot"] == "0"

        assert proxy.terminate() == 0
        log = proxy.stdout()
    late_line = next(line for line in log.splitlines() if "/late" in line)
    assert " 503 " in late_line, late_line
    assert " sQ" in late_line, late_line
