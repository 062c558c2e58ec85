"""Connections to real servers: connect (plain, or TLS for servers that re-encrypt) under a
timeout, and a bounded keep-alive pool.

A connection goes back to the pool only when its last exchange ended cleanly on both sides
(the request went out whole, the response reader says it may be reused and nothing unread is
waiting); before reuse it is checked for a close by the server while it was idle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from config.model import Address, RealServer
from tls.client_context import ClientContexts, TlsTarget, build_client_context, target_for

from .response_reader import ResponseReader
from .runtime import ClientInfo
from .stream import ServerTlsError, connect, connect_tls

# HAProxy keeps idle server connections for pool-purge-delay (5 s); Apache's KeepAliveTimeout is
# 5 s, so reusing a connection idle for longer mostly meets one that the server has closed.
IDLE_TIMEOUT = 4.0
MAX_IDLE_PER_SERVER = 64  # more than the usual concurrency per server; bounds sockets held
# Queues of idle connections, one per (server, TLS target). With ``sni: host`` clients choose the
# names, so the number of queues is bounded too; beyond it a connection is simply not kept.
MAX_IDLE_KEYS = 4096
MAX_SERVER_HEAD = 65536  # response heads larger than this are a 502 (HAProxy tune.bufsize order)


class ConnectError(Exception):
    """The real server could not be reached; nothing was sent."""

    def __init__(self, address: Address, cause: str, *, tls: bool = False) -> None:
        super().__init__(f"{address}: {cause}")
        self.cause = cause
        self.tls = tls  # the TLS handshake failed: the server is not reachable securely


class ServerStream(Protocol):
    """A connection's byte stream: SockStream, or what a test's connector hands out (a memory
    stream with a scripted server behind it)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def is_idle_and_open(self) -> bool: ...

    def close(self) -> None: ...


# Opens a connection to a real server; OSError when it cannot.
Connector = Callable[[Address], Awaitable[ServerStream]]


# Opens a TLS connection to a real server, sending the given bytes (a PROXY header) before the
# handshake: OSError when it cannot connect, ServerTlsError when the handshake fails.
TlsConnector = Callable[[Address, TlsTarget, bytes], Awaitable[ServerStream]]


async def connect_tcp(address: Address) -> ServerStream:
    return await connect(address.host, address.port)


async def connect_tls_target(address: Address, target: TlsTarget, first: bytes) -> ServerStream:
    return await connect_tls(
        address.host, address.port, target.context, target.server_name, first=first
    )


@dataclass(slots=True, eq=False)
class UpstreamConnection:
    address: Address
    stream: ServerStream
    # The current exchange: its response, whether its request went out whole, and whether its
    # request body is chunked (relay.py sets these for each request).
    reader: ResponseReader | None = None
    request_done: bool = False
    chunked: bool = False
    reused: bool = False
    idle_since: float = 0.0
    response_bytes: int = 0  # of the current exchange: 0 means a resend is still safe
    tls: TlsTarget | None = None  # re-encrypted: pooled apart, per target
    # The client a PROXY header on this connection named: reused for that client only.
    owner: ClientInfo | None = None


