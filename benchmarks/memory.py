"""What an idle connection costs lbproxy in memory: the `memory` case of `make bench`.

lbproxy's resident set size (VmRSS) is read three times: after a warm-up; after N keep-alive
client connections have each made one request and stay open and idle; and after a request on
all N at once has made lbproxy open about N connections to the real servers, which then wait
idle in its pool. The differences over the connection counts are the costs per connection.

The real servers are a small backend in this process that holds every answer until all N
requests have arrived, so that lbproxy really has N server connections at the same time. Its
pool keeps at most MAX_IDLE_PER_SERVER idle connections per real server, so the backend listens
on enough ports for N of them. Every step has a deadline; all sockets and lbproxy are closed at
the end, also on errors.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
from harness import BenchError, say

DEFAULT_IDLE = 2000
# lbproxy's pool bound per real server (l7proxy/upstream.py MAX_IDLE_PER_SERVER), less a margin
# for round-robin rounding; the pooled count is measured at the backend, not assumed.
POOL_PER_SERVER = 60
WARMUP_REQUESTS = 300  # code paths and caches warm before the first reading
SETTLE = 1.0  # seconds before each reading: log flushes and deferred closes are done
IO_TIMEOUT = 10.0  # one connect, send or answer
DEADLINE = 180.0  # the whole measurement
HOLD_LIMIT = 30.0  # the backend answers what it holds after this, whether all came or not
FD_MARGIN = 256  # descriptors beyond the connections: listeners, logs, libraries
BODY = b"x" * 100
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
REQUEST = b"GET /100b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass(frozen=True)
class Result:
    connections: int  # idle client connections asked for
    rss_start: int = 0  # bytes
    rss_clients: int = 0
    rss_pooled: int = 0
    clients: int = 0  # client connections open and idle at the second reading
    pooled: int = 0  # more server connections open at the third reading than at the second
    real_servers: int = 0
    note: str = ""  # why there are no figures

    @property
    def per_client(self) -> float | None:
        if not self.clients:
            return None
        return (self.rss_clients - self.rss_start) / self.clients

    @property
    def per_pooled(self) -> float | None:
        if self.pooled <= 0:
            return None
        return (self.rss_pooled - self.rss_clients) / self.pooled

    def as_dict(self) -> dict[str, object]:
        return {
            "case": "memory",
            **asdict(self),
            "bytes_per_idle_client": self.per_client,
            "bytes_per_pooled_server": self.per_pooled,
        }


def rss(pid: int) -> int:
    """Resident set size of pid in bytes, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def raise_file_limit(needed: int) -> int:
    """Lift this process's open-file limit (children inherit it) to ``needed`` if allowed;
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    unlimited = hard == resource.RLIM_INFINITY
    with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs privilege
        if not unlimited and hard < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    target = needed if unlimited else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class HoldingBackend:
    """HTTP/1.1 keep-alive servers on ``ports`` loopback ports, in one thread. Every request
    gets a 100-byte answer, at once, or while ``hold`` is set only when that many requests
    wait (or HOLD_LIMIT has passed)."""

    def __init__(self, ports: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.listeners: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}
        self.waiting: list[socket.socket] = []
        self.waiting_since = 0.0
        self.hold = 0
        self.stopping = threading.Event()
        for _ in range(ports):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(4096)
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ)
            self.listeners.append(listener)
        self.thread = threading.Thread(target=self._serve, name="memory-backend", daemon=True)

    @property
    def ports(self) -> list[int]:
        return [listener.getsockname()[1] for listener in self.listeners]

    @property
    def open_connections(self) -> int:
        return len(self.buffers)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock in self.buffers:
                    self._read(sock)
                else:
                    self._accept(sock)
            held_too_long = time.monotonic() - self.waiting_since > HOLD_LIMIT
            if self.waiting and (len(self.waiting) >= self.hold or held_too_long):
                for sock in self.waiting:
                    with contextlib.suppress(OSError):
                        sock.sendall(ANSWER)
                self.waiting.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.buffers[sock] = b""

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        buffer = self.buffers[sock] + data
        while b"\r\n\r\n" in buffer:  # GETs only: a request ends with its head
            _, buffer = buffer.split(b"\r\n\r\n", 1)
            if not self.waiting:
                self.waiting_since = time.monotonic()
            self.waiting.append(sock)
        self.buffers[sock] = buffer

    def _close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.buffers[sock]
        while sock in self.waiting:
            self.waiting.remove(sock)
        sock.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=IO_TIMEOUT)
        for sock in [*self.buffers, *self.listeners]:
            sock.close()
        self.selector.close()


def config(port: int, backends: list[int]) -> str:
    servers = "\n".join(
        f"      - {{label: s{i}, address: 127.0.0.1:{p}}}" for i, p in enumerate(backends)
    )
    return f"""global: {{access_log: false, log_level: warning}}
