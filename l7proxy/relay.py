"""One attempt at one request on one real-server connection: the request out, the body
pumped, the response relayed back, or a tunnel after a 101.

I/O only, like connection.py: the headers come from exchange.py, and every way this can fail
leaves as ``ExchangeFailed`` with a ``Failure`` kind, which the client connection hands to the
failure table (errors.decide). The client's side is reached through ``ClientSide``.
"""

from __future__ import annotations

from typing import Protocol

import h11
import trio

from balancing.state import ServerState

from .errors import Failure
from .exchange import (
    Headers,
    ResponseRewrite,
    ambiguous_framing,
    client_response_headers,
    forward_response_headers,
    splice_head,
    switching_protocols_headers,
)
from .exchange_state import ExchangeState
from .runtime import Runtime
from .upstream import MAX_SERVER_HEAD, UpstreamConnection

READ_SIZE = 65536
# Events are immutable: one end-of-message without trailers serves every exchange.
END_OF_MESSAGE = h11.EndOfMessage()
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


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

    async def next_body_event(self) -> object: ...

    async def send_client(self, data: bytes) -> None: ...

    def wait_for_server(self) -> None: ...

    def upload_done(self) -> None: ...


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

    async def run(self, head: h11.Request, rest: Headers, has_body: bool) -> None:
        """Send the request and relay the response; ExchangeFailed when either side fails."""
        conn = self.conn
        data = splice_head(conn.h11.send(head) or b"", rest)
        body_pending = has_body and self.client.h11.their_state is h11.SEND_BODY
        if body_pending:
            # What of the body came with the head goes in the same write; a body that came
            # whole needs no pump task at all.
            body, body_pending = self._buffered_body()
            data += body
        else:
            data += conn.h11.send(END_OF_MESSAGE) or b""
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
        client, conn = self.client.h11, self.conn.h11
        parts: list[bytes] = []
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
                parts.extend(conn.send_with_data_passthrough(event) or ())
            elif isinstance(event, h11.EndOfMessage):
                parts.append(conn.send(END_OF_MESSAGE) or b"")
                return b"".join(parts), False
            else:
                raise ExchangeFailed(Failure.CLIENT_GONE, "closed in the request body")

    async def _pump_body(self) -> None:
        """Client request body → server, with back-pressure (one read, one write)."""
        conn, ex = self.conn, self.ex
        while True:
            event = await self.client.next_body_event()
            if isinstance(event, h11.Data):
                ex.body_started = True
                # The client's Data event goes on as it is: h11 frames it for the server.
                payload = b"".join(conn.h11.send_with_data_passthrough(event) or ())
            elif isinstance(event, h11.EndOfMessage):
                payload = conn.h11.send(END_OF_MESSAGE) or b""
            else:
                raise ExchangeFailed(Failure.CLIENT_GONE, "closed in the request body")
            try:
                await conn.stream.send_all(payload)
            except _GONE as error:
                raise ExchangeFailed(
                    Failure.UPLOAD_FAILED, "server closed during upload"
                ) from error
            if isinstance(event, h11.EndOfMessage):
                ex.body_done = True
                self.client.upload_done()
                return

    async def _server_event(self, out: list[bytes], *, parse: bool = True) -> h11.Event:
        """The next event from the server. Client-bound bytes in ``out`` are written first
        whenever a read must wait, so what is ready goes out in one write (docs/architecture.md,
        "Speed").

        ``parse=False`` when h11 has just said NEED_DATA.
        """
        conn = self.conn
        # Nothing received yet: h11 could only say NEED_DATA (a pooled connection never holds
        # bytes from before, see UpstreamPool.release).
        parse = parse and conn.response_bytes > 0
        while True:
            if parse:
                event = self._parse_server()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]  # PAUSED too: callers refuse it
            if out:
                await self._flush(out)
            self.client.wait_for_server()
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except _GONE:
                data = b""
            conn.response_bytes += len(data)
            conn.h11.receive_data(data)
            parse = True

    def _parse_server(self) -> object:
        try:
            return self.conn.h11.next_event()
        except h11.RemoteProtocolError as error:
            raise ExchangeFailed(Failure.BAD_RESPONSE, f"invalid response: {error}") from error

    async def _flush(self, out: list[bytes]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        await self.client.send_client(data)

    async def _relay_response(self) -> None:
        """Server response → client; each read pushes the connection's deadline on."""
        out: list[bytes] = []
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

    async def _response_head(self, out: list[bytes]) -> h11.Response | None:
        """Interim responses are passed on; the final head is returned (None after a 101)."""
        ex, client = self.ex, self.client.h11
        while True:
            event = await self._server_event(out)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    await self._switch(event, out)
                    return None
                info = h11.InformationalResponse(
                    status_code=event.status_code,
                    reason=event.reason,
                    headers=forward_response_headers(list(event.headers)),
                )
                out.append(client.send(info) or b"")
                continue
            if isinstance(event, h11.Response):
                # h11 bounds only a head that arrives in pieces; one that came whole in a
                # large read is measured here: what h11 consumed is the head.
                consumed = self.conn.response_bytes - len(self.conn.h11.trailing_data[0])
                if consumed > MAX_SERVER_HEAD:
                    raise ExchangeFailed(Failure.BAD_RESPONSE, "response head too large")
                now = trio.current_time()
                ex.response_time = now - ex.request.head_done - (ex.connect_time or 0.0)
                if ambiguous_framing(event.headers):
                    raise ExchangeFailed(
                        Failure.BAD_RESPONSE, "both Transfer-Encoding and Content-Length"
                    )
                return event
            raise ExchangeFailed(Failure.SERVER_CLOSED, "server closed before responding")

    async def _switch(self, event: h11.InformationalResponse, out: list[bytes]) -> None:
        ex = self.ex
        if not ex.upgrade_requested:
            raise ExchangeFailed(Failure.BAD_RESPONSE, "101 without an upgrade request")
        switch = h11.InformationalResponse(
            status_code=101,
            reason=event.reason,
            headers=switching_protocols_headers(list(event.headers)),
        )
        out.append(self.client.h11.send(switch) or b"")
        await self._flush(out)
        ex.status = 101
        ex.response_started = True
        ex.upgraded = True
        ex.server_reusable = False

    async def _relay_body(self, event: h11.Response, out: list[bytes]) -> None:
        ex, client, server = self.ex, self.client.h11, self.server
        ex.status = event.status_code
        server.counters.record_response(event.status_code)
        semantic, rest = client_response_headers(list(event.headers), self.rewrite)
        if not ex.body_done:
            # An answer before the whole request body (an early error, a final status to
            # Expect: 100-continue): the rest of the body will not be read, so this client
            # connection ends after the response, and the client is told so.
            semantic.append((b"connection", b"close"))
        ex.response_started = True
        response = h11.Response(
            status_code=event.status_code, reason=event.reason, headers=semantic
        )
        out.append(splice_head(client.send(response) or b"", rest))
        while True:
            # A small body is buffered already: no read, no coroutine to await.
            body_event: object = self._parse_server()
            if body_event is h11.NEED_DATA:
                body_event = await self._server_event(out, parse=False)
            if isinstance(body_event, h11.Data):
                ex.bytes_out += len(body_event.data)
                # Passed through as it is: no copy of the body into a new event or a new buffer.
                out.extend(client.send_with_data_passthrough(body_event) or ())
            elif isinstance(body_event, h11.EndOfMessage):
                end = client.send(END_OF_MESSAGE)
                if end:  # nothing at all for a Content-Length body
                    out.append(end)
                await self._flush(out)
                server.counters.bytes_out += ex.bytes_out
                if self.conn.h11.their_state is not h11.DONE:
                    ex.server_reusable = False
                return
            else:  # ConnectionClosed before the end of a framed body
                raise ExchangeFailed(Failure.SERVER_ABORTED, "server closed mid-response")


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
