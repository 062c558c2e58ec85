"""One client connection: h11 SERVER side, the request loop, and the relay to a real server.

Decisions are made by pure code (routing, balancing, exchange, errors); this module only moves
bytes and keeps time. Failures of one connection stay in it (DESIGN.md principle 5).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11
import trio

from balancing.health import report_passive_failure
from balancing.persistence import clear_cookie_value, read_cookie, set_cookie_value
from balancing.scheduler import Choice, NoServerAvailable, choose
from balancing.state import Health, PoolState, ServerState
from config.model import Bind, CookiePersistence, ProxyConfig, VirtualService
from tls.clientcert import CLIENT_HEADER_NAMES

from . import accesslog
from .errors import canned, status_for_protocol_error
from .exchange import (
    IDEMPOTENT_METHODS,
    MAX_HEAD_BYTES,
    ClientInfo,
    Headers,
    RequestScan,
    add_private_cache_control,
    ambiguous_framing,
    check_request,
    forward_request_split,
    forward_response_headers,
    forward_response_split,
    forwarded_tail,
    header_value,
    https_redirect_target,
    rewrite_location,
    splice_head,
    switching_protocols_headers,
)
from .logsink import AccessLogSink
from .routing import route
from .upstream import ConnectError, UpstreamConnection, UpstreamPool

log = logging.getLogger("lbproxy.connection")

READ_SIZE = 65536
# HAProxy `retries 3` (CONN_RETRIES): how often an idempotent request may be sent again after a
# server closed before any response byte.
MAX_RESEND = 3
# How many servers one request may try to connect to before giving up with 503.
MAX_CONNECT_ATTEMPTS = 8
# Events are immutable: one end-of-message without trailers serves every exchange.
END_OF_MESSAGE = h11.EndOfMessage()
# A deadline moves later only when it would move by more than a hundredth of its timeout, and at
# most 300 ms (nginx's lazy timers, NGX_TIMER_LAZY_DELAY, do the same): a timeout may fire that
# much early, and most exchanges of a busy connection move no timer at all.
DEADLINE_SLACK_SHARE = 0.01
DEADLINE_SLACK_MAX = 0.3

# What the connection's one deadline guards when it fires; what a timeout means depends on it.
IDLE = "idle"  # between requests: close without a byte (HAProxy `timeout http-keep-alive`)
HEAD = "head"  # a request head: 408, or a silent close when nothing of it arrived
SERVER = "server"  # a request being served: 504, or truncation once the response has started


class ClientGone(Exception):
    """The client closed, reset, or sent something h11 refused mid-request."""

    def __init__(self, status: int | None = None) -> None:
        super().__init__(status)
        self.status = status  # what to answer if nothing was sent yet; None = just close


class ServerFailed(Exception):
    """The real server failed this exchange."""

    def __init__(self, status: int, cause: str, *, resendable: bool) -> None:
        super().__init__(cause)
        self.status = status
        self.cause = cause
        self.resendable = resendable  # nothing of a response arrived: safe to resend if idempotent


@dataclass
class Runtime:
    """What every connection shares. Owned by the trio thread."""

    config: ProxyConfig
    pools: dict[str, PoolState]
    upstream: UpstreamPool
    access_log: AccessLogSink | None = None
    shutting_down: bool = False
    idle_connections: set[ClientConnection] = field(default_factory=set)
    connections: int = 0  # client connections open now (HAProxy %ac)
    frontend_connections: dict[str, int] = field(default_factory=dict)  # per virtual server
    # Server connections waiting for a response head, per server: cut when it goes DOWN.
    waiting: dict[ServerState, dict[UpstreamConnection, Exchange]] = field(default_factory=dict)

    def server_changed(self, server: ServerState) -> None:
        """A health transition: when ``server`` went DOWN, the requests still waiting for its
        response head are cut short (idempotent ones are sent again elsewhere), instead of
        waiting for the server timeout (HAProxy ``on-marked-down shutdown-sessions``). Closing
        the server connection wakes the waiting read, which then sees an end before any byte.
        """
        if server.health is not Health.DOWN:
            return
        for conn, ex in list(self.waiting.pop(server, {}).items()):
            ex.server_went_down = True
            conn.stream.close()

    def begin_shutdown(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.shutting_down = True
        for conn in list(self.idle_connections):
            conn.close_if_idle()


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound address of a virtual server; ``port`` is the real one (a config may say 0)."""

    vs: VirtualService
    bind: Bind
    port: int


