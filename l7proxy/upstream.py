"""Connections to real servers: connect under a timeout, and a bounded keep-alive pool.

A connection goes back to the pool only when its last exchange ended cleanly on both sides
(h11 says DONE/DONE and nothing unread is waiting); before reuse it is checked for a close by
the server while it was idle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11
import trio

from config.model import Address

from .runtime import ClientInfo
from .stream import connect

# HAProxy keeps idle server connections for pool-purge-delay (5 s); Apache's KeepAliveTimeout is
# 5 s, so reusing a connection idle for longer mostly meets one that the server has closed.
IDLE_TIMEOUT = 4.0
MAX_IDLE_PER_SERVER = 64  # more than the usual concurrency per server; bounds sockets held
MAX_SERVER_HEAD = 65536  # response heads larger than this are a 502 (HAProxy tune.bufsize order)


class ConnectError(Exception):
    """The real server could not be reached; nothing was sent."""

    def __init__(self, address: Address, cause: str) -> None:
        super().__init__(f"{address}: {cause}")
        self.cause = cause


class ServerStream(Protocol):
    """A connection's byte stream: SockStream, or what a test's connector hands out (a memory
    stream with a scripted server behind it)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def is_idle_and_open(self) -> bool: ...

    def close(self) -> None: ...


# Opens a connection to a real server; OSError when it cannot.
Connector = Callable[[Address], Awaitable[ServerStream]]


async def connect_tcp(address: Address) -> ServerStream:
    return await connect(address.host, address.port)


@dataclass(slots=True, eq=False)
class UpstreamConnection:
    address: Address
    stream: ServerStream
    h11: h11.Connection = field(
        default_factory=lambda: h11.Connection(
            h11.CLIENT, max_incomplete_event_size=MAX_SERVER_HEAD
        )
    )
    reused: bool = False
    idle_since: float = 0.0
    response_bytes: int = 0  # of the current exchange: 0 means a resend is still safe
    # The client a PROXY header on this connection named: reused for that client only.
    owner: ClientInfo | None = None


class UpstreamPool:
    """Idle keep-alive connections per real-server address. Owned by the trio thread.

    A connection that began with a PROXY header speaks for one client: it is kept aside for
    that client connection alone (``_private``) and closed when the client leaves (``forget``),
    as HAProxy reuses such a connection only for an identical header.
    """

    def __init__(self, connector: Connector = connect_tcp) -> None:
        self._idle: dict[Address, deque[UpstreamConnection]] = {}
        self._private: dict[ClientInfo, dict[Address, UpstreamConnection]] = {}
        self._connector = connector

    def take_idle(
        self, address: Address, owner: ClientInfo | None = None
    ) -> UpstreamConnection | None:
        """A kept-alive connection that still looks usable, if there is one (no I/O wait)."""
        if owner is not None:
            conn = self._private.get(owner, {}).pop(address, None)
            return conn if conn is not None and _reusable(conn, trio.current_time()) else None
        idle = self._idle.get(address)
        if not idle:
            return None
        now = trio.current_time()
        while idle:
            conn = idle.pop()  # most recently used first: least likely to have timed out
            if _reusable(conn, now):
                return conn
        return None

    async def connect(
        self,
        address: Address,
        connect_timeout: float,
        proxy_header: bytes = b"",
        owner: ClientInfo | None = None,
    ) -> UpstreamConnection:
        """A new connection, within ``connect_timeout``; ``proxy_header`` goes first, before
        anything else (a TLS handshake included) is sent on it."""
        with trio.move_on_after(connect_timeout) as scope:
            try:
                stream = await self._connector(address)
            except OSError as error:
                raise ConnectError(address, error.strerror or str(error)) from error
            if proxy_header:
                try:
                    await stream.send_all(proxy_header)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    stream.close()
                    raise ConnectError(address, "connection lost") from error
        if scope.cancelled_caught:
            raise ConnectError(address, "connect timeout")
        return UpstreamConnection(address, stream, owner=owner)

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose exchange is complete; anything else is closed.

        Bytes after the response (h11 keeps them) make a connection unusable too: they would be
        taken for the start of the next response.
        """
        state = conn.h11
        if (
            state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and not any(state.trailing_data)
        ):
            conn.h11.start_next_cycle()
            conn.response_bytes = 0
            if conn.owner is not None:
                conn.idle_since = trio.current_time()
                old = self._private.setdefault(conn.owner, {}).pop(conn.address, None)
                if old is not None:
                    old.stream.close()
                self._private[conn.owner][conn.address] = conn
                return
            queue = self._idle.setdefault(conn.address, deque())
            now = trio.current_time()
            while queue and now - queue[0].idle_since >= IDLE_TIMEOUT:
                queue.popleft().stream.close()
            if len(queue) < MAX_IDLE_PER_SERVER:
                conn.idle_since = now
                queue.append(conn)
                return
        conn.stream.close()

    def forget(self, owner: ClientInfo) -> None:
        """A client connection ended: the server connections kept for it close."""
        if self._private:
            for conn in self._private.pop(owner, {}).values():
                conn.stream.close()

    def close_all(self) -> None:
        for queue in self._idle.values():
            for conn in queue:
                conn.stream.close()
        self._idle.clear()
        for owner in list(self._private):
            self.forget(owner)


def _reusable(conn: UpstreamConnection, now: float) -> bool:
    """Idle not too long and not closed by the server meanwhile; else it is closed now."""
    if now - conn.idle_since < IDLE_TIMEOUT and conn.stream.is_idle_and_open():
        conn.reused = True
        return True
    conn.stream.close()
    return False
