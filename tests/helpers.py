"""Small real servers and clients for pipeline tests (real loopback sockets, no mocks)."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from config.model import (
    Address,
    Bind,
    GlobalSettings,
    Pool,
    ProxyConfig,
    RealServer,
    Timeouts,
    VirtualService,
)
from l7proxy import app


@dataclass
class Seen:
    """One request as the real server received it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int  # which TCP connection (1-based) it came on

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
Responder = Callable[[Seen], Reply | Awaitable[Reply]]


def default_responder(label: str) -> Responder:
    def reply(seen: Seen) -> Reply:
        body = f"{label} {seen.method.decode()} {seen.target.decode()} {len(seen.body)}".encode()
        return 200, [(b"x-served-by", label.encode())], body

    return reply


class Changes:
    """Tells waiters that something changed, so a test awaits a condition instead of polling.

    The owner calls ``notify`` after each change; ``wait_until`` re-checks its predicate then.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self, *_: object) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


@dataclass
class Backend:
    """An h11 real server on 127.0.0.1 that records what it received.

    ``changes`` is notified when a connection arrives and when a request is recorded; backends
    may share one, so a test can wait for whichever of them is reached first.
    """

    label: str
    responder: Responder | None = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    sock: trio.socket.SocketType | None = None
    port: int = 0
    changes: Changes = field(default_factory=Changes)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate`` (about what this backend saw) holds."""
        await self.changes.wait_until(predicate)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.sock = trio.socket.socket()
        await self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        listener = trio.SocketListener(self.sock)
        task_status.started()
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        number = self.connections
        self.changes.notify()
        conn = h11.Connection(h11.SERVER)
        responder = self.responder or default_responder(self.label)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                        if conn.they_are_waiting_for_100_continue:
                            await stream.send_all(
                                conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                                or b""
                            )
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                seen = Seen(
                    request.method, request.target, list(request.headers), bytes(body), number
                )
                self.seen.append(seen)
                self.changes.notify()
                result = responder(seen)
                if not isinstance(result, tuple):
                    result = await result
                status, headers, payload = result
                if not any(
                    n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers
                ):
                    headers = [*headers, (b"content-length", str(len(payload)).encode())]
                data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                if payload and request.method != b"HEAD":
                    data += conn.send(h11.Data(data=payload)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(data)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


RawHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(
    handler: RawHandler, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A TCP server whose connections are handed to ``handler`` as they are."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def read_request_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def raw_server(nursery: trio.Nursery, label: str, handler: RawHandler) -> RealServer:
    """Start a raw TCP server (``serve_raw``); the real server ``label`` at its address."""
    port = await nursery.start(serve_raw, handler)
    return RealServer(label=label, address=Address("127.0.0.1", port))


def free_port() -> int:
    """A port nobody listens on (bound once, then released): connects to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_server(label: str) -> RealServer:
    """A real server at a port nobody listens on: every connect to it is refused."""
    return RealServer(label=label, address=Address("127.0.0.1", free_port()))


def simple_config(
    servers: list[RealServer],
    *,
    fallback: RealServer | None = None,
    timeouts: Timeouts | None = None,
    health_checks: bool = False,
    **pool_kwargs: Any,
) -> ProxyConfig:
    from config.model import HealthCheck

    pool = Pool(
        name="www",
        real_servers=tuple(servers),
        fallback=fallback,
        health_check=HealthCheck(enabled=health_checks),
        **pool_kwargs,
    )
    vs = VirtualService(
        label="www",
        binds=(Bind(Address("127.0.0.1", 0)),),
        pool=pool,
        timeouts=timeouts or Timeouts(),
    )
    return ProxyConfig(virtual_servers=(vs,), global_=GlobalSettings(grace=2.0, access_log=False))


def server(label: str, backend: Backend | Address, **kwargs: Any) -> RealServer:
    address = backend.address if isinstance(backend, Backend) else backend
    return RealServer(label=label, address=address, **kwargs)


async def start_proxy(nursery: trio.Nursery, config: ProxyConfig) -> app.ProxyHandle:
    handle: app.ProxyHandle = await nursery.start(app.serve, config)
    return handle


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Response:
    """One request with the standard library's HTTP client (run it in a thread)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


async def request(port: int, method: str = "GET", path: str = "/", **kwargs: Any) -> Response:
    return await trio.to_thread.run_sync(lambda: http_request(port, method, path, **kwargs))


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes, read until the proxy closes (bounded by the caller's fail_after)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
            if not until_close and b"\r\n\r\n" in received:
                break
        return received


async def start_farm(
    nursery: trio.Nursery, *members: Backend | RealServer, **config_kwargs: Any
) -> tuple[app.ProxyHandle, int]:
    """Start each backend and a proxy whose pool "www" has the members as its real servers, in
    order: a backend under its own label, a RealServer as given (a dead or raw server's
    address). ``config_kwargs`` go to ``simple_config``. The proxy, and its port."""
    servers = []
    for member in members:
        if isinstance(member, Backend):
            await nursery.start(member.serve)
            member = server(member.label, member)
        servers.append(member)
    proxy = await start_proxy(nursery, simple_config(servers, **config_kwargs))
    return proxy, proxy.address("www")[1]


async def proxy_one(nursery: trio.Nursery, backend: Backend, **config_kwargs: Any) -> int:
    """Start ``backend`` and a proxy whose only real server it is; the proxy's port."""
    return (await start_farm(nursery, backend, **config_kwargs))[1]
