"""One client connection: the request loop around h11's SERVER side, as an I/O shell.

It reads, awaits and writes; what to do is decided elsewhere (docs/architecture.md, "The life of
one request"): the checks and header rewriting in exchange.py, routing in routing.py, the server
in balancing/, what a failure means in errors.decide, the log line in accesslog.py. One attempt
on one real server is relay.py's. Failures of one connection stay in it (docs/architecture.md,
"Failures stay in their connection").
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

import h11
import trio

from balancing.persistence import read_cookie
from balancing.scheduler import Choice
from balancing.state import PoolState, ServerState
from config.model import CookiePersistence
from tls.clientcert import CLIENT_HEADER_NAMES

from . import accesslog
from .chunked import ChunkedBody, ChunkError
from .dispatch import Request, connect_server
from .errorpages import page
from .errors import CannedResponse, Failure, Outcome, decide, redirect_page
from .exchange import (
    IDEMPOTENT_METHODS,
    MAX_HEAD_BYTES,
    Headers,
    RequestScan,
    ResponseRewrite,
    check_head_bytes,
    check_request,
    forward_request_split,
    forwarded_tail,
    https_redirect_target,
    local_authority,
    response_rewrite,
    trusted_peer,
)
from .exchange_state import BAD_HEAD, ExchangeState, Phase, RequestFacts
from .header_rules import Edits, Values, applicable, apply_rules
from .matching import RequestView
from .relay import END_OF_MESSAGE, ExchangeFailed, Relay, tunnel
from .request_writer import request_head
from .routing import route
from .runtime import ClientInfo, Runtime, ServedBind
from .screening import Refusal, screen
from .upstream import UpstreamConnection

log = logging.getLogger("lbproxy.connection")

READ_SIZE = 65536
# A deadline moves later only when it would move by more than a hundredth of its timeout, and at
# most 300 ms (nginx's lazy timers, NGX_TIMER_LAZY_DELAY, do the same): a timeout may fire that
# much early, and most exchanges of a busy connection move no timer at all.
DEADLINE_SLACK_SHARE = 0.01
DEADLINE_SLACK_MAX = 0.3
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
# Lingering close after an error answer: how long, and how much is read and dropped at most
# (HAProxy lingers on by default; nginx's lingering_time 30 s is for uploads: ours is short).
LINGER_TIME = 1.0
LINGER_BYTES = 1 << 20


class ClientStream(Protocol):
    """The client's byte stream: SockStream and TlsSockStream, or a test's memory stream."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def send_eof(self) -> None: ...

    def abort(self) -> None: ...


