"""Active health checks: one trio task per checked server, TCP connect or HTTP request; over TLS
for servers reached over TLS (a TCP check is then the TLS handshake). [io]

The only I/O in ``balancing``. Each task probes its server every ``interval`` seconds and feeds
the result to the pure ``health.apply_check``; transitions are logged at WARNING with their cause.
Start times are spread evenly over the interval so checks do not pulse together (HAProxy
``spread-checks``); the pace quickens while a server is in transition
(``health.next_check_delay``). Servers in maintenance are not probed, as in HAProxy.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

import h11
import trio

from config.model import Address, AdminState, HealthCheck, HttpCheck, ProxyVersion, RealServer

from .health import (
    L4CON,
    L4OK,
    L4TOUT,
    L6OK,
    L6RSP,
    L6TOUT,
    L7OK,
    L7RSP,
    L7STS,
    L7TOUT,
    CheckResult,
    apply_check,
    describe_tls_error,
    next_check_delay,
)
from .state import PoolState, ServerState

# A content check looks at most this far into the body: HAProxy matches `http-check expect
# string` within one buffer (tune.bufsize, 16 KiB by default).
CHECK_BODY_LIMIT = 16 * 1024
# The response head may not exceed this either (h11's own default and HAProxy's buffer size).
CHECK_HEAD_LIMIT = 16 * 1024
# Bytes asked of the socket per read; a check reads little, the head usually in one go.
RECV_SIZE = 4096
USER_AGENT = "lbproxy-health-check"
# A cause quoted from a server's bytes (h11's error text) is cut here to keep log lines short.
MAX_DESC_CHARS = 200
# A check is the balancer's own connection: to a server that reads the PROXY protocol it says
# so (v1 UNKNOWN, v2 LOCAL), as HAProxy does; the same bytes as l7proxy/proxy_protocol.encode.
CHECK_PROXY_HEADER = {
    ProxyVersion.V1: b"PROXY UNKNOWN\r\n",
    ProxyVersion.V2: b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
}

_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection reset",
}


def describe_os_error(exc: OSError) -> str:
    """A short lower-case cause for logs and stats: "connection refused", "no route to host"."""
    if isinstance(exc, socket.gaierror):
        return "cannot resolve address"
    if exc.errno is not None:
        return _CAUSES.get(exc.errno) or os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class TlsTarget(Protocol):
    """How to reach a server over TLS (``tls.client_context.TlsTarget``; balancing does not
    import tls)."""

    @property
    def context(self) -> ssl.SSLContext: ...

    @property
    def server_name(self) -> str: ...


# The TLS target of a server reached over TLS (``UpstreamPool.tls_target``), None for plain.
# The name comes from the HTTP check's Host for servers with ``sni: host``.
TlsFor = Callable[[RealServer, bytes], TlsTarget | None]


class _Progress:
    """How far a probe got, so a timeout can be told apart: connect (L4), TLS handshake (L6) or
    response (L7)."""

    connected = False
    tls_pending = False


async def _connect(address: Address) -> trio.SocketStream:
    """Connect to ``address``; raise OSError with the errno of the last attempt."""
    infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    last: OSError = OSError(errno.EHOSTUNREACH, "no address")
    for family, type_, proto, _, sockaddr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    raise last


def _fail(status: str, desc: str) -> CheckResult:
    return CheckResult(ok=False, status=status, desc=desc[:MAX_DESC_CHARS], duration=None)


async def _http_exchange(
    stream: trio.abc.Stream, address: Address, http: HttpCheck, proxy: bytes = b""
) -> CheckResult:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=CHECK_HEAD_LIMIT)
    headers = [
        ("Host", http.host or str(address)),
        ("User-Agent", USER_AGENT),
        ("Connection", "close"),
    ]
    request = conn.send(h11.Request(method=http.method, target=http.path, headers=headers))
    end = conn.send(h11.EndOfMessage())
    await stream.send_all(proxy + (request or b"") + (end or b""))
    needle = http.body.encode() if http.body is not None else None
    body = bytearray()
    eof = False
    got_response = False
    status = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if eof and not got_response:
                return _fail(L7RSP, "connection closed without a response")
            if eof:
                return _fail(L7RSP, "connection closed in the response body")
            return _fail(L7RSP, f"invalid response: {exc}")
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(RECV_SIZE)
            eof = not chunk
            conn.receive_data(bytes(chunk))
            continue
        if isinstance(event, h11.Response):
            got_response = True
            status = event.status_code
            if not http.expects(status):
                return _fail(L7STS, f"status {status} (expected {http.expect_text()})")
            if needle is None:
                return CheckResult(True, L7OK, f"status {status}", None)
        elif isinstance(event, h11.Data):
            assert needle is not None
            body += event.data
            if needle in body:
                return CheckResult(True, L7OK, f"status {status}, body matched", None)
            if len(body) >= CHECK_BODY_LIMIT:
                return _fail(
                    L7RSP,
                    f"body does not contain {http.body!r} in its first {CHECK_BODY_LIMIT} bytes",
                )
        elif isinstance(event, h11.EndOfMessage):
            return _fail(L7RSP, f"body does not contain {http.body!r}")
        elif isinstance(event, h11.ConnectionClosed):
            return _fail(L7RSP, "connection closed without a response")
        # InformationalResponse (1xx): keep reading for the final response.


async def _probe(
    address: Address,
    http: HttpCheck | None,
    progress: _Progress,
    proxy: bytes = b"",
    tls: TlsTarget | None = None,
) -> CheckResult:
    try:
        plain = await _connect(address)
    except OSError as exc:
        return _fail(L4CON, describe_os_error(exc))
    progress.connected = True
    stream: trio.abc.Stream = plain
    if tls is not None:
        if proxy:  # the PROXY header goes before the handshake, in the clear
            try:
                await plain.send_all(proxy)
            except trio.BrokenResourceError as exc:
                await trio.aclose_forcefully(plain)
                cause = exc.__cause__
                desc = describe_os_error(cause) if isinstance(cause, OSError) else "connection lost"
                return _fail(L4CON, desc)
            proxy = b""
        # The same handshake a request's connection makes: a server that would fail it is DOWN.
        progress.tls_pending = True
        stream = trio.SSLStream(
            plain, tls.context, server_hostname=tls.server_name, https_compatible=True
        )
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(plain)
            return _fail(L6RSP, describe_tls_error(exc.__cause__))
        progress.tls_pending = False
    async with stream:
        if http is None:
            if tls is not None:
                return CheckResult(True, L6OK, "TLS handshake done", None)
            return CheckResult(True, L4OK, "connected", None)
        try:
            return await _http_exchange(stream, address, http, proxy)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            desc = describe_os_error(cause) if isinstance(cause, OSError) else "connection lost"
            return _fail(L7RSP, desc)


async def check_once(
    server: ServerState, check: HealthCheck, tls: TlsFor | None = None
) -> CheckResult:
    """Probe one server once under ``check.timeout``; never raises for network trouble. A
    server reached over TLS is checked over TLS (``tls`` gives its target)."""
    address = server.server.check_address or server.server.address
    # As HAProxy: no PROXY header when checks go to another address than the traffic.
    version = server.server.send_proxy
    proxy = b""
    if version is not None and server.server.check_address is None:
        proxy = CHECK_PROXY_HEADER[version]
    target = None
    if tls is not None and server.server.tls is not None:
        host = check.http.host if check.http is not None and check.http.host else ""
        target = tls(server.server, host.encode())
    progress = _Progress()
    started = trio.current_time()
    result: CheckResult | None = None
    with trio.move_on_after(check.timeout):
        result = await _probe(address, check.http, progress, proxy, target)
    if result is None:
        stage = L6TOUT if progress.tls_pending else L7TOUT if progress.connected else L4TOUT
        result = _fail(stage, "timeout")
    return CheckResult(result.ok, result.status, result.desc, trio.current_time() - started)


OnChange = Callable[[ServerState], None]


async def _check_loop(
    server: ServerState,
    check: HealthCheck,
    offset: float,
    log: logging.Logger,
    on_change: OnChange | None,
    first_done: Callable[[], None] | None = None,
    tls: TlsFor | None = None,
) -> None:
    await trio.sleep(offset)
    while True:
        started = trio.current_time()
        if server.admin is not AdminState.MAINT:
            try:
                result = await check_once(server, check, tls)
            except Exception:
                # A bug in the probe must not stop the other checks or the proxy; health stays.
                log.exception("health check of %s/%s crashed", server.pool_name, server.label)
            else:
                message = apply_check(server, result, check, trio.current_time())
                if message is not None:
                    log.warning(message)
                    if on_change is not None:
                        on_change(server)
        if first_done is not None:
            first_done()
            first_done = None
        # Measured from the start: a slow check does not push the schedule back.
        await trio.sleep_until(started + next_check_delay(server, check))


async def run_checks(
    states: dict[str, PoolState],
    *,
    log: logging.Logger,
    on_change: OnChange | None = None,
    on_first_round: Callable[[], None] | None = None,
    tls: TlsFor | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Check every server (and fallback) whose check is enabled, until cancelled.

    Owns no state of its own: results go into the ``ServerState`` objects the scheduler reads.
    ``on_change`` is called after each health transition (the proxy cuts short the requests
    still waiting on a server that went DOWN). ``tls`` gives the TLS target of servers reached
    over TLS (``UpstreamPool.tls_target``). Reports started once every check task is
    scheduled. ``on_first_round`` is called once, when every server has had its first check
    (servers in maintenance count as checked; with nothing to check, at once).
    """
    # Each server's own check: the pool's for its real servers, the fallback's for the fallback.
    targets = [
        (state, state.check)
        for pool in states.values()
        for state in pool.all_states()
        if state.check.enabled
    ]
    waiting = len(targets)

    def one_done() -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0 and on_first_round is not None:
            on_first_round()

    if not targets and on_first_round is not None:
        on_first_round()
    async with trio.open_nursery() as nursery:
        for index, (state, check) in enumerate(targets):
            offset = check.interval * index / len(targets)
            nursery.start_soon(_check_loop, state, check, offset, log, on_change, one_done, tls)
        task_status.started()
        await trio.sleep_forever()
