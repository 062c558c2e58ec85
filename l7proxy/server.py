"""Listening sockets, the accept loop, and the guarded per-connection handler."""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from config.model import Address, VirtualService
from tls.clientcert import client_headers

from .connection import ClientConnection
from .exchange import trusted_peer
from .proxy_protocol import MAX_HEADER, ProxyHeader, ProxyHeaderError, parse
from .runtime import ClientInfo, Runtime, ServedBind, SessionInfo
from .stream import SockStream, TlsSockStream

if TYPE_CHECKING:
    from tls.server_tls import TlsServer

log = logging.getLogger("lbproxy.server")

LISTEN_BACKLOG = 1024  # HAProxy's default maxconn-derived backlog is of this order
MAX_ACCEPTS_PER_WAKEUP = 64  # accept a burst, but let the connections run in between
# Linux <linux/in.h>, <linux/in6.h>; Python's socket module does not name them.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)


class BindError(Exception):
    """A listening address could not be opened; the message names it."""


def open_listening_socket(address: Address, *, freebind: bool = False) -> socket.socket:
    """Bind and listen on ``address`` (IPv4, IPv6, or a name resolved once at start).

    ``freebind``: the address need not be on this machine yet (a floating address the standby
    of a pair takes over later; HAProxy's ``bind ... freebind``). Off otherwise, so that a
    mistyped address still fails at start.
    """
    try:
        infos = socket.getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise BindError(f"cannot bind {address}: {error.strerror}") from error
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too, like HAProxy's `bind :::80 v4v6`; other addresses are v6 only.
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address.host == "::" else 1
            )
        if freebind and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        elif freebind:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise BindError(f"cannot bind {address}: {error.strerror or error}") from error
    return sock


def client_ip(raw: str) -> str:
    """The address as a client should be known: IPv4-mapped IPv6 shown as IPv4, no zone."""
    if ":" not in raw:
        return raw  # IPv4, as the kernel wrote it: already in its one canonical form
    return _ipv6_client_ip(raw)


@functools.lru_cache(maxsize=4096)
def _ipv6_client_ip(raw: str) -> str:
    # Parsing an address cost more than the rest of an accept; clients come back, so the
    # answers are kept.
    raw = raw.split("%", 1)[0]
    try:
        parsed = ipaddress.ip_address(raw)
    except ValueError:
        return raw
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return raw


Handler = Callable[[socket.socket, Any], Awaitable[None]]


