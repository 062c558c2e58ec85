"""1 GiB up and 1 GiB down through the lbproxy process: bodies stream, memory stays flat."""

from __future__ import annotations

import pathlib
import socket
import threading
import time

import pytest

from tests.e2e.process import free_port, lbproxy

pytestmark = pytest.mark.e2e

GIB = 1 << 30
CHUNK = b"x" * (1 << 20)
RSS_GROWTH_LIMIT_KIB = 64 * 1024  # the bound: resident memory grows by < 64 MiB


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def serve_one_big_exchange(listener: socket.socket) -> None:
    """Sink a 1 GiB upload, then answer the next request with a 1 GiB download."""
    conn, _ = listener.accept()
    with conn:
        for _ in range(2):
            head, rest = read_head(conn)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            remaining = length - len(rest)
            while remaining > 0:
                got = conn.recv(1 << 20)
                if not got:
                    return
                remaining -= len(got)
            if length:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
                for _ in range(GIB // len(CHUNK)):
                    conn.sendall(CHUNK)


def test_one_gib_each_way_with_bounded_memory(tmp_path: pathlib.Path) -> None:
    port = free_port()
    listener = socket.create_server(("127.0.0.1", 0))
    backend_port = listener.getsockname()[1]
    config = tmp_path / "lb.yaml"
    config.write_text(
        "global: {access_log: false}\n"
        "virtual_servers:\n"
        "  - label: big\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    health_check: {enabled: false}\n"
        f"    real_servers: [{{label: sink, address: 127.0.0.1:{backend_port}}}]\n"
    )
    server = threading.Thread(target=serve_one_big_exchange, args=(listener,), daemon=True)
    server.start()
    peak = [0]
    with lbproxy(config, ("127.0.0.1", port)) as proxy:
        baseline = proxy.rss_kib()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], proxy.rss_kib())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
            client.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB)
            for _ in range(GIB // len(CHUNK)):
                client.sendall(CHUNK)
            head, rest = read_head(client)
            assert head.startswith(b"HTTP/1.1 200")
            while len(rest) < 3:
                rest += client.recv(16)
            assert rest == b"yes"
            up_seconds = time.monotonic() - started
            client.sendall(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
            head, rest = read_head(client)
            assert head.startswith(b"HTTP/1.1 200")
            received = len(rest)
            while received < GIB:
                got = client.recv(1 << 20)
                assert got, f"connection closed after {received} bytes"
                received += len(got)
            assert received == GIB
        stop.set()
        sampler.join(timeout=5)
        total = time.monotonic() - started
        growth = peak[0] - baseline
        print(
            f"\n1 GiB up in {up_seconds:.1f}s, 1 GiB down in {total - up_seconds:.1f}s; "
            f"RSS {baseline} KiB -> peak {peak[0]} KiB (+{growth} KiB)"
        )
        assert growth < RSS_GROWTH_LIMIT_KIB