virtual_servers:
  - label: memory
    bind: 127.0.0.1:{port}
    balance: roundrobin
    health_check: {{enabled: false}}
    real_servers:
{servers}
"""


def read_answer(sock: socket.socket) -> None:
    """Read one answer of the backend's known length through lbproxy; BenchError if not 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("lbproxy closed a client connection instead of answering")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *fields = head.split(b"\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"lbproxy answered {status!r}")
    length = 0
    for line in fields:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("lbproxy closed a client connection in the middle of an answer")
        body += chunk


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"memory measurement: out of time while {doing}")


@contextlib.contextmanager
def _closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def measure(lbproxy: list[str], workdir: Path, count: int, cpu: int | None) -> Result:
    """Start lbproxy on ``cpu`` and take the three readings with ``count`` connections."""
    limit = raise_file_limit(4 * count + FD_MARGIN)
    if limit < 4 * count + FD_MARGIN:
        fitting = max(1, (limit - FD_MARGIN) // 4)
        say(f"memory: the open-file limit {limit} allows {fitting} idle connections, not {count}")
        count = fitting
    say(f"  memory: {count} idle client and pooled server connections of lbproxy")
    backend = HoldingBackend(math.ceil(count / POOL_PER_SERVER))
    backend.thread.start()
    port = harness.free_port()
    conf = workdir / "memory.yaml"
    conf.write_text(config(port, backend.ports))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).parent.parent))
    child = harness.start(
        "lbproxy-memory", [*lbproxy, "run", "-c", str(conf)], workdir=workdir, cpu=cpu, env=env
    )
    try:
        harness.wait_ready(child, port, "/100b", len(BODY), tls=False)
        return _readings(child, port, backend, count)
    except BenchError as error:
        tail = child.log_tail()
        if tail:
            say(f"--- last lines of lbproxy's output ---\n{tail}\n---")
        return Result(count, note=str(error))
    finally:
        harness.stop(child)
        backend.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _readings(child: harness.Child, port: int, backend: HoldingBackend, count: int) -> Result:
    deadline = Deadline(DEADLINE)
    try:
        with contextlib.closing(_connect(port)) as warm:
            for _ in range(WARMUP_REQUESTS):
                warm.sendall(REQUEST)
                read_answer(warm)
        time.sleep(SETTLE)
        start = rss(child.pid)
        with _closing_all([]) as clients:
            for _ in range(count):
                deadline.check("opening client connections")
                sock = _connect(port)
                clients.append(sock)
                sock.sendall(REQUEST)
                read_answer(sock)
            time.sleep(SETTLE)
            with_clients, servers_before = rss(child.pid), backend.open_connections
            backend.hold = count  # answer only once lbproxy has a server connection per request
            for sock in clients:
                deadline.check("sending the held requests")
                sock.sendall(REQUEST)
            for sock in clients:
                deadline.check("reading the held answers")
                read_answer(sock)
            backend.hold = 0
            time.sleep(SETTLE)
            pooled = rss(child.pid)
            servers_after = backend.open_connections
            if not child.alive():
                raise BenchError(f"lbproxy exited (status {child.popen.returncode})")
            return Result(
                connections=count,
                rss_start=start,
                rss_clients=with_clients,
                rss_pooled=pooled,
                clients=len(clients),
                pooled=servers_after - servers_before,
                real_servers=len(backend.listeners),
            )
    except OSError as error:
        raise BenchError(f"memory measurement: {error}") from None


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def render(result: Result) -> str:
    lines = [
        f"== memory: lbproxy RSS per idle connection ({result.connections} asked for, "
        "access log off) =="
    ]
    if result.note:
        return "\n".join([*lines, f"  not measured: {result.note}", ""])
    lines.append(
        f"  idle keep-alive client connection: {_kib(result.per_client)} "
        f"(RSS {_mib(result.rss_start)} -> {_mib(result.rss_clients)} "
        f"with {result.clients} connections, each after one request)"
    )
    lines.append(
        f"  idle pooled server connection: {_kib(result.per_pooled)} "
        f"(RSS {_mib(result.rss_clients)} -> {_mib(result.rss_pooled)} "
        f"with {result.pooled} more server connections, over {result.real_servers} real servers)"
    )
    return "\n".join([*lines, ""])
