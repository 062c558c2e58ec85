"""A thin trio stream over a non-blocking stdlib socket.

trio's SocketStream costs up to 13% of a proxied request (docs/architecture.md, "Speed"); this
one does one checkpoint, then tries the system call, and waits for readiness only when it would
block.
It is a full ``trio.abc.HalfCloseableStream``, so ``trio.SSLStream`` can wrap it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import struct

import trio

from balancing.health import describe_tls_error

READ_SIZE = 65536  # 64 KiB reads: x2.6 on 64 KiB bodies, nothing lost on small ones
_CLOSED_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


class SockStream(trio.abc.HalfCloseableStream):
    """Owns ``sock``; closing the stream closes the socket."""

    __slots__ = ("_closed", "sock")

    # What "try again later" and "the peer has ended" look like for this kind of socket.
    _WOULD_BLOCK: tuple[type[OSError], ...] = (BlockingIOError,)
    _ENDED: tuple[type[OSError], ...] = ()

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = max_bytes or READ_SIZE
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            try:
                return self.sock.recv(size)
            except self._WOULD_BLOCK as error:
                await self._wait(error, writing=False)
            except self._ENDED:
                return b""
            except OSError as error:
                raise trio.BrokenResourceError(f"receive failed: {error}") from error

    async def _wait(self, error: OSError, *, writing: bool) -> None:
        """Wait for what the would-block ``error`` asks for (plain sockets: the direction)."""
        if writing:
            await trio.lowlevel.wait_writable(self.sock)
        else:
            await trio.lowlevel.wait_readable(self.sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # No checkpoint when the kernel takes everything at once: every relay loop also reads,
        # and each read yields, so no task can starve the others; a wait yields anyway.
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        with view:
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                try:
                    sent = self.sock.send(view)
                except self._WOULD_BLOCK as error:
                    await self._wait(error, writing=True)
                    continue
                except OSError as error:
                    raise trio.BrokenResourceError(f"send failed: {error}") from error
                view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            if error.errno not in _CLOSED_ERRNOS:
                raise trio.BrokenResourceError(f"shutdown failed: {error}") from error

    def is_idle_and_open(self) -> bool:
        """True when nothing is waiting to be read and the peer has not closed.

        A pooled server connection that the server closed while idle shows EOF here; one
        with unexpected bytes (a late response) is unusable too.
        """
        if self._closed:
            return False
        try:
            # The raw socket's recv, also under TLS (SSLSocket.recv refuses flags).
            data = socket.socket.recv(self.sock, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del data
        return False

    def abort(self) -> None:
        """Close with a reset (SO_LINGER 0), so the peer sees truncation, not a clean end."""
        if self._closed:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def connect(host: str, port: int) -> SockStream:
    """Connect to ``host:port`` (a name is resolved, every address tried in order).

    Raises OSError when every address fails; the caller bounds the time.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            err = sock.connect_ex(addr)
            if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException as error:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            if isinstance(error, OSError):
                last = error
                continue
            raise
        return SockStream(sock)
    raise last or OSError(f"no address for {host}")


class ServerTlsError(OSError):
    """The TLS handshake with a real server failed (certificate refused, protocol error); the
    text is the cause. Nothing of the request was sent."""


async def connect_tls(
    host: str, port: int, context: ssl.SSLContext, server_name: str, *, first: bytes = b""
) -> TlsSockStream:
    """Connect and complete a client TLS handshake sending ``server_name`` (not as SNI when it is
    an IP address, RFC 6066) and verifying the certificate against it as ``context`` says.

    ``first`` (a PROXY header) is sent in the clear before the handshake. Raises OSError when the
    connect fails, ServerTlsError when the handshake does; the caller bounds the time.
    """
    plain = await connect(host, port)
    if first:  # a PROXY header: plain bytes before the handshake
        try:
            await plain.send_all(first)
        except BaseException:
            plain.close()
            raise
    try:
        tls_sock = context.wrap_socket(
            plain.sock, server_hostname=server_name, do_handshake_on_connect=False
        )
    except (ssl.SSLError, ValueError) as error:
        plain.close()
        raise ServerTlsError(describe_tls_error(error)) from error
    stream = TlsSockStream(tls_sock)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as error:
        stream.abort()
        raise ServerTlsError(describe_tls_error(error.__cause__)) from error
    except BaseException:
        stream.abort()
        raise
    return stream


class TlsSockStream(SockStream):
    """TLS on the socket itself: OpenSSL reads and writes the descriptor directly.

    trio.SSLStream runs OpenSSL over memory buffers with Python moving every record, which cost
    more per handshake than the signature on these machines; here a handshake, a read or a
    write is one C call, and a wait happens only when OpenSSL asks for one. One task may read
    while another writes (the relay does): each call is non-blocking and completes before the
    next starts, which OpenSSL allows on one thread.
    """

    __slots__ = ()

    sock: ssl.SSLSocket
    _WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
    # close_notify, or a client that just closed: HTTPS clients may (RFC 9112 §9.8).
    _ENDED = (ssl.SSLZeroReturnError, ssl.SSLEOFError)

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__(sock)

    async def _wait(self, error: OSError, *, writing: bool) -> None:
        """OpenSSL says which way it waits (a write may need to read, and the reverse)."""
        if isinstance(error, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self.sock)
        else:
            await trio.lowlevel.wait_readable(self.sock)

    async def do_handshake(self) -> None:
        """Raises trio.BrokenResourceError when the handshake fails; the caller bounds time."""
        while True:
            try:
                self.sock.do_handshake()
                return
            except self._WOULD_BLOCK as want:
                await self._wait(want, writing=False)
            except OSError as error:  # ssl.SSLError is an OSError
                raise trio.BrokenResourceError(f"TLS handshake failed: {error}") from error

    async def send_eof(self) -> None:
        raise trio.BrokenResourceError("TLS has no half-close")

    def is_idle_and_open(self) -> bool:
        """As for plain sockets, on the raw socket: a close_notify or any record the server sent
        while idle makes the connection unusable; so do decrypted bytes nobody read."""
        return not self.sock.pending() and super().is_idle_and_open()

    def close(self) -> None:
        """Send close_notify when the socket takes it at once, then close."""
        if not self._closed:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self.sock.unwrap()  # non-blocking: sends close_notify, does not wait for one
        super().close()

    def abort(self) -> None:
        """Close with a reset and no close_notify: the client must see a truncation."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            SockStream.close(self)

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self.sock.getpeercert(binary_form=True)

    def cipher(self) -> tuple[str, str, int] | None:
        return self.sock.cipher()

    def version(self) -> str | None:
        return self.sock.version()
