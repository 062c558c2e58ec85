"""How evenly the kernel spreads connections over worker processes: one listening socket
inherited by every worker (lbproxy's choice) against one SO_REUSEPORT socket per worker.

``python -m benchmarks.workers_spread [WORKERS] [CONNECTIONS] [CLIENT_THREADS]``: each worker is a
process that waits for readiness (epoll through ``select.poll``, as trio does) and accepts in
bursts like ``server.accept_loop``, answers one line and closes; the client opens CONNECTIONS
connections from CLIENT_THREADS threads. Prints the accepts per worker and the spread
(max/min). Bounded: every connection gets a 5 s timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

BURST = 64  # server.MAX_ACCEPTS_PER_WAKEUP


def _serve(sock: socket.socket, counts: multiprocessing.Queue[tuple[int, int]], stop: Any) -> None:
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    accepted = 0
    while not stop.is_set():
        if not poller.poll(100):
            continue
        for _ in range(BURST):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            accepted += 1
            conn.setblocking(True)
            conn.settimeout(5)
            try:
                conn.recv(100)
                conn.sendall(b"ok\n")
            except OSError:
                pass
            conn.close()
    counts.put((os.getpid(), accepted))


def _listener(port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _client(port: int, count: int, threads: int) -> int:
    failed = 0
    lock = threading.Lock()

    def run(n: int) -> None:
        nonlocal failed
        for _ in range(n):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"x\n")
                    c.recv(10)
            except OSError:
                with lock:
                    failed += 1

    pool = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return failed


def measure(workers: int, connections: int, threads: int, reuseport: bool) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    counts: multiprocessing.Queue[tuple[int, int]] = ctx.Queue()
    probe = _listener(0, reuseport)
    port = probe.getsockname()[1]
    socks: list[Callable[[], socket.socket]]
    if reuseport:
        socks = [lambda: probe] + [lambda: _listener(port, True)] * (workers - 1)
    else:
        socks = [lambda: probe] * workers
    stop = ctx.Event()
    procs = [ctx.Process(target=_serve, args=(make(), counts, stop)) for make in socks]
    for p in procs:
        p.start()
    time.sleep(0.5)
    failed = _client(port, connections, threads)
    time.sleep(0.3)
    stop.set()
    found = [counts.get(timeout=10)[1] for _ in procs]
    for p in procs:
        p.join(5)
    probe.close()
    if failed:
        print(f"  {failed} connection(s) failed")
    return sorted(found)


def main(argv: list[str]) -> None:
    workers = int(argv[0]) if argv else 2
    connections = int(argv[1]) if len(argv) > 1 else 2000
    threads = int(argv[2]) if len(argv) > 2 else 8
    for reuseport in (False, True):
        name = "SO_REUSEPORT per worker" if reuseport else "one inherited socket"
        per_worker = measure(workers, connections, threads, reuseport)
        print(f"{name}: accepts per worker {per_worker}")


if __name__ == "__main__":
    main(sys.argv[1:])
