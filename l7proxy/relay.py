"""One attempt at one request on one real-server connection: the request out, the body
pumped, the response relayed back, or a tunnel after a 101.

I/O only, like connection.py: the headers come from exchange.py, and every way this can fail
leaves as ``ExchangeFailed`` with a ``Failure`` kind, which the client connection hands to the
failure table (errors.decide). The client's side is reached through ``ClientSide``.

The server side is spoken without h11: the request is written by request_writer.py and the
response read by response_reader.py, which decides as h11 does (a differential test holds it to
that); the client side stays h11's.
"""

from __future__ import annotations

from typing import Protocol

import h11
import trio

from balancing.state import ServerState

from .chunked import LAST_CHUNK, chunk
from .errors import Failure
from .exchange import (
    ResponseRewrite,
    ambiguous_framing,
    client_response_headers,
    forward_response_headers,
    switching_protocols_headers,
)
from .exchange_state import ExchangeState
from .response_reader import (
    END,
    NEED_DATA,
    BadResponse,
    ResponseHead,
    ResponseReader,
    Signal,
    Truncated,
)
from .response_writer import Body, reply_head
from .runtime import Runtime
from .upstream import MAX_SERVER_HEAD, UpstreamConnection

READ_SIZE = 65536
# Events are immutable: one end-of-message without trailers serves every exchange.
END_OF_MESSAGE = h11.EndOfMessage()
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
# What a read from the server can give: a head, a piece of the body, or END.
ServerEvent = ResponseHead | bytes | bytearray | Signal


class ExchangeFailed(Exception):
    """An exchange ended badly; ``kind`` says how, for the failure table."""

    def __init__(self, kind: Failure, cause: str = "", status_hint: int | None = None) -> None:
        super().__init__(cause or kind.value)
        self.kind = kind
        self.cause = cause or kind.value
        self.status_hint = status_hint


class ByteStream(Protocol):
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...


class ClientSide(Protocol):
    """What a relay needs of the client connection it serves."""

    h11: h11.Connection
    keep_alive: bool  # the request allows the connection to go on (h11's keep-alive rule)

    async def next_body_event(self) -> object: ...

    async def send_client(self, data: bytes | bytearray) -> None: ...

    def wait_for_server(self) -> None: ...

    def upload_done(self) -> None: ...

    def response_done(self, close: bool) -> None: ...