class UpstreamPool:
    """Idle keep-alive connections per real-server address and TLS target (None: plain), and the
    client TLS contexts of the servers that re-encrypt. Owned by the trio thread.

    A connection that began with a PROXY header speaks for one client: it is kept aside for
    that client connection alone (``_private``) and closed when the client leaves (``forget``),
    as HAProxy reuses such a connection only for an identical header.
    """

    def __init__(
        self, connector: Connector = connect_tcp, tls_connector: TlsConnector = connect_tls_target
    ) -> None:
        # Keyed by the address alone for plain connections (the hot path hashes one object), by
        # (address, target) for TLS ones.
        self._idle: dict[Address | tuple[Address, TlsTarget], deque[UpstreamConnection]] = {}
        self._private: dict[ClientInfo, dict[Address, UpstreamConnection]] = {}
        self._connector = connector
        self._tls_connector = tls_connector
        # Client contexts per ``tls`` setting, built at start and on reload (app.py).
        self.tls_contexts: ClientContexts = {}
        self._live_contexts: set[int] = set()
        self._swept = -IDLE_TIMEOUT  # when _sweep last ran

    def set_tls_contexts(self, contexts: ClientContexts) -> None:
        """New client contexts (a reload reads the CA and certificate files again). Connections
        made with the old ones are closed when idle and not kept when released: their keys would
        never be asked for again."""
        self.tls_contexts = contexts
        self._live_contexts = {id(context) for context in contexts.values()}
        for key in [key for key in self._idle if isinstance(key, tuple) and self._stale(key[1])]:
            for conn in self._idle.pop(key):
                conn.stream.close()

    def _stale(self, tls: TlsTarget | None) -> bool:
        return tls is not None and id(tls.context) not in self._live_contexts

    def tls_target(self, server: RealServer, host: bytes = b"") -> TlsTarget | None:
        """How to reach ``server`` over TLS for a request to ``host``; None for plain HTTP."""
        settings = server.tls
        if settings is None:
            return None
        context = self.tls_contexts.get(settings)
        if context is None:  # a runtime built without app.py (tests): build on first use
            context = self.tls_contexts[settings] = build_client_context(settings)
            self._live_contexts.add(id(context))
        return target_for(settings, context, server.address, host)

    def take_idle(
        self, address: Address, tls: TlsTarget | None = None, owner: ClientInfo | None = None
    ) -> UpstreamConnection | None:
        """A kept-alive connection that still looks usable, if there is one (no I/O wait)."""
        if owner is not None:
            conn = self._private.get(owner, {}).pop(address, None)
            return conn if conn is not None and _reusable(conn, trio.current_time()) else None
        idle = self._idle.get(address if tls is None else (address, tls))
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
        tls: TlsTarget | None = None,
        proxy_header: bytes = b"",
        owner: ClientInfo | None = None,
    ) -> UpstreamConnection:
        """A new connection, within ``connect_timeout`` (the TLS handshake included);
        ``proxy_header`` goes first, before anything else (a TLS handshake included)."""
        with trio.move_on_after(connect_timeout) as scope:
            try:
                if tls is None:
                    stream = await self._connector(address)
                else:
                    stream = await self._tls_connector(address, tls, proxy_header)
            except ServerTlsError as error:
                raise ConnectError(address, str(error), tls=True) from error
            except OSError as error:
                raise ConnectError(address, error.strerror or str(error)) from error
            if proxy_header and tls is None:
                try:
                    await stream.send_all(proxy_header)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    stream.close()
                    raise ConnectError(address, "connection lost") from error
        if scope.cancelled_caught:
            raise ConnectError(address, "connect timeout")
        return UpstreamConnection(address, stream, tls=tls, owner=owner)

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose exchange is complete; anything else is closed.

        Bytes after the response (the reader keeps them) make a connection unusable too: they
        would be taken for the start of the next response.
        """
        reader = conn.reader
        if (
            conn.request_done
            and reader is not None
            and reader.reusable()
            and (conn.tls is None or not self._stale(conn.tls))
        ):
            conn.reader = None
            conn.request_done = False
            conn.response_bytes = 0
            if conn.owner is not None:
                conn.idle_since = trio.current_time()
                old = self._private.setdefault(conn.owner, {}).pop(conn.address, None)
                if old is not None:
                    old.stream.close()
                self._private[conn.owner][conn.address] = conn
                return
            now = trio.current_time()
            key = conn.address if conn.tls is None else (conn.address, conn.tls)
            queue = self._idle.get(key)
            if queue is None:
                if len(self._idle) >= MAX_IDLE_KEYS and not self._sweep(now):
                    conn.stream.close()
                    return
                queue = self._idle[key] = deque()
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

    def _sweep(self, now: float) -> bool:
        """Close the idle connections that timed out everywhere and forget empty queues, at most
        every IDLE_TIMEOUT; True when there is room for another queue."""
        if now - self._swept >= IDLE_TIMEOUT:
            self._swept = now
            for key in list(self._idle):
                queue = self._idle[key]
                while queue and now - queue[0].idle_since >= IDLE_TIMEOUT:
                    queue.popleft().stream.close()
                if not queue:
                    del self._idle[key]
        return len(self._idle) < MAX_IDLE_KEYS

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
