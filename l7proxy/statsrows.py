"""One snapshot of the counters, as HAProxy's stats rows: FRONTEND, servers, BACKEND. Pure.

Every stats output (the HTML page, the CSV, the JSON, Prometheus' ``/metrics``, the runtime
API's ``show stat``) renders the same ``Snapshot``, so they never disagree. The caller reads
the clocks once: ``now`` is the clock the counters were stamped with (``trio.current_time()``),
``wall`` the epoch seconds to show them in.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from balancing.state import RESPONSE_CLASSES, PoolState, ServerState
from config.model import CookiePersistence, ProxyConfig

from .runtime import FrontendCounters, Runtime

FRONTEND = "frontend"
BACKEND = "backend"
SERVER = "server"
TYPE_CODES = {FRONTEND: 0, BACKEND: 1, SERVER: 2}  # HAProxy's ``type`` column


@dataclass(frozen=True, slots=True)
class Clocks:
    now: float  # the counters' clock (trio.current_time())
    wall: float  # epoch seconds at the same instant
    started: float  # epoch seconds when the process started

    def epoch(self, stamp: float) -> float:
        """A counters' stamp in epoch seconds; nothing changed before the process started."""
        return max(self.wall - (self.now - stamp), self.started)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of HAProxy's stats CSV. Attribute names are the CSV column names; None is an
    empty cell (not applicable to this kind of row)."""

    kind: str  # FRONTEND, BACKEND or SERVER
    pxname: str
    svname: str
    iid: int
    sid: int
    status: str
    scur: int
    smax: int
    stot: int
    bin: int
    bout: int
    hrsp: dict[str, int]
    rate: int
    rate_max: int | None
    qcur: int | None = None  # requests waiting for a slot now (servers with maxconn, pools)
    qmax: int | None = None
    qlimit: int | None = None  # the longest a queue may grow (HAProxy maxqueue; none here)
    slim: int | None = None  # the session limit: a server's maxconn, a virtual server's
    dreq: int | None = None
    dresp: int | None = None
    ereq: int | None = None
    econ: int | None = None
    eresp: int | None = None
    wretr: int | None = None
    wredis: int | None = None
    weight: int | None = None
    act: int | None = None
    bck: int | None = None
    chkfail: int | None = None
    chkdown: int | None = None
    lastchg: int | None = None  # seconds since the last state change
    downtime: int | None = None
    lbtot: int | None = None
    check_status: str | None = None
    check_duration: int | None = None  # milliseconds
    req_rate: int | None = None
    req_rate_max: int | None = None
    req_tot: int | None = None
    last_chk: str | None = None
    check_desc: str | None = None
    check_rise: int | None = None
    check_fall: int | None = None
    addr: str | None = None
    cookie: str | None = None
    mode: str = "http"
    algo: str | None = None
    conn_rate: int | None = None
    conn_rate_max: int | None = None
    conn_tot: int | None = None
    # lbproxy's own, not in HAProxy's CSV
    last_change: float | None = None  # epoch seconds of the last state change
    admin: str | None = None  # ready, drain, maint (servers)
    health: str | None = None  # up, down (servers)
    fallback: bool = False
    health_transitions: int | None = None


@dataclass(frozen=True, slots=True)
class CertificateRow:
    """One certificate served on a TLS bind, with its expiry."""

    proxy: str  # the virtual server
    bind: str  # its address
    subject: str
    source: str  # the file it came from
    not_after: datetime.datetime
    seconds_left: float  # negative once expired

    @property
    def days_left(self) -> int:
        return int(self.seconds_left // 86400)

    @property
    def expired(self) -> bool:
        return self.seconds_left <= 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    rows: tuple[Row, ...]
    certificates: tuple[CertificateRow, ...] = ()
    version: str = ""
    pid: int = 0
    uptime: float = 0.0  # seconds
    started: float = 0.0  # epoch seconds


def frontend_row(label: str, iid: int, fc: FrontendCounters, status: str, limit: int = 0) -> Row:
    return Row(
        kind=FRONTEND,
        pxname=label,
        svname="FRONTEND",
        iid=iid,
        sid=0,
        status=status,
        scur=fc.current,
        smax=fc.max,
        stot=fc.total,
        bin=fc.bytes_in,
        bout=fc.bytes_out,
        hrsp=dict(fc.responses),
        rate=fc.session_rate.rate(),
        rate_max=fc.session_rate.peak(),
        dreq=fc.denied,
        dresp=0,
        ereq=fc.request_errors,
        req_rate=fc.request_rate.rate(),
        req_rate_max=fc.request_rate.peak(),
        req_tot=fc.requests,
        conn_rate=fc.session_rate.rate(),
        conn_rate_max=fc.session_rate.peak(),
        conn_tot=fc.total,
        slim=limit or None,
    )


def server_row(state: ServerState, iid: int, sid: int, clocks: Clocks) -> Row:
    c = state.counters
    check = state.check
    pool = state.pool
    persistence = pool.pool.persistence if pool is not None else None
    duration = None if c.check_duration is None else int(c.check_duration * 1000)
    return Row(
        kind=SERVER,
        pxname=state.pool_name,
        svname=state.label,
        iid=iid,
        sid=sid,
        status=state.status_text(),
        scur=c.active,
        smax=c.max_active,
        stot=c.total,
        bin=c.bytes_in,
        bout=c.bytes_out,
        hrsp=dict(c.responses),
        rate=c.session_rate.rate(),
        rate_max=c.session_rate.peak(),
        qcur=len(state.queue),
        qmax=state.queue.max,
        slim=state.maxconn or None,
        dresp=0,
        econ=c.failures_connect,
        eresp=c.failures_response,
        wretr=c.retries,
        wredis=c.redispatches,
        weight=state.weight,
        act=0 if state.is_fallback else 1,
        bck=1 if state.is_fallback else 0,
        chkfail=c.check_failures,
        chkdown=c.down_transitions,
        lastchg=int(clocks.wall - clocks.epoch(c.last_change)),
        downtime=int(c.downtime_at(clocks.now)),
        lbtot=c.total,
        check_status=(c.check_status or None) if check.enabled else None,
        check_duration=duration,
        req_tot=c.total,
        last_chk=c.check_desc or None,
        check_desc=c.check_desc or None,
        check_rise=check.rise if check.enabled else None,
        check_fall=check.fall if check.enabled else None,
        addr=str(state.address),
        cookie=state.label if isinstance(persistence, CookiePersistence) else None,
        last_change=clocks.epoch(c.last_change),
        admin=state.admin.value,
        health=state.health.value,
        fallback=state.is_fallback,
        health_transitions=c.health_transitions,
    )


def backend_row(pool: PoolState, iid: int, servers: list[Row], clocks: Clocks) -> Row:
    states = pool.all_states()
    usable = [s for s in states if s.accepts_sticky()]
    persistence = pool.pool.persistence
    last = max((r.last_change or clocks.started for r in servers), default=clocks.started)
    return Row(
        kind=BACKEND,
        pxname=pool.pool.name,
        svname="BACKEND",
        iid=iid,
        sid=0,
        status="UP" if usable else "DOWN",
        scur=sum([r.scur for r in servers]),
        smax=pool.max_active,
        stot=sum([r.stot for r in servers]),
        bin=sum([r.bin for r in servers]),
        bout=sum([r.bout for r in servers]),
        hrsp={k: sum([r.hrsp.get(k, 0) for r in servers]) for k in RESPONSE_CLASSES},
        rate=sum([r.rate for r in servers]),
        rate_max=None,
        # Requests waiting for any server (HAProxy: "queued without a server assigned").
        qcur=len(pool.queue),
        qmax=pool.queue.max,
        dreq=0,
        dresp=0,
        econ=sum([r.econ or 0 for r in servers]),
        eresp=sum([r.eresp or 0 for r in servers]),
        wretr=sum([r.wretr or 0 for r in servers]),
        wredis=sum([r.wredis or 0 for r in servers]),
        weight=sum([s.weight for s in pool.servers if s.accepts_new()]),
        act=sum(1 for s in pool.servers if s.accepts_new()),
        bck=sum(1 for s in states if s.is_fallback and s.accepts_sticky()),
        chkdown=sum([r.chkdown or 0 for r in servers]),
        lastchg=int(clocks.wall - last),
        lbtot=sum([r.lbtot or 0 for r in servers]),
        req_tot=sum([r.req_tot or 0 for r in servers]),
        cookie=persistence.name if isinstance(persistence, CookiePersistence) else None,
        algo=pool.balance.value,
        last_change=last,
    )


def build(runtime: Runtime, clocks: Clocks) -> tuple[Row, ...]:
    """FRONTEND, servers, BACKEND for every virtual server; then the named pools' servers and
    BACKEND. ``iid`` numbers proxy names in that order, ``sid`` servers within their pool."""
    config: ProxyConfig = runtime.config
    rows: list[Row] = []
    iids: dict[str, int] = {}

    def iid(name: str) -> int:
        return iids.setdefault(name, len(iids) + 1)

    def pool_rows(pool: PoolState) -> None:
        number = iid(pool.pool.name)
        servers = [server_row(s, number, sid, clocks) for sid, s in enumerate(pool.all_states(), 1)]
        rows.extend(servers)
        rows.append(backend_row(pool, number, servers, clocks))

    status = "STOP" if runtime.shutting_down else "OPEN"
    done: set[str] = set()
    for vs in config.virtual_servers:
        counters = runtime.frontends.get(vs.label) or FrontendCounters()
        rows.append(frontend_row(vs.label, iid(vs.label), counters, status, vs.max_connections))
        pool = runtime.pools.get(vs.pool.name)
        if pool is not None and pool.pool.name not in done:
            done.add(pool.pool.name)
            pool_rows(pool)
    for name, pool in runtime.pools.items():
        if name not in done:
            done.add(name)
            pool_rows(pool)
    return tuple(rows)
