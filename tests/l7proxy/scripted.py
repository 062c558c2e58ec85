"""In-memory client and scripted real servers for exchange tests (the connector seam).

The proxy's own code runs unchanged: a ``ClientConnection`` over a memory stream, and an
``UpstreamPool`` whose connector hands out memory streams with a scripted server behind each.
No sockets, no scheduler luck: a script decides exactly when each byte goes where.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from balancing.state import new_states
from config.model import Address, ProxyConfig
from l7proxy.connection import ClientConnection
from l7proxy.runtime import ClientInfo, Runtime, ServedBind
from l7proxy.upstream import ServerStream, UpstreamPool

Script = Callable[["ServerEnd"], Awaitable[None]]
Pipe = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


class MemoryEnd:
    """One end of a memory stream pair with the sync close and abort the proxy expects."""

    def __init__(self, stream: Pipe):
        self.stream = stream
        self.closed = False
        self.aborted = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    def is_idle_and_open(self) -> bool:
        return not self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stream.send_stream.close()
            self.stream.receive_stream.close()

    async def send_eof(self) -> None:
        await self.stream.send_stream.aclose()

    def abort(self) -> None:
        self.aborted = True
        self.close()


class ServerEnd(MemoryEnd):
    """A scripted server's side of one connection: read what the proxy sent, answer."""

    def __init__(self, stream: Pipe):
        super().__init__(stream)
        self.received = b""

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            try:
                chunk = await self.receive_some(65536)
            except trio.ClosedResourceError:
                chunk = b""
            if not chunk:
                raise EOFError(self.received)
            self.received += chunk
        return self.received

    async def read_head(self) -> bytes:
        await self.read_until(b"\r\n\r\n")
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"


@dataclass
class Farm:
    """Scripts per server address, one per connection in order; what each connection saw."""

    scripts: dict[Address, list[Script]]
    nursery: trio.Nursery
    connections: list[tuple[Address, ServerEnd]] = field(default_factory=list)

    async def connect(self, address: Address) -> ServerStream:
        scripts = self.scripts.get(address)
        if not scripts:
            raise ConnectionRefusedError(111, "Connection refused")
        script = scripts.pop(0)
        proxy_side, server_side = trio.testing.memory_stream_pair()
        end = ServerEnd(server_side)
        self.connections.append((address, end))
        self.nursery.start_soon(script, end)
        return MemoryEnd(proxy_side)


async def open_client(
    nursery: trio.Nursery, config: ProxyConfig, farm: Farm
) -> tuple[ServerEnd, Runtime]:
    """A client connection to the first virtual server, served by the real ClientConnection;
    returns the client's end (read and write it like a socket) and the shared runtime."""
    runtime = Runtime(config, new_states(config.all_pools()), UpstreamPool(farm.connect))
    vs = config.virtual_servers[0]
    served = ServedBind(vs, vs.binds[0], 80)
    client_side, proxy_side = trio.testing.memory_stream_pair()
    info = ClientInfo("192.0.2.7", 40000, "127.0.0.1", 80)
    proxy_end = MemoryEnd(proxy_side)
    conn = ClientConnection(runtime, served, proxy_end, info)

    async def serve() -> None:
        try:
            await conn.run(trio.current_time())
        finally:
            proxy_end.close()

    nursery.start_soon(serve)
    return ServerEnd(client_side), runtime
