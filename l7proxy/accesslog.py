"""Access log lines in HAProxy's ``option httplog`` shape, so existing parsers keep working.

    %ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq
    %{+Q}r

(no header captures, so ``%hr %hs`` are absent, as in HAProxy without ``capture``). One field is
added after the request: why this server was chosen (``balance``, ``cookie``, ``source``,
``hash``, ``redispatch``, ``fallback``), which no other proxy logs outright.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from balancing.state import PoolState, ServerState

from .exchange_state import ExchangeState
from .runtime import ClientInfo

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


_date_cache: tuple[int, str] = (-1, "")


def format_date(when: float) -> str:
    """HAProxy's accept date: 29/Nov/2026:22:12:41.123 (local time).

    The part up to the seconds changes once a second: it is kept, not formatted per line.
    """
    global _date_cache
    second = int(when)
    cached_second, prefix = _date_cache
    if second != cached_second:
        t = time.localtime(second)
        prefix = (
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _date_cache = (second, prefix)
    return f"{prefix}.{int((when - second) * 1000):03d}"


_UNSAFE = re.compile(rb'[^\x21-\x7e]|"')


def _safe(data: bytes) -> str:
    """Request text for a log line: printable ASCII only, so no log injection."""
    if _UNSAFE.search(data) is None:  # the usual case: nothing to escape
        return data.decode("ascii")
    return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x22 else f"%{b:02X}" for b in data)


def _ms(seconds: float | None) -> str:
    return "-1" if seconds is None else str(max(int(seconds * 1000), 0))


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per line
class Entry:
    """One request's log facts. Durations are seconds; None means the stage was not reached."""

    client: ClientInfo
    when: float  # wall-clock time the request head started
    frontend: str
    backend: str
    server: str
    head: float | None  # %TR: receiving the request head
    connect: float | None  # %Tc: connecting to the server (0 for a kept-alive connection)
    response: float | None  # %Tr: waiting for the response head
    total: float | None  # %Ta: the whole exchange
    status: int
    bytes_out: int
    termination: str  # 2 chars: first event, state at the end ("--" = normal)
    client_cookie: str  # N no cookie, I invalid, D server down, V valid, - not in use
    server_cookie: str  # N none, I inserted, D deleted (fallback), - not in use
    connections: int  # %ac
    frontend_connections: int  # %fc
    backend_active: int  # %bc
    server_active: int  # %sc
    retries: int  # %rc, "+" first when the request was redispatched
    redispatched: bool
    request: str  # the request line, already made safe
    reason: str
    queue: float = 0.0  # %Tw: waiting in a maxconn queue


def make_entry(
    ex: ExchangeState,
    *,
    client: ClientInfo,
    frontend: str,
    pool: PoolState | None,
    server: ServerState | None,
    connections: int,
    frontend_connections: int,
    now: float,
    wall_now: float,
) -> Entry:
    """The log facts of one finished exchange; ``now`` on the trio clock, ``wall_now`` epoch."""
    request = ex.request
    return Entry(
        client=client,
        when=wall_now - (now - request.head_started),
        frontend=frontend,
        backend=ex.pool if pool is not None else frontend,
        server="<NOSRV>" if ex.server == "-" else ex.server,
        head=request.head_done - request.head_started,
        connect=ex.connect_time,
        response=ex.response_time,
        total=now - request.head_started,
        status=ex.status,
        bytes_out=ex.bytes_out,
        termination=ex.termination,
        client_cookie=ex.client_cookie,
        server_cookie=ex.server_cookie,
        connections=connections,
        frontend_connections=frontend_connections,
        backend_active=sum(s.counters.active for s in pool.servers) if pool else 0,
        server_active=server.counters.active if server is not None else 0,
        retries=ex.retries,
        redispatched=ex.redispatched,
        request=request_line(request.method, request.target, request.http_version),
        reason=ex.reason,
        queue=ex.queue_time,
    )


# HAProxy's tune.http.logurilen: the request text in a log line stops at 1024 bytes.
MAX_LOGGED_REQUEST = 1024
TRUNCATED = "..."  # the mark of a cut request text


def request_line(method: bytes, target: bytes, http_version: bytes) -> str:
    """The request as logged: made safe, its target cut so the text stays within
    ``MAX_LOGGED_REQUEST`` bytes, the cut marked ``TRUNCATED`` (a 20 KB target makes no 20 KB
    line)."""
    if not method:
        return "<BADREQ>"
    room = MAX_LOGGED_REQUEST - len(method) - len(http_version) - len("  HTTP/")
    if len(target) > room:
        # The target is cut, the method and version stay: log parsers keep their fields.
        return f"{_safe(method)} {_safe(target[: room - len(TRUNCATED)])}{TRUNCATED} HTTP/" + (
            _safe(http_version)
        )
    return f"{_safe(method)} {_safe(target)} HTTP/{_safe(http_version)}"


def format_httplog(e: Entry) -> str:
    ip = f"[{e.client.ip}]" if ":" in e.client.ip else e.client.ip
    frontend = f"{e.frontend}~" if e.client.tls else e.frontend  # HAProxy marks TLS with '~'
    retries = f"+{e.retries}" if e.redispatched else str(e.retries)
    return (
        f"{ip}:{e.client.port} [{format_date(e.when)}] {frontend} {e.backend}/{e.server} "
        f"{_ms(e.head)}/{_ms(e.queue)}/{_ms(e.connect)}/{_ms(e.response)}/{_ms(e.total)} "
        f"{e.status or -1} {e.bytes_out} - - "
        f"{e.termination}{e.client_cookie}{e.server_cookie} "
        f"{e.connections}/{e.frontend_connections}/{e.backend_active}/{e.server_active}/{retries}"
        f' 0/0 "{e.request}" {e.reason}'
    )