class ClientConnection:
    def __init__(
        self,
        runtime: Runtime,
        served: ServedBind,
        stream: ClientStream,
        client: ClientInfo,
        tls_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.runtime = runtime
        self.served = served
        self.vs = served.vs
        self.timeouts = served.vs.timeouts
        self.stream = stream
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        # The same for every request of this connection: made once.
        self.client_ip = client.ip.encode("ascii")
        self.forward_tail = [*forwarded_tail(client, served.port), *tls_headers]
        self.keep_forwarded_for = trusted_peer(client.ip, served.vs.forwardfor_trusted)
        self.frontend = runtime.frontend(served.vs.label)
        self.default_host = local_authority(client)  # for a request without Host
        # The request policy, looked at only when configured (docs/architecture.md, "Speed").
        policy = self.policy = served.vs.policy
        self.screens = policy.screens
        self.rewrites_headers = bool(policy.request_headers or policy.response_headers)
        self.needs_view = bool(served.vs.rules or policy.screens or self.rewrites_headers)
        self.max_body = policy.max_body
        # One cancel scope for the connection's life (see run); ``deadline`` mirrors its deadline.
        self.scope = trio.CancelScope()
        self.deadline = math.inf
        self.phase = Phase.HEAD
        self.head_started = 0.0  # when the current request head began (trio clock)
        self.current: ExchangeState | None = None  # the exchange of the SERVER/UPLOAD phases
        self.server: ServerState | None = None  # the server it was last sent to
        self.stopping = False  # a shutdown, not a timeout, cancelled the scope
        self.received = 0  # bytes from the client; what came since the last log line counts
        self.logged_in = 0  # for the request that line is about
        self.chunks: ChunkedBody | None = None  # the chunked body being received
        self.linger = False  # an error answer closes the connection: let the client read it
        self.keep_alive = True  # the current request allows another after it (h11's rule)
        # A response relayed by response_writer, not h11: None when there was none (yet) in this
        # cycle, else whether the connection may go on after it.
        self.relayed: bool | None = None

    # ---- client I/O -------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except _GONE:
            data = b""
        self.received += len(data)
        if self.h11.their_state is h11.IDLE and data:
            check_head_bytes(data)
        elif self.chunks is not None:
            self._check_chunks(data)
        self.h11.receive_data(data)  # type: ignore[arg-type]  # bytearray is accepted too

    def _check_chunks(self, data: bytes | bytearray) -> None:
        """The request body's chunked framing, read strictly (chunked.py)."""
        assert self.chunks is not None
        try:
            self.chunks.feed(data)
        except ChunkError as error:
            raise h11.RemoteProtocolError(str(error), 400) from error
        if self.max_body is not None and self.chunks.declared > self.max_body:
            # limits.max_body: refused once the chunk sizes pass it, before h11 hands those
            # bytes on.
            self.runtime.frontend(self.vs.label).denied += 1
            raise ExchangeFailed(Failure.TOO_LARGE, "request body larger than max_body")
        if self.chunks.done:
            self.chunks = None

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
                continue
            return event  # type: ignore[return-value]

    async def next_body_event(self) -> object:
        """The next piece of the request body; the client's stall timer starts again."""
        self._set_deadline(Phase.UPLOAD, self.timeouts.client_idle)
        try:
            return await self._next_event()
        except h11.RemoteProtocolError as error:
            raise ExchangeFailed(Failure.BAD_BODY, str(error), error.error_status_hint) from error

    async def send_client(self, data: bytes | bytearray) -> None:
        try:
            await self.stream.send_all(data)
        except _GONE as error:
            raise ExchangeFailed(Failure.CLIENT_GONE, "client closed") from error

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            await self.stream.send_all(data)

    async def _answer(self, response: CannedResponse) -> None:
        """Answer with lbproxy's own response (an error page, a redirect)."""
        # IDLE too: h11 lets a server answer a request head it could not parse.
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.relayed is not None:
            return
        head = h11.Response(
            status_code=response.status, reason=response.reason, headers=response.headers
        )
        try:
            if self._answering_head():
                await self._send(head, END_OF_MESSAGE)
            else:
                await self._send(head, h11.Data(data=response.body), END_OF_MESSAGE)
        except (*_GONE, h11.LocalProtocolError):
            pass

    def _answering_head(self) -> bool:
        """The answer is to a HEAD request: h11 lets no body go with it."""
        ex = self.current
        return ex is not None and ex.request.method == b"HEAD"

    # ---- time -------------------------------------------------------------------------------

    async def run(self, accepted_at: float) -> None:
        """Serve requests until the client or a failure ends the connection.

        Timeouts share one cancel scope whose deadline each phase moves on: a scope per phase
        cost about a tenth of a proxied request. When the deadline fires, everything unwinds to
        here, and the phase it fired in says what the client gets.
        """
        self.deadline = self.scope.deadline = accepted_at + self.timeouts.header
        with self.scope:
            await self._serve_requests()
        if self.scope.cancelled_caught and not self.stopping:
            await self._timed_out()
        if self.linger:
            await self._linger()

    async def _linger(self) -> None:
        """After an error answer that closes the connection, let the client read it: stop
        sending, then read and drop what it still sends, for a moment (HAProxy's lingering
        close). Closing with unread bytes would make the kernel reset the connection and
        destroy the answer on its way (a client that sent an HTTP/2 preface, an early 413)."""
        with trio.move_on_after(LINGER_TIME):
            with contextlib.suppress(*_GONE):
                await self.stream.send_eof()  # TLS has no half-close: reading is enough
            drained = 0
            with contextlib.suppress(*_GONE):
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        return
                    drained += len(data)

    def _set_deadline(self, phase: Phase, timeout: float) -> None:
        """Enter ``phase``, which must end within ``timeout`` from now."""
        self.phase = phase
        deadline = trio.current_time() + timeout
        current = self.deadline
        if deadline < current or deadline - current > min(
            timeout * DEADLINE_SLACK_SHARE, DEADLINE_SLACK_MAX
        ):
            self.deadline = self.scope.deadline = deadline

    def pause_deadline(self) -> None:
        """For what keeps its own time (a connect, a tunnel)."""
        self.deadline = self.scope.deadline = math.inf

    def wait_for_server(self) -> None:
        """A read from the server begins: the server timeout runs, unless the client is still
        sending its body (its stall timer runs then: a slow client is not the server's fault)."""
        if self.phase is not Phase.UPLOAD:
            self._set_deadline(Phase.SERVER, self.timeouts.server)

    def response_done(self, close: bool) -> None:
        """The relay wrote a whole response itself (response_writer)."""
        self.relayed = not close

    def upload_done(self) -> None:
        self.phase = Phase.SERVER
        self._set_deadline(Phase.SERVER, self.timeouts.server)

    def close_if_idle(self) -> None:
        """Shutdown: a connection waiting for its next request closes now."""
        if self.phase is Phase.IDLE:
            self.stopping = True
            self.scope.cancel()

    def served_by(self) -> tuple[str, str] | None:
        """(pool, server) while a request is with a server (the runtime API's ``show sess``)."""
        ex = self.current
        if self.phase not in (Phase.SERVER, Phase.UPLOAD) or ex is None or ex.server == "-":
            return None
        return ex.pool, ex.server

    def shut(self) -> None:
        """``shutdown sessions``: close now, without an answer."""
        self.stopping = True
        self.scope.cancel()

    async def _timed_out(self) -> None:
        """The deadline fired in ``self.phase``; the scope is closed, so an answer can go out."""
        ex = self.current
        if ex is not None and self.phase in (Phase.SERVER, Phase.UPLOAD):
            failure = Failure.SERVER_TIMEOUT if self.phase is Phase.SERVER else Failure.BODY_TIMEOUT
            outcome = decide(failure, ex.facts())
            if outcome.server_fault and self.server is not None:
                self.server.counters.failures_response += 1
            await self._apply(outcome, ex)
            self._log(ex)
        elif self.h11.their_state is not h11.IDLE or self.h11.trailing_data[0]:
            ex = self._bad_head()
            await self._apply(decide(Failure.HEAD_TIMEOUT, ex.facts()), ex)
            self._log(ex)
        # else: the idle timeout, or nothing at all arrived: silent close

    # ---- the request loop -------------------------------------------------------------------

    async def _serve_requests(self) -> None:
        first = True
        while True:
            request = await self._read_head(first)
            if request is None:
                return
            keep = await self._serve(request)
            if not keep or self.runtime.shutting_down or not self._client_can_continue():
                return
            self._next_cycle()
            first = False

    def _next_cycle(self) -> None:
        if self.relayed is None:
            self.h11.start_next_cycle()
            return
        # h11 did not write the relayed response, so it cannot start the next cycle: a fresh
        # state machine (2 µs) takes over what the client sent after this request.
        self.relayed = None
        data, closed = self.h11.trailing_data
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if data:
            self.h11.receive_data(data)
        if closed:
            self.h11.receive_data(b"")

    async def _read_head(self, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should just close."""
        try:
            return await self._read_head_or_raise(first)
        except h11.RemoteProtocolError as error:
            ex = self._bad_head()
            failed = decide(Failure.BAD_REQUEST, ex.facts(status_hint=error.error_status_hint))
            await self._apply(failed, ex)
            self._log(ex)
            return None

    def _bad_head(self) -> ExchangeState:
        now = trio.current_time()
        return ExchangeState(RequestFacts(BAD_HEAD, b"-", b"1.1", self.head_started, now))

    async def _read_head_or_raise(self, first: bool) -> h11.Request | None:
        buffered, closed = self.h11.trailing_data
        if buffered or closed:  # else h11 could only say NEED_DATA
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                self.head_started = trio.current_time()
                return _request_or_none(event)  # pipelined: already buffered
        # The first request's head time counts from the accept, like HAProxy's %TR.
        if first:
            self.head_started = self.deadline - self.timeouts.header
        else:
            # Between requests: wait for the first byte for the idle timeout, then close
            # silently (HAProxy `timeout http-keep-alive`); the head budget starts with it.
            self._set_deadline(Phase.IDLE, self.timeouts.client_idle)
            idle = self.runtime.idle_clients
            idle.add(self)
            try:
                await self._receive()
            finally:
                idle.discard(self)
            self.head_started = trio.current_time()
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return _request_or_none(event)
            self._set_deadline(Phase.HEAD, self.timeouts.header)
        return _request_or_none(await self._next_event())

    async def _serve(self, request: h11.Request) -> bool:
        """Answer one request; True when the connection may carry another."""
        facts = RequestFacts(
            request.method,
            request.target,
            request.http_version,
            self.head_started,
            trio.current_time(),
            request.method in IDEMPOTENT_METHODS,
        )
        ex = self.current = ExchangeState(facts)
        self.server = None
        self.chunks = None
        self.relayed = None
        self._set_deadline(Phase.SERVER, self.timeouts.server)
        headers: Headers = list(request.headers)
        scan = RequestScan(headers)
        self.keep_alive = request.http_version == b"1.1" and b"close" not in scan.tokens
        try:
            problem = check_request(
                request.method, request.target, request.http_version, headers, scan
            )
            if problem is not None:
                refused = decide(Failure.BAD_REQUEST, ex.facts(status_hint=problem.status))
                return await self._apply(refused, ex)
            if not scan.has_body:
                # h11 has the EndOfMessage of a body-less request ready without any I/O.
                self.h11.next_event()
            elif scan.has_te:
                self.chunks = ChunkedBody()
                try:
                    self._check_chunks(self.h11.trailing_data[0])
                except h11.RemoteProtocolError as error:
                    raise ExchangeFailed(Failure.BAD_BODY, str(error), 400) from error
            return await self._proxy(request, headers, scan, ex)
        except ExchangeFailed as failure:  # the client, outside any server attempt
            return await self._apply(decide(failure.kind, ex.facts()), ex)
        except _GONE:
            return await self._apply(decide(Failure.CLIENT_GONE, ex.facts()), ex)
        except Exception:
            log.exception("internal error while serving %s %r", self.client.ip, request.target)
            return await self._apply(decide(Failure.INTERNAL, ex.facts()), ex)
        finally:
            if not self.scope.cancel_called or self.stopping:
                self._log(ex)  # a timeout is logged by _timed_out, once it is answered

    async def _apply(self, outcome: Outcome, ex: ExchangeState) -> bool:
        """Do what the failure table said; True when the connection may carry another."""
        ex.termination = outcome.termination
        if outcome.client_fault:
            self.frontend.request_errors += 1
        if outcome.abort:
            self.stream.abort()
        elif outcome.status is not None:
            ex.status = outcome.status
            self.linger = outcome.close
            await self._answer(page(outcome.status, self.policy.error_pages, close=outcome.close))
        return not outcome.close and self._client_can_continue()

    def _log(self, ex: ExchangeState) -> None:
        ex.bytes_in = self.received - self.logged_in
        self.logged_in = self.received
        frontend = self.frontend
        frontend.record(ex.status, ex.bytes_in, ex.bytes_out)
        server = self.server
        if server is not None:
            server.counters.bytes_in += ex.bytes_in
        sink = self.runtime.access_log
        if sink is None:
            return
        entry = accesslog.make_entry(
            ex,
            client=self.client,
            frontend=self.vs.label,
            pool=self.runtime.pools.get(ex.pool),
            server=server,
            connections=self.runtime.connections,
            frontend_connections=frontend.current,
            now=trio.current_time(),
            wall_now=time.time(),
        )
        sink.write(accesslog.format_httplog(entry))

    # ---- proxying ---------------------------------------------------------------------------

    async def _proxy(
        self, request: h11.Request, headers: Headers, scan: RequestScan, ex: ExchangeState
    ) -> bool:
        """Answer it ourselves (a redirect, a refusal), or route it and send it on."""
        redirect = self.vs.redirect_to_https
        if redirect is not None and not self.client.tls:
            status = redirect.status_for(request.method)
            return await self._redirect_to_https(scan.host or b"", request.target, status, ex)
        view = None
        if self.needs_view:
            view = RequestView(request.method, request.target, headers, self.client)
            if self.screens:
                refusal = screen(self.policy, view, scan.content_length)
                if refusal is not None:
                    return await self._refuse(refusal, ex)
        pool_name = route(self.vs, view)
        pool = self.runtime.pools.get(pool_name)
        if pool is None:  # a reload removed the pool this connection's rules still name
            return await self._apply(decide(Failure.NO_POOL, ex.facts()), ex)
        ex.pool = pool_name
        return await self._send_on(request, headers, scan, ex, pool, view)

    async def _send_on(
        self,
        request: h11.Request,
        headers: Headers,
        scan: RequestScan,
        ex: ExchangeState,
        pool: PoolState,
        view: RequestView | None,
    ) -> bool:
        """The request to ``pool``'s servers: attempts until one serves it or the failure table
        says to stop."""
        host = scan.host or b""
        cookie_label: str | None = None
        persistence = pool.pool.persistence
        if isinstance(persistence, CookiePersistence):
            cookie_label, headers = read_cookie(headers, persistence.name)
            known = cookie_label is not None and pool.server(cookie_label) is not None
            ex.note_cookie(cookie_label, known)
        semantic, rest = forward_request_split(
            headers,
            scan,
            client_ip=self.client_ip,
            forwardfor=self.vs.forwardfor,
            tail=self.forward_tail,
            drop=CLIENT_HEADER_NAMES,
            default_host=self.default_host,
            keep_forwarded_for=self.keep_forwarded_for,
        )
        ex.upgrade_requested = scan.upgrade is not None
        exclude: set[str] = set()
        timeouts, client = self.timeouts, self.client
        wanted = Request(
            cookie_label,
            client.ip,
            timeouts.connect,
            pool.pool.retries,
            client,
            timeouts.queue,
            host,
        )
        while True:
            choice, conn = await connect_server(self.runtime, pool, wanted, exclude, ex, self)
            ex.note_choice(choice, cookie_label)
            rewrite = response_rewrite(choice, persistence, self.vs, host, client.tls)
            sent = rest
            if self.rewrites_headers and view is not None:
                sent, rewrite = self._header_rules(view, choice, rest, rewrite)
            head = request_head(request.method, request.target, semantic, sent)
            outcome = await self._attempt(request, head, scan, conn, choice, pool, rewrite)
            if outcome is None:
                return ex.client_keepalive and self._client_can_continue()
            if not outcome.resend:
                return await self._apply(outcome, ex)
            if not conn.reused:
                exclude.add(choice.server.label)

    async def _attempt(
        self,
        request: h11.Request,
        head: bytes,
        scan: RequestScan,
        conn: UpstreamConnection,
        choice: Choice,
        pool: PoolState,
        rewrite: ResponseRewrite,
    ) -> Outcome | None:
        """One try on ``conn``: None when it was served, else what the failure table says."""
        server = self.server = choice.server
        ex = self.current
        assert ex is not None
        pool.begin(server)
        released = False
        try:
            relay = Relay(self, conn, ex, server, rewrite, self.runtime)
            await relay.run(request.method, head, scan.has_body, scan.has_te)
            if ex.upgraded:
                self.pause_deadline()  # the tunnel keeps its own time
                ex.client_keepalive = False
                client_rest = bytes(self.h11.trailing_data[0])
                assert conn.reader is not None
                server_rest = conn.reader.trailing_data
                timeout = self.timeouts.tunnel
                await tunnel(self.stream, client_rest, conn.stream, server_rest, ex, timeout)
            elif ex.server_reusable:
                self.runtime.upstream.release(conn)
                released = True
            return None
        except ExchangeFailed as failure:
            return self._failed(failure, server, ex, request, pool.pool.retries)
        finally:
            pool.end(server)
            if not released:
                conn.stream.close()

    def _failed(
        self,
        failure: ExchangeFailed,
        server: ServerState,
        ex: ExchangeState,
        request: h11.Request,
        retries: int,
    ) -> Outcome:
        facts = ex.facts(max_resends=retries, status_hint=failure.status_hint)
        outcome = decide(failure.kind, facts)
        if outcome.server_fault:
            server.counters.failures_response += 1
        if outcome.resend:
            ex.resends += 1
            ex.retries += 1
            server.counters.retries += 1
            log.info(
                "resending %s %r: %s (%s)",
                request.method.decode(),
                request.target,
                failure.cause,
                server.label,
            )
        return outcome

    def _header_rules(
        self, view: RequestView, choice: Choice, rest: Headers, rewrite: ResponseRewrite
    ) -> tuple[Headers, ResponseRewrite]:
        """``request_headers`` applied to what the server gets; ``response_headers`` handed to
        the response rewrite. Conditions are the request's, so both are decided here."""
        values = Values(view, choice.server.label)
        policy = self.policy
        if policy.request_headers:
            rest = apply_rules(rest, applicable(policy.request_headers, view), values)
        if policy.response_headers:
            edits = Edits(applicable(policy.response_headers, view), values)
            rewrite = rewrite._replace(header_rules=edits)
        return rest, rewrite

    async def _refuse(self, refusal: Refusal, ex: ExchangeState) -> bool:
        """lbproxy's own answer from the request policy (screening.screen)."""
        ex.status = refusal.status
        ex.termination = refusal.termination
        if refusal.denied:
            self.runtime.frontend(self.vs.label).denied += 1
        close = self.h11.their_state is not h11.DONE  # a body nobody will read
        if refusal.location is not None:
            response = redirect_page(refusal.location, refusal.status, close=close)
        else:
            response = page(refusal.status, self.policy.error_pages, close=close)
            if refusal.allow is not None:
                response.headers.append((b"allow", refusal.allow))
        await self._answer(response)
        return self._client_can_continue()

    async def _redirect_to_https(
        self, host: bytes, target: bytes, status: int, ex: ExchangeState
    ) -> bool:
        """``redirect_to_https``: same host and path on the TLS port."""
        authority = host or self.default_host
        location = https_redirect_target(authority, target, self.vs.https_port())
        ex.status = status
        ex.termination = "LR"
        await self._answer(redirect_page(location, status))
        return self._client_can_continue()

    def _client_can_continue(self) -> bool:
        state = self.h11
        if state.their_state is not h11.DONE:
            return False
        relayed = self.relayed
        if relayed is not None:
            return relayed
        return state.our_state is h11.DONE


def _request_or_none(event: object) -> h11.Request | None:
    if isinstance(event, h11.Request):
        return event
    return None  # ConnectionClosed or PAUSED after a close
