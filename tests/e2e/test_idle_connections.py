"""Ten thousand idle keep-alive client connections held by one lbproxy process, each after a
request, with the memory they cost; a new client is still served while they wait."""

from __future__ import annotations

import pathlib
import resource
import socket
from collections.abc import Iterator

import pytest

from tests.e2e.process import backend, free_port, lbproxy

IDLE_CLIENTS = 10_000
MAX_KIB_PER_IDLE = 20  # the bound: an idle keep-alive connection costs at most 20 KiB
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BATCH = 20  # clients at once: a few server connections, reused from the pool


def one_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for 10,000 sockets here and in the lbproxy process (it inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE_CLIENTS + 1000:
        pytest.skip(f"the hard file limit ({hard}) is below {IDLE_CLIENTS + 1000}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ten_thousand_idle_keep_alive_connections(tmp_path: pathlib.Path, many_files: None) -> None:
    port, web = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(
        "global: {access_log: false}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    timeouts: {client_idle: 1h}\n"
        "    health_check: {enabled: false}\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{web}}}]\n"
    )
    clients: list[socket.socket] = []
    with backend("web1", web), lbproxy(config, ("127.0.0.1", port)) as proxy:
        try:
            warm = socket.create_connection(("127.0.0.1", port), timeout=10)
            warm.sendall(REQUEST)
            one_response(warm)
            warm.close()
            before = proxy.rss_kib()
            for _ in range(IDLE_CLIENTS // BATCH):
                # A batch of clients send their requests at once, then each reads its answer:
                # the proxy serves them side by side.
                batch = [
                    socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(BATCH)
                ]
                clients.extend(batch)
                for sock in batch:
                    sock.sendall(REQUEST)
                for sock in batch:
                    assert one_response(sock).startswith(b"HTTP/1.1 200 ")
            after = proxy.rss_kib()
            per_connection = (after - before) / IDLE_CLIENTS
            print(f"RSS {before} -> {after} KiB: {per_connection:.1f} KiB per idle connection")
            assert per_connection <= MAX_KIB_PER_IDLE
            # All of them are still open and usable, and a new client is served.
            for sock in clients[:: IDLE_CLIENTS // 20]:
                sock.sendall(REQUEST)
                assert one_response(sock).startswith(b"HTTP/1.1 200 ")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
                fresh.sendall(REQUEST)
                assert one_response(fresh).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in clients:
                sock.close()
        assert proxy.terminate() == 0