class Relay:
    """Moves one exchange between ``client`` and ``conn``; writes what happened into ``ex``."""

    __slots__ = ("client", "conn", "ex", "rewrite", "runtime", "server", "went_down")

    def __init__(
        self,
        client: ClientSide,
        conn: UpstreamConnection,
        ex: ExchangeState,
        server: ServerState,
        rewrite: ResponseRewrite,
        runtime: Runtime,
    ) -> None:
        self.client = client
        self.conn = conn
        self.ex = ex
        self.server = server
        self.rewrite = rewrite
        self.runtime = runtime
        self.went_down = False  # the server was marked DOWN while this waited for its head

    def cut(self) -> None:
        """Runtime.awaiting: the server went DOWN while this request waited for its response
        head. Closing the server connection wakes the waiting read, which then sees an end
        before any byte of a response."""
        self.went_down = True
        self.conn.stream.close()

    async def run(self, method: bytes, head: bytes, has_body: bool, chunked: bool) -> None:
        """Send the request (``head``, then the client's body, chunked again when ``chunked``)
        and relay the response; ExchangeFailed when either side fails."""
        conn = self.conn
        conn.reader = ResponseReader(
            method, max_head=MAX_SERVER_HEAD, upgrade=self.ex.upgrade_requested
        )
        conn.chunked = chunked
        data = head
        body_pending = has_body and self.client.h11.their_state is h11.SEND_BODY
        if body_pending:
            # What of the body came with the head goes in the same write; a body that came
            # whole needs no pump task at all.
            body, body_pending = self._buffered_body()
            data += body
        elif has_body and chunked:
            data += LAST_CHUNK  # h11 had the whole body with the head: only its end is left
        conn.request_done = not body_pending
        try:
            await conn.stream.send_all(data)
        except _GONE as error:
            raise ExchangeFailed(Failure.SERVER_CLOSED, f"send failed: {error}") from error
        if not body_pending:
            await self._relay_response()
            return
        await self._with_upload()

    async def _with_upload(self) -> None:
        """The rest of the body goes up while the response comes down."""
        ex = self.ex
        ex.body_done = False
        # Failures are carried out of the nursery by hand: trio would wrap them in groups.
        failures: list[ExchangeFailed] = []
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                try:
                    await self._pump_body()
                except ExchangeFailed as error:
                    failures.append(error)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            try:
                await self._relay_response()
            except ExchangeFailed as error:
                failures.append(error)
            if not ex.body_done:
                # The server answered (or failed) before the whole body arrived: an early error,
                # or a final status to Expect: 100-continue. The rest must not reach that
                # connection, and the client's unread body makes its connection unusable too.
                nursery.cancel_scope.cancel()
                ex.server_reusable = False
                ex.client_keepalive = False
        if failures:
            ex.server_reusable = False
            raise failures[0]

    def _buffered_body(self) -> tuple[bytes, bool]:
        """The request body h11 has buffered, framed for the server, and whether more is to
        come. No I/O: what is not here yet is left to the pump."""
        client, chunked = self.client.h11, self.conn.chunked
        parts: list[bytes | bytearray] = []
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as error:
                raise ExchangeFailed(
                    Failure.BAD_BODY, str(error), error.error_status_hint
                ) from error
            if event is h11.NEED_DATA:
                return b"".join(parts), True
            if isinstance(event, h11.Data):
                self.ex.body_started = True
                parts.append(chunk(event.data) if chunked else event.data)
            elif isinstance(event, h11.EndOfMessage):
                if chunked:
                    parts.append(LAST_CHUNK)
                return b"".join(parts), False
            else:
                raise ExchangeFailed(Failure.CLIENT_GONE, "closed in the request body")

    async def _pump_body(self) -> None:
        """Client request body → server, with back-pressure (one read, one write)."""
        conn, ex = self.conn, self.ex
        chunked = conn.chunked
        while True:
            event = await self.client.next_body_event()
            payload: bytes | bytearray
            if isinstance(event, h11.Data):
                ex.body_started = True
                payload = chunk(event.data) if chunked else event.data
            elif isinstance(event, h11.EndOfMessage):
                payload = LAST_CHUNK if chunked else b""
            else:
                raise ExchangeFailed(Failure.CLIENT_GONE, "closed in the request body")
            try:
                if payload:
                    await conn.stream.send_all(payload)
            except _GONE as error:
                raise ExchangeFailed(
                    Failure.UPLOAD_FAILED, "server closed during upload"
                ) from error
            if isinstance(event, h11.EndOfMessage):
                conn.request_done = True
                ex.body_done = True
                self.client.upload_done()
                return

    async def _server_event(
        self, out: list[bytes | bytearray], *, parse: bool = True
    ) -> ServerEvent:
        """The next event from the server. Client-bound bytes in ``out`` are written first
        whenever a read must wait, so what is ready goes out in one write (docs/architecture.md,
        "Speed").

        ``parse=False`` when h11 has just said NEED_DATA.
        """
        conn = self.conn
        reader = conn.reader
        assert reader is not None
        # Nothing received yet: the reader could only say NEED_DATA (a pooled connection never
        # holds bytes from before, see UpstreamPool.release).
        parse = parse and conn.response_bytes > 0
        while True:
            if parse:
                event = self._parse_server()
                if event is not NEED_DATA:
                    return event
            if out:
                await self._flush(out)
            self.client.wait_for_server()
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except _GONE:
                data = b""
            conn.response_bytes += len(data)
            reader.receive_data(data)
            parse = True

    def _parse_server(self) -> ServerEvent | Signal:
        reader = self.conn.reader
        assert reader is not None
        try:
            return reader.next_event()
        except Truncated as error:
            raise ExchangeFailed(Failure.SERVER_ABORTED, str(error)) from error
        except BadResponse as error:
            raise ExchangeFailed(Failure.BAD_RESPONSE, f"invalid response: {error}") from error

    async def _flush(self, out: list[bytes | bytearray]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        await self.client.send_client(data)

    async def _relay_response(self) -> None:
        """Server response → client; each read pushes the connection's deadline on."""
        out: list[bytes | bytearray] = []
        awaiting = self.runtime.awaiting
        waiting = awaiting.get(self.server)
        if waiting is None:
            waiting = awaiting[self.server] = set()
        waiting.add(self)  # until the response head arrives
        try:
            response = await self._response_head(out)
        except ExchangeFailed as failure:
            if self.went_down:
                raise ExchangeFailed(Failure.SERVER_DOWN) from failure
            if failure.kind is Failure.BAD_RESPONSE and not self.conn.response_bytes:
                # h11 calls an end before any byte a protocol error; it is a plain close.
                raise ExchangeFailed(Failure.SERVER_CLOSED, failure.cause) from failure
            if failure.kind is Failure.SERVER_CLOSED and self.conn.response_bytes:
                # Some bytes came (an interim response), then the end: not safe to resend.
                cause = "closed after an interim response"
                raise ExchangeFailed(Failure.BAD_RESPONSE, cause) from failure
            raise
        finally:
            waiting.discard(self)
        if response is not None:
            await self._relay_body(response, out)

    async def _response_head(self, out: list[bytes | bytearray]) -> ResponseHead | None:
        """Interim responses are passed on; the final head is returned (None after a 101)."""
        ex, client = self.ex, self.client.h11
        while True:
            event = await self._server_event(out)
            if not isinstance(event, ResponseHead):  # the reader gives a head first, or fails
                raise ExchangeFailed(Failure.BAD_RESPONSE, "no response head")
            if event.status < 200:
                if event.status == 101:
                    await self._switch(event, out)
                    return None
                info = h11.InformationalResponse(
                    status_code=event.status,
                    reason=event.reason,
                    headers=forward_response_headers(event.headers),
                )
                out.append(client.send(info) or b"")
                continue
            # A head that came whole in a large read is measured here: what the reader
            # consumed is the head.
            conn = self.conn
            assert conn.reader is not None
            if conn.response_bytes - conn.reader.buffered > MAX_SERVER_HEAD:
                raise ExchangeFailed(Failure.BAD_RESPONSE, "response head too large")
            now = trio.current_time()
            ex.response_time = now - ex.request.head_done - (ex.connect_time or 0.0)
            if ambiguous_framing(event.headers):
                raise ExchangeFailed(
                    Failure.BAD_RESPONSE, "both Transfer-Encoding and Content-Length"
                )
            return event

    async def _switch(self, event: ResponseHead, out: list[bytes | bytearray]) -> None:
        ex = self.ex
        if not ex.upgrade_requested:
            raise ExchangeFailed(Failure.BAD_RESPONSE, "101 without an upgrade request")
        switch = h11.InformationalResponse(
            status_code=101,
            reason=event.reason,
            headers=switching_protocols_headers(event.headers),
        )
        out.append(self.client.h11.send(switch) or b"")
        await self._flush(out)
        ex.status = 101
        ex.response_started = True
        ex.upgraded = True
        ex.server_reusable = False

    async def _relay_body(self, event: ResponseHead, out: list[bytes | bytearray]) -> None:
        ex, server = self.ex, self.server
        ex.status = event.status
        server.counters.record_response(event.status)
        semantic, rest = client_response_headers(event.headers, self.rewrite)
        if not ex.body_done:
            # An answer before the whole request body (an early error, a final status to
            # Expect: 100-continue): the rest of the body will not be read, so this client
            # connection ends after the response, and the client is told so.
            semantic.append((b"connection", b"close"))
        ex.response_started = True
        request = ex.request
        reply = reply_head(
            event.status,
            event.reason,
            semantic,
            rest,
            method=request.method,
            version=request.http_version,
            keep_alive=self.client.keep_alive,
        )
        out.append(reply.head)
        body = reply.body
        while True:
            # A small body is buffered already: no read, no coroutine to await.
            piece = self._parse_server()
            if piece is NEED_DATA:
                piece = await self._server_event(out, parse=False)
            if piece is END:
                if body is Body.CHUNKED:
                    out.append(LAST_CHUNK)
                await self._flush(out)
                server.counters.bytes_out += ex.bytes_out
                reader = self.conn.reader
                if reader is None or not reader.reusable():
                    ex.server_reusable = False
                self.client.response_done(reply.close)
                return
            if not isinstance(piece, bytes | bytearray):
                raise ExchangeFailed(Failure.BAD_RESPONSE, "a second response head")
            ex.bytes_out += len(piece)
            if body is Body.AS_IS:
                out.append(piece)  # as it came: no copy of the body into a new buffer
            elif body is Body.CHUNKED:
                out.append(chunk(piece))


async def tunnel(
    client: ByteStream,
    client_rest: bytes,
    server: ByteStream,
    server_rest: bytes,
    ex: ExchangeState,
    timeout: float,  # noqa: ASYNC109 - an idle limit re-armed on each read, not a deadline
) -> None:
    """After a 101: relay raw bytes both ways until one side closes or the tunnel has been idle
    for ``timeout`` (Pound WSTimeOut, HAProxy timeout tunnel)."""
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + timeout
        try:
            if server_rest:
                await client.send_all(server_rest)
            if client_rest:
                await server.send_all(client_rest)
        except _GONE:
            return

        async def pipe(source: ByteStream, sink: ByteStream, count: bool) -> None:
            try:
                while data := await source.receive_some(READ_SIZE):
                    scope.deadline = trio.current_time() + timeout
                    await sink.send_all(data)
                    if count:
                        ex.bytes_out += len(data)
            except _GONE:
                pass
            scope.cancel()  # one side is gone: the tunnel ends

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, server, False)
            nursery.start_soon(pipe, server, client, True)