@dataclass(slots=True)
class Exchange:
    """What happened to one request: the facts the access log line is made of."""

    method: bytes = b"-"
    target: bytes = b"-"
    http_version: bytes = b"1.1"
    pool: str = "-"
    server: str = "-"
    reason: str = "-"
    status: int = 0
    bytes_out: int = 0
    response_started: bool = False
    request_body_done: bool = True
    request_body_started: bool = False
    server_reusable: bool = True
    client_keepalive: bool = True
    upgrade_requested: bool = False  # the request asked for a protocol lbproxy may tunnel
    upgraded: bool = False  # the server answered 101: the connection became a tunnel
    termination: str = "--"
    # For the access log (HAProxy httplog timers and flags); times are trio clock seconds.
    head_started: float = 0.0
    head_done: float = 0.0
    connect_time: float | None = None
    response_time: float | None = None
    client_cookie: str = "-"
    server_cookie: str = "-"
    retries: int = 0
    redispatched: bool = False
    server_went_down: bool = False  # marked DOWN while this request waited for its response


def check_head_bytes(data: bytes | bytearray) -> None:
    """Refuse obs-fold in a request head: h11 would unfold it silently (RELIABILITY.md §1)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    if b"\n " in head or b"\n\t" in head:
        raise h11.RemoteProtocolError("obsolete line folding in the request head", 400)


class ClientConnection:
    def __init__(
        self,
        runtime: Runtime,
        listener: Listener,
        stream: trio.abc.Stream,
        client: ClientInfo,
        tls_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.runtime = runtime
        self.tls_headers = tls_headers  # Pound's X-SSL-* facts of this TLS connection
        self.request_host = b""
        self.head_started = 0.0  # when the current request head began (trio clock)
        self.listener = listener
        self.vs = listener.vs
        self.stream = stream
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.timeouts = listener.vs.timeouts
        # The same for every request of this connection: made once.
        self.client_ip = client.ip.encode("ascii")
        self.forward_tail = [*forwarded_tail(client, listener.port), *tls_headers]
        # One cancel scope for the connection's life (see run); ``deadline`` mirrors its deadline.
        self.scope = trio.CancelScope()
        self.deadline = math.inf
        self.phase = HEAD
        self.current: Exchange | None = None  # the exchange of the SERVER phase
        self.stopping = False  # a shutdown, not a timeout, cancelled the scope

    # ---- client I/O -------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if self.h11.their_state is h11.IDLE and data:
            check_head_bytes(data)
        self.h11.receive_data(data)  # type: ignore[arg-type]  # bytearray is accepted too

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
                continue
            return event  # type: ignore[return-value]

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            await self.stream.send_all(data)

    async def _send_canned(self, status: int, *, close: bool = True) -> None:
        response = canned(status, close=close)
        # IDLE too: h11 lets a server answer a request head it could not parse.
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(
                h11.Response(
                    status_code=response.status, reason=response.reason, headers=response.headers
                ),
                h11.Data(data=response.body),
                END_OF_MESSAGE,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    # ---- the request loop -------------------------------------------------------------------

    async def run(self, accepted_at: float) -> None:
        """Serve requests until the client or a failure ends the connection.

        Timeouts share one cancel scope whose deadline each phase moves on: a scope per phase
        cost about a tenth of a proxied request. When the deadline fires, everything unwinds to
        here, and the phase it fired in says what the client gets.
        """
        self.deadline = accepted_at + self.timeouts.header
        self.scope = trio.CancelScope(deadline=self.deadline)
        with self.scope:
            await self._serve_requests()
        if self.scope.cancelled_caught and not self.stopping:
            await self._timed_out()

    def _set_deadline(self, phase: str, timeout: float) -> None:
        """Enter ``phase``, which must end within ``timeout`` from now."""
        self.phase = phase
        deadline = trio.current_time() + timeout
        current = self.deadline
        if deadline < current or deadline - current > min(
            timeout * DEADLINE_SLACK_SHARE, DEADLINE_SLACK_MAX
        ):
            self.deadline = self.scope.deadline = deadline

    def _no_deadline(self) -> None:
        """For what keeps its own time (a connect, a tunnel)."""
        self.deadline = self.scope.deadline = math.inf

    def close_if_idle(self) -> None:
        """Shutdown: a connection waiting for its next request closes now."""
        if self.phase is IDLE:
            self.stopping = True
            self.scope.cancel()

    async def _timed_out(self) -> None:
        """The deadline fired in ``self.phase``; the scope is closed, so an answer can go out."""
        if self.phase is SERVER:
            if self.current is not None and self.current.response_started:
                self._abort_client()  # a stall mid-body: the client must see truncation
            else:
                await self._send_canned(504)  # nothing when another answer was begun
        elif self.h11.their_state is not h11.IDLE or self._has_partial_head():
            await self._send_canned(408)
            self._log(self._bad_head(408, "cR"))
        # else: the idle timeout, or nothing at all arrived: silent close

    async def _serve_requests(self) -> None:
        first = True
        while True:
            request = await self._read_head(first)
            if request is None:
                return
            keep = await self._serve(request)
            if not keep or self.runtime.shutting_down:
                return
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()
            first = False

    async def _read_head(self, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should just close."""
        try:
            return await self._read_head_or_raise(first)
        except h11.RemoteProtocolError as error:
            status = status_for_protocol_error(error.error_status_hint)
            await self._send_canned(status)
            self._log(self._bad_head(status, "PR"))
            return None

    def _bad_head(self, status: int, termination: str) -> Exchange:
        return Exchange(
            method=b"",
            status=status,
            termination=termination,
            head_started=self.head_started,
            head_done=trio.current_time(),
        )

    async def _read_head_or_raise(self, first: bool) -> h11.Request | None:
        buffered, closed = self.h11.trailing_data
        if buffered or closed:  # else h11 could only say NEED_DATA
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                self.head_started = trio.current_time()
                return self._head_event(event)  # pipelined: already buffered
        # The first request's head time counts from the accept, like HAProxy's %TR.
        if first:
            self.head_started = self.deadline - self.timeouts.header
        else:
            # Between requests: wait for the first byte for the idle timeout, then close
            # silently (HAProxy `timeout http-keep-alive`); the head budget starts with it.
            self._set_deadline(IDLE, self.timeouts.client_idle)
            idle = self.runtime.idle_connections
            idle.add(self)
            try:
                await self._receive()
            finally:
                idle.discard(self)
            self.head_started = trio.current_time()
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return self._head_event(event)
            self._set_deadline(HEAD, self.timeouts.header)
        return self._head_event(await self._next_event())

    def _has_partial_head(self) -> bool:
        return bool(self.h11.trailing_data[0])

    @staticmethod
    def _head_event(event: object) -> h11.Request | None:
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed or PAUSED after a close

    async def _serve(self, request: h11.Request) -> bool:
        """Answer one request; True when the connection may carry another."""
        ex = Exchange(
            method=request.method,
            target=request.target,
            http_version=request.http_version,
            head_started=self.head_started,
            head_done=trio.current_time(),
        )
        self.current = ex
        self._set_deadline(SERVER, self.timeouts.server)
        headers: Headers = list(request.headers)
        scan = RequestScan(headers)
        try:
            problem = check_request(
                request.method, request.target, request.http_version, headers, scan
            )
            if problem is not None:
                ex.status = problem.status
                ex.termination = "PR"
                await self._send_canned(problem.status)
                return False
            if not scan.has_body:
                # h11 has the EndOfMessage of a body-less request ready without any I/O.
                self.h11.next_event()
            return await self._proxy(request, headers, scan, ex)
        except ClientGone as gone:
            ex.termination = "CD" if ex.termination == "--" else ex.termination
            if gone.status and not ex.response_started:
                ex.status = gone.status
                await self._send_canned(gone.status)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ex.termination = "CD"
            return False
        except Exception:
            log.exception("internal error while serving %s %r", self.client.ip, request.target)
            ex.termination = "PI"
            if not ex.response_started:
                ex.status = 500
                await self._send_canned(500)
            return False
        finally:
            self._log(ex)

    def _log(self, ex: Exchange) -> None:
        sink = self.runtime.access_log
        if sink is None:
            return
        now = trio.current_time()
        pool = self.runtime.pools.get(ex.pool)
        server = pool.server(ex.server) if pool is not None else None
        if server is None and pool is not None and pool.fallback and ex.server == "fallback":
            server = pool.fallback
        entry = accesslog.Entry(
            client=self.client,
            when=time.time() - (now - ex.head_started),
            frontend=self.vs.label,
            backend=ex.pool if pool is not None else self.vs.label,
            server="<NOSRV>" if ex.server == "-" else ex.server,
            head=ex.head_done - ex.head_started,
            connect=ex.connect_time,
            response=ex.response_time,
            total=now - ex.head_started,
            status=ex.status,
            bytes_out=ex.bytes_out,
            termination=ex.termination,
            client_cookie=ex.client_cookie,
            server_cookie=ex.server_cookie,
            connections=self.runtime.connections,
            frontend_connections=self.runtime.frontend_connections.get(self.vs.label, 0),
            backend_active=sum(s.counters.active for s in pool.servers) if pool else 0,
            server_active=server.counters.active if server is not None else 0,
            retries=ex.retries,
            redispatched=ex.redispatched,
            request=accesslog.request_line(ex.method, ex.target, ex.http_version),
            reason=ex.reason,
        )
        sink.write(accesslog.format_httplog(entry))

    # ---- proxying ---------------------------------------------------------------------------

    async def _proxy(
        self, request: h11.Request, headers: Headers, scan: RequestScan, ex: Exchange
    ) -> bool:
        self.request_host = scan.host or b""
        if self.vs.redirect_to_https is not None and not self.client.tls:
            return await self._redirect_to_https(request, ex)
        pool_name = route(self.vs, request.target, headers)
        pool = self.runtime.pools.get(pool_name)
        if pool is None:  # a reload removed the pool this connection's rules still name
            ex.status = 503
            ex.termination = "SC"
            await self._send_canned(503, close=False)
            return self._client_can_continue()
        ex.pool = pool_name
        persistence = pool.pool.persistence
        cookie_label: str | None = None
        if isinstance(persistence, CookiePersistence):
            cookie_label, headers = read_cookie(headers, persistence.name)
            if cookie_label is None:
                ex.client_cookie = "N"
            else:
                ex.client_cookie = "V" if pool.server(cookie_label) is not None else "I"
        out_headers = forward_request_split(
            headers,
            scan,
            client_ip=self.client_ip,
            forwardfor=self.vs.forwardfor,
            tail=self.forward_tail,
            drop=CLIENT_HEADER_NAMES,
        )
        has_body = scan.has_body
        ex.upgrade_requested = scan.upgrade is not None
        idempotent = request.method in IDEMPOTENT_METHODS
        exclude: set[str] = set()
        resends = 0
        while True:
            choice, conn = await self._connect(pool, cookie_label, exclude, ex)
            if choice is None or conn is None:
                ex.status = 503
                ex.termination = "SC" if exclude else "SQ"
                await self._send_canned(503, close=False)
                return self._client_can_continue()
            ex.server = choice.server.label
            ex.reason = choice.reason.value
            if ex.client_cookie == "V" and choice.server.label != cookie_label:
                ex.client_cookie = "D"  # its server could not take it: redispatched
                ex.redispatched = True
            if ex.client_cookie != "-":
                ex.server_cookie = (
                    "D" if choice.clear_cookie else "I" if choice.insert_cookie else "N"
                )
            pool.begin(choice.server)
            try:
                await self._exchange(request, out_headers, has_body, conn, choice, ex)
                if ex.upgraded:
                    self._no_deadline()  # the tunnel keeps its own time
                    await self._tunnel(conn, ex)
                    conn.stream.close()
                    return False
            except ServerFailed as failure:
                conn.stream.close()
                choice.server.counters.failures_response += 1
                can_resend = (
                    failure.resendable
                    and idempotent
                    and not ex.request_body_started
                    and resends < MAX_RESEND
                )
                if can_resend:
                    resends += 1
                    ex.retries = resends
                    choice.server.counters.retries += 1
                    if not conn.reused:
                        exclude.add(choice.server.label)
                    log.info(
                        "resending %s %r: %s (%s)",
                        request.method.decode(),
                        request.target,
                        failure.cause,
                        choice.server.label,
                    )
                    continue
                if not ex.response_started:
                    ex.status = failure.status
                    ex.termination = "SH" if failure.status == 502 else "sH"
                    await self._send_canned(failure.status)
                else:
                    self._abort_client()
                return False
            except BaseException:
                conn.stream.close()
                if self.scope.cancel_called and not self.stopping:
                    # The server timeout: _timed_out answers once the scope has unwound.
                    choice.server.counters.failures_response += 1
                    if ex.response_started:
                        ex.termination = "sD"
                    else:
                        ex.status = 504
                        ex.termination = "sH"
                raise
            finally:
                pool.end(choice.server)
            if ex.server_reusable:
                self.runtime.upstream.release(conn)
            else:
                conn.stream.close()
            return ex.client_keepalive and self._client_can_continue()

    async def _redirect_to_https(self, request: h11.Request, ex: Exchange) -> bool:
        tls_ports = [self.vs.https_port()]
        location = https_redirect_target(self.request_host, request.target, tls_ports[0])
        ex.status = 301
        ex.termination = "LR"
        body = b'<html><body>Moved to <a href="' + location + b'">HTTPS</a></body></html>\n'
        headers = [
            (b"location", location),
            (b"content-type", b"text/html"),
            (b"content-length", str(len(body)).encode()),
        ]
        await self._send(
            h11.Response(status_code=301, reason=b"Moved Permanently", headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        return self._client_can_continue()

    def _response_headers(self, headers: Headers, choice: Choice) -> tuple[Headers, Headers]:
        """What the client gets, split for h11: hop-by-hop gone, cookie, nocache, HSTS,
        Location rewritten (all of these are in the spliced rest)."""
        semantic, rest = forward_response_split(headers)
        if choice.insert_cookie or choice.clear_cookie:
            rest.extend(self._cookie_headers(choice))
        if choice.insert_cookie:
            rest = add_private_cache_control(rest)
        if self.vs.rewrite_location:
            address = choice.server.address
            for index, (name, value) in enumerate(rest):
                if name == b"location" or name == b"content-location":
                    rest[index] = (
                        name,
                        rewrite_location(
                            value,
                            server_host=address.host,
                            server_port=address.port,
                            request_host=self.request_host,
                            tls=self.client.tls,
                        ),
                    )
        hsts = self.vs.hsts
        if (
            self.client.tls
            and hsts is not None
            and not header_value(rest, b"strict-transport-security")
        ):
            rest.append((b"strict-transport-security", f"max-age={int(hsts)}".encode()))
        return semantic, rest

    def _client_can_continue(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def _abort_client(self) -> None:
        abort = getattr(self.stream, "abort", None)
        if abort is not None:
            abort()
        else:
            transport = getattr(self.stream, "transport_stream", None)
            if transport is not None and hasattr(transport, "abort"):
                transport.abort()

    async def _connect(
        self,
        pool: PoolState,
        cookie_label: str | None,
        exclude: set[str],
        ex: Exchange,
    ) -> tuple[Choice, UpstreamConnection] | tuple[None, None]:
        """Choose a server and connect; a refused connect moves on to the next server."""
        for _ in range(MAX_CONNECT_ATTEMPTS):
            try:
                choice = choose(
                    pool,
                    cookie_label=cookie_label,
                    client_ip=self.client.ip,
                    now=trio.current_time(),
                    exclude=frozenset(exclude),
                )
            except NoServerAvailable:
                break
            server = choice.server
            upstream = self.runtime.upstream
            conn = upstream.take_idle(server.address)
            if conn is not None:
                ex.connect_time = 0.0
                return choice, conn
            started = trio.current_time()
            # A connect keeps its own time, per attempt; the server timeout starts after it.
            self._no_deadline()
            try:
                conn = await upstream.connect(server.address, self.timeouts.connect)
                ex.connect_time = trio.current_time() - started
            except ConnectError as error:
                server.counters.failures_connect += 1
                message = report_passive_failure(server, trio.current_time(), error.cause)
                if message:
                    logging.getLogger("lbproxy.health").warning("%s", message)
                    self.runtime.server_changed(server)
                exclude.add(server.label)
                if server.is_fallback:
                    break
                continue
            finally:
                self._set_deadline(SERVER, self.timeouts.server)
            return choice, conn
        return None, None

    async def _exchange(
        self,
        request: h11.Request,
        out_headers: tuple[Headers, Headers],
        has_body: bool,
        conn: UpstreamConnection,
        choice: Choice,
        ex: Exchange,
    ) -> None:
        semantic, rest = out_headers  # split for h11 (see split_for_h11)
        head = h11.Request(method=request.method, target=request.target, headers=semantic)
        data = splice_head(conn.h11.send(head) or b"", rest)
        body_pending = has_body and self.h11.their_state is h11.SEND_BODY
        if body_pending:
            # What of the body came with the head goes in the same write; a body that came
            # whole needs no pump task at all.
            body, body_pending = self._buffered_body(conn, ex)
            data += body
        else:
            data += conn.h11.send(END_OF_MESSAGE) or b""
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise ServerFailed(502, f"send failed: {error}", resendable=True) from error
        if not body_pending:
            await self._relay_response(conn, choice, ex)
            return
        ex.request_body_done = False
        # Failures are carried out of the nursery by hand: trio would wrap them in groups.
        failures: list[ClientGone | ServerFailed] = []
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                try:
                    await self._pump_body(conn, ex)
                except (ClientGone, ServerFailed) as error:
                    failures.append(error)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            try:
                await self._relay_response(conn, choice, ex)
            except (ClientGone, ServerFailed) as error:
                failures.append(error)
            if not ex.request_body_done:
                # The server answered (or failed) before the whole body arrived: an early error,
                # or a final status to Expect: 100-continue. The rest must not reach that
                # connection, and the client's unread body makes its connection unusable too.
                nursery.cancel_scope.cancel()
                ex.server_reusable = False
                ex.client_keepalive = False
        if failures:
            ex.server_reusable = False
            raise failures[0]

    def _buffered_body(self, conn: UpstreamConnection, ex: Exchange) -> tuple[bytes, bool]:
        """The request body h11 has buffered, framed for the server, and whether more is to
        come. No I/O: what is not here yet is left to the pump."""
        parts: list[bytes] = []
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                raise ClientGone(status_for_protocol_error(error.error_status_hint)) from error
            if event is h11.NEED_DATA:
                return b"".join(parts), True
            if isinstance(event, h11.Data):
                ex.request_body_started = True
                parts.extend(conn.h11.send_with_data_passthrough(event) or ())
            elif isinstance(event, h11.EndOfMessage):
                parts.append(conn.h11.send(END_OF_MESSAGE) or b"")
                return b"".join(parts), False
            else:
                raise ClientGone(None)  # ConnectionClosed mid-body

    async def _pump_body(self, conn: UpstreamConnection, ex: Exchange) -> None:
        """Client request body → server, with back-pressure (one read, one write)."""
        with trio.CancelScope() as stall:
            while True:
                stall.deadline = trio.current_time() + self.timeouts.client_idle
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as error:
                    raise ClientGone(status_for_protocol_error(error.error_status_hint)) from error
                if isinstance(event, h11.Data):
                    ex.request_body_started = True
                    # The client's Data event goes on as it is: h11 frames it for the server.
                    payload = b"".join(conn.h11.send_with_data_passthrough(event) or ())
                elif isinstance(event, h11.EndOfMessage):
                    payload = conn.h11.send(END_OF_MESSAGE) or b""
                else:
                    raise ClientGone(None)  # ConnectionClosed mid-body
                try:
                    await conn.stream.send_all(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    raise ServerFailed(
                        502, "server closed during upload", resendable=False
                    ) from error
                if isinstance(event, h11.EndOfMessage):
                    ex.request_body_done = True
                    return
        raise ClientGone(408)  # the client stalled mid-body for client_idle

    async def _server_event(
        self, conn: UpstreamConnection, timeout: float, out: list[bytes], *, parse: bool = True
    ) -> h11.Event:
        """The next event from the server. Client-bound bytes in ``out`` are written first
        whenever a read must wait, so what is ready goes out in one write (PERFORMANCE.md).

        ``parse=False`` when h11 has just said NEED_DATA.
        """
        # Nothing received yet: h11 could only say NEED_DATA (a pooled connection never holds
        # bytes from before, see UpstreamPool.release).
        parse = parse and conn.response_bytes > 0
        while True:
            if parse:
                event = self._parse_server(conn)
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]  # PAUSED too: callers refuse it
            if out:
                await self._flush(out)
            self._set_deadline(SERVER, timeout)
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            conn.response_bytes += len(data)
            conn.h11.receive_data(data)
            parse = True

    @staticmethod
    def _parse_server(conn: UpstreamConnection) -> object:
        try:
            return conn.h11.next_event()
        except h11.RemoteProtocolError as error:
            raise ServerFailed(502, f"invalid response: {error}", resendable=False) from error

    async def _flush(self, out: list[bytes]) -> None:
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        await self.stream.send_all(data)

    async def _relay_response(self, conn: UpstreamConnection, choice: Choice, ex: Exchange) -> None:
        """Server response → client; each read pushes the connection's deadline on."""
        out: list[bytes] = []
        waiting = self.runtime.waiting.setdefault(choice.server, {})
        waiting[conn] = ex  # until the response head arrives (_relay_events removes it)
        try:
            await self._relay_events(conn, choice, ex, out)
        except ServerFailed as failure:
            if not ex.response_started:
                if ex.server_went_down:
                    # Nothing of a response arrived: as safe to resend as a close before one.
                    raise ServerFailed(
                        502, "server went DOWN before responding", resendable=True
                    ) from failure
                if failure.status == 502 and conn.response_bytes == 0:
                    # Closed before any response byte: the one case a resend may cure.
                    raise ServerFailed(502, failure.cause, resendable=True) from failure
                raise
            self._abort_client()
            ex.termination = "SD"
            raise ServerFailed(failure.status, failure.cause, resendable=False) from failure
        finally:
            waiting.pop(conn, None)

    async def _relay_events(
        self,
        conn: UpstreamConnection,
        choice: Choice,
        ex: Exchange,
        out: list[bytes],
    ) -> None:
        timeout = self.timeouts.server
        client = self.h11
        while True:
            event = await self._server_event(conn, timeout, out)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    if not ex.upgrade_requested:
                        raise ServerFailed(502, "101 without an upgrade request", resendable=False)
                    switch = h11.InformationalResponse(
                        status_code=101,
                        reason=event.reason,
                        headers=switching_protocols_headers(list(event.headers)),
                    )
                    out.append(client.send(switch) or b"")
                    await self._flush(out)
                    ex.status = 101
                    ex.response_started = True
                    ex.upgraded = True
                    ex.server_reusable = False
                    return
                info = h11.InformationalResponse(
                    status_code=event.status_code,
                    reason=event.reason,
                    headers=forward_response_headers(list(event.headers)),
                )
                out.append(client.send(info) or b"")
                continue
            if isinstance(event, h11.Response):
                ex.response_time = trio.current_time() - ex.head_done - (ex.connect_time or 0.0)
                if ambiguous_framing(event.headers):
                    raise ServerFailed(
                        502, "both Transfer-Encoding and Content-Length", resendable=False
                    )
                break
            raise ServerFailed(502, "server closed before responding", resendable=True)
        server = choice.server
        ex.status = event.status_code
        server.counters.record_response(event.status_code)
        semantic, rest = self._response_headers(list(event.headers), choice)
        ex.response_started = True
        self.runtime.waiting.get(server, {}).pop(conn, None)  # a DOWN no longer cuts it
        response = h11.Response(
            status_code=event.status_code, reason=event.reason, headers=semantic
        )
        out.append(splice_head(client.send(response) or b"", rest))
        while True:
            # A small body is buffered already: no read, no coroutine to await.
            body_event: object = self._parse_server(conn)
            if body_event is h11.NEED_DATA:
                body_event = await self._server_event(conn, timeout, out, parse=False)
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
                if conn.h11.their_state is not h11.DONE:
                    ex.server_reusable = False
                return
            else:  # ConnectionClosed before the end of a framed body
                raise ServerFailed(502, "server closed mid-response", resendable=False)

    async def _tunnel(self, conn: UpstreamConnection, ex: Exchange) -> None:
        """After a 101: relay raw bytes both ways until one side closes or the tunnel has been
        idle for ``timeouts.tunnel`` (Pound WSTimeOut, HAProxy timeout tunnel)."""
        client_rest = self.h11.trailing_data[0]
        server_rest = conn.h11.trailing_data[0]
        timeout = self.timeouts.tunnel
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + timeout
            try:
                if server_rest:
                    await self.stream.send_all(server_rest)
                if client_rest:
                    await conn.stream.send_all(client_rest)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

            async def pipe(source: trio.abc.Stream, sink: trio.abc.Stream, count: bool) -> None:
                try:
                    while data := await source.receive_some(READ_SIZE):
                        scope.deadline = trio.current_time() + timeout
                        await sink.send_all(data)
                        if count:
                            ex.bytes_out += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                scope.cancel()  # one side is gone: the tunnel ends

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, self.stream, conn.stream, False)
                nursery.start_soon(pipe, conn.stream, self.stream, True)

    def _cookie_headers(self, choice: Choice) -> list[tuple[bytes, bytes]]:
        pool = choice.server.pool
        persistence = pool.pool.persistence if pool is not None else None
        if not isinstance(persistence, CookiePersistence):
            return []
        if choice.clear_cookie:
            return [(b"set-cookie", clear_cookie_value(persistence, self.client.tls))]
        if choice.insert_cookie:
            value = set_cookie_value(persistence, choice.server.label, self.client.tls)
            return [(b"set-cookie", value)]
        return []