class ConnectionGate:
    """A virtual server's ``limits.max_connections`` (HAProxy frontend ``maxconn``): while it is
    full, the accept loops of its binds stop accepting, so new connections wait in the listen
    backlog instead of being refused; each close lets the next one in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._freed = trio.Event()

    def full(self) -> bool:
        return self.open >= self.limit

    async def wait_free(self) -> None:
        while self.full():
            await self._freed.wait()

    def closed(self) -> None:
        self.open -= 1
        self._freed.set()
        self._freed = trio.Event()


def connection_gate(gates: dict[str, ConnectionGate], vs: VirtualService) -> ConnectionGate | None:
    """The gate of ``vs`` (None without a limit); one per label, so a reload keeps counting the
    connections already open and only changes the limit."""
    if not vs.max_connections:
        return None
    gate = gates.setdefault(vs.label, ConnectionGate(vs.max_connections))
    gate.limit = vs.max_connections
    return gate


async def _gated(handler: Handler, gate: ConnectionGate, conn: socket.socket, peer: Any) -> None:
    try:
        await handler(conn, peer)
    finally:
        gate.closed()


async def accept_loop(
    sock: socket.socket,
    handler: Handler,
    nursery: trio.Nursery,
    gate: ConnectionGate | None = None,
) -> None:
    """Accept connections forever; each runs as its own task in ``nursery``. With a ``gate``,
    only while it has room."""
    while True:
        try:
            if gate is not None:
                await gate.wait_free()
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return  # closed by a reload or the shutdown
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            if gate is not None and gate.full():
                break  # another bind of the virtual server took the last slot
            try:
                conn, peer = sock.accept()
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: %s; pausing accepts for 100 ms", error.strerror)
                    await trio.sleep(0.1)
                break
            if gate is None:
                nursery.start_soon(handler, conn, peer)
            else:
                gate.open += 1
                nursery.start_soon(_gated, handler, gate, conn, peer)
        await trio.lowlevel.checkpoint()


def _client_info(sock: socket.socket, peer: Any, tls: bool) -> ClientInfo:
    local = sock.getsockname()
    if isinstance(peer, tuple):
        return ClientInfo(client_ip(peer[0]), peer[1], client_ip(local[0]), local[1], tls)
    return ClientInfo("unix", 0, "unix", 0, tls)


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """The PROXY protocol header a trusted peer starts with. Only its own bytes are taken from
    the socket (peek, then take), so what follows (a TLS ClientHello, a request) stays there
    for the next reader. ProxyHeaderError when the bytes are not a header or the peer left."""
    sock.setblocking(False)
    taken = bytearray()
    while True:
        try:
            data = sock.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as error:
            raise ProxyHeaderError(f"connection lost: {error.strerror or error}") from error
        if not data:
            raise ProxyHeaderError("connection closed before a complete PROXY header")
        header = parse(taken + data)
        if header is not None:
            sock.recv(header.length - len(taken))  # peeked, so all there: one call takes it
            return header
        taken += sock.recv(len(data))  # every byte seen so far is header: take it, wait for more
        await trio.lowlevel.wait_readable(sock)


async def _proxied_client(sock: socket.socket, client: ClientInfo, wait: float) -> ClientInfo:
    """``client`` as the PROXY header says (LOCAL or UNKNOWN: the connection's own)."""
    with trio.move_on_after(wait):
        header = await read_proxy_header(sock)
        if header.source is None or header.destination is None:
            return client
        (ip, port), (local_ip, local_port) = header.source, header.destination
        return ClientInfo(client_ip(ip), port, client_ip(local_ip), local_port, client.tls)
    raise ProxyHeaderError(f"no PROXY header within {wait:g}s")


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close for sure (a TLS stream sends its close_notify when the socket takes it at once)."""
    if isinstance(stream, SockStream):
        stream.close()
    else:
        await trio.aclose_forcefully(stream)


def make_handler(runtime: Runtime, served: ServedBind, tls_server: TlsServer | None) -> Handler:
    """The guarded handler for one listener: TLS handshake, then the request loop."""
    handshake_timeout = served.bind.tls.handshake_timeout if served.bind.tls else 0.0
    accept_proxy = served.bind.accept_proxy  # peers that must start with a PROXY header

    async def handle(sock: socket.socket, peer: Any) -> None:
        accepted_at = trio.current_time()
        try:
            client = _client_info(sock, peer, tls_server is not None)
            if accept_proxy and trusted_peer(client.ip, accept_proxy):
                client = await _proxied_client(sock, client, served.vs.timeouts.header)
        except ProxyHeaderError as error:
            log.warning(
                "PROXY protocol from %s:%s to %s port %s: %s; connection closed",
                client.ip,
                client.port,
                served.vs.label,
                served.port,
                error,
            )
            sock.close()
            return
        except OSError:
            sock.close()
            return
        except BaseException:  # cancelled (a shutdown) while waiting for the header: not kept
            sock.close()
            raise
        stream: SockStream
        tls_headers: list[tuple[bytes, bytes]] = []
        if tls_server is None:
            stream = SockStream(sock)
        else:
            try:
                tls_sock = tls_server.context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            except (ssl.SSLError, OSError):
                sock.close()
                return
            stream = TlsSockStream(tls_sock)
        label = served.vs.label
        runtime.connections += 1
        frontend = runtime.frontend(label)
        frontend.opened()
        try:
            if isinstance(stream, TlsSockStream):
                with trio.move_on_after(handshake_timeout) as scope:
                    try:
                        await stream.do_handshake()
                    except trio.BrokenResourceError as error:
                        log.debug("TLS handshake with %s failed: %s", client.ip, error.__cause__)
                        return
                if scope.cancelled_caught:
                    log.debug("TLS handshake with %s timed out", client.ip)
                    return
                tls_headers = client_headers(
                    stream.getpeercert(), stream.cipher(), version=stream.version()
                )
            connection = ClientConnection(runtime, served, stream, client, tls_headers)
            runtime.sessions[id(stream)] = SessionInfo(client, label, accepted_at, connection)
            await connection.run(accepted_at)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection from %s:%s failed", client.ip, client.port)
        finally:
            runtime.sessions.pop(id(stream), None)
            runtime.upstream.forget(client)
            runtime.connections -= 1
            frontend.current -= 1
            await close_stream(stream)

    return handle
