"""Runtime state of pools and real servers: health, admin state, weight, counters, and the
connection slots of servers with a ``maxconn`` with the queues of requests waiting for one.

The config objects are frozen; everything that changes while the proxy runs lives here, owned by
the trio thread. Nothing here awaits, so a read and the write that depends on it are atomic.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from config.model import (
    Address,
    AdminState,
    Balance,
    HealthCheck,
    Pool,
    RealServer,
    SourcePersistence,
)

from .algorithms import HashRing, LeastConnections, SmoothRoundRobin
from .persistence import SourceTable

RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
_CLASS_OF = ("other", *RESPONSE_CLASSES[:5], "other", "other", "other", "other")


def response_class(status: int) -> str:
    """The hrsp_* column a status counts in (a tuple lookup: this runs per response)."""
    return _CLASS_OF[status // 100] if 0 <= status < 1000 else "other"


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"


def _response_slots() -> dict[str, int]:
    return dict.fromkeys(RESPONSE_CLASSES, 0)


@dataclass(slots=True)
class RateCounter:
    """Events per second over the last second, like HAProxy's ``rate`` columns (freq_ctr):
    the count of the current one-second period plus the previous period's count weighted by
    the part of it still inside the last second. ``now`` is any monotonic clock in seconds;
    ``clock`` supplies it to callers that have none at hand (accept and request counting)."""

    clock: Callable[[], float] = time.monotonic
    period_start: float | None = None
    current: int = 0
    previous: int = 0
    max: int = 0  # the highest rate seen (rate_max)

    def hit(self, now: float | None = None) -> None:
        # Per request: the common case (same period) is one clock read, one compare, one add;
        # the highest rate is brought up to date only when a period ends, and by ``peak``.
        now = self.clock() if now is None else now
        start = self.period_start
        if start is None or now - start >= 1.0:
            self._roll(now)
        self.current += 1

    def _roll(self, now: float) -> None:
        start = self.period_start
        if start is None:
            self.period_start = now
            return
        # The period that ends reached at least its own count.
        self.max = max(self.max, self.current, self.rate(now))
        elapsed = now - start
        if elapsed >= 2.0:
            self.previous, self.current = 0, 0
            self.period_start = start + int(elapsed)
        else:
            self.previous, self.current = self.current, 0
            self.period_start = start + 1.0

    def peak(self, now: float | None = None) -> int:
        """The highest rate seen (rate_max), the current one included."""
        return max(self.max, self.rate(now))

    def rate(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        if self.period_start is None:
            return 0
        elapsed = now - self.period_start
        if elapsed >= 2.0:
            return 0
        current, previous = self.current, self.previous
        if elapsed >= 1.0:
            current, previous, elapsed = 0, current, elapsed - 1.0
        return current + int(previous * (1.0 - max(elapsed, 0.0)) + 0.5)


@dataclass
class ServerCounters:
    """Per-server statistics, in the spirit of HAProxy's stats CSV columns."""

    total: int = 0
    active: int = 0
    max_active: int = 0
    failures_connect: int = 0
    failures_response: int = 0
    retries: int = 0
    redispatches: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    responses: dict[str, int] = field(default_factory=_response_slots)
    check_status: str = ""  # L4OK L4TOUT L4CON L6OK L6TOUT L6RSP L7OK L7STS L7RSP L7TOUT
    check_desc: str = ""  # "connection refused", "timeout", "status 500 (expected 200)"
    check_duration: float | None = None
    # The clock of ``now`` in set_admin and the health transitions (the trio clock); 0.0 means
    # "not since the process started". Stats pages turn it into wall time.
    last_change: float = 0.0
    check_failures: int = 0  # failed checks while UP (chkfail)
    down_transitions: int = 0  # UP -> DOWN (chkdown)
    health_transitions: int = 0  # UP -> DOWN and DOWN -> UP
    downtime: float = 0.0  # seconds DOWN, up to the last time it came back UP
    down_since: float | None = None  # when it went DOWN, while it is DOWN
    session_rate: RateCounter = field(default_factory=RateCounter)

    def record_response(self, status: int) -> None:
        self.responses[response_class(status)] += 1

    def health_changed(self, health: Health, now: float) -> None:
        """Count one health transition that happened at ``now``."""
        self.last_change = now
        self.health_transitions += 1
        if health is Health.DOWN:
            self.down_transitions += 1
            self.down_since = now
        elif self.down_since is not None:
            self.downtime += max(now - self.down_since, 0.0)
            self.down_since = None

    def downtime_at(self, now: float) -> float:
        """Seconds DOWN in total, the current outage included."""
        current = max(now - self.down_since, 0.0) if self.down_since is not None else 0.0
        return self.downtime + current


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting for a connection slot (HAProxy's pendconn). ``wake`` is called once,
    when the waiter got a slot (``server`` is then set) or when its server can no longer take
    it (``server`` stays None: choose again)."""

    seq: int  # arrival order across the pool's queues: the oldest waiter is served first
    wake: Callable[[], None]
    exclude: frozenset[str] = frozenset()  # servers this request must not go to
    queue: WaitQueue | None = None  # where it waits; None once it left
    server: ServerState | None = None  # the slot it was given


@dataclass(slots=True)
class WaitQueue:
    """A FIFO of waiters; ``max`` is the longest it has been (HAProxy's qmax)."""

    waiters: deque[Waiter] = field(default_factory=deque)
    max: int = 0

    def __len__(self) -> int:
        return len(self.waiters)

    def push(self, waiter: Waiter) -> None:
        waiter.queue = self
        self.waiters.append(waiter)
        self.max = max(self.max, len(self.waiters))

    def remove(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)
        waiter.queue = None

    def first(self, server: ServerState) -> Waiter | None:
        """The oldest waiter that may go to ``server``."""
        for waiter in self.waiters:
            if server.label not in waiter.exclude:
                return waiter
        return None


def _send_back(queue: WaitQueue) -> None:
    """Wake every waiter of ``queue`` without a slot: each chooses again."""
    while queue.waiters:
        waiter = queue.waiters[0]
        queue.remove(waiter)
        waiter.wake()


class ServerState:
    """One real server (or a fallback) at run time."""

    def __init__(
        self, server: RealServer, pool_name: str, check: HealthCheck, *, fallback: bool = False
    ) -> None:
        self.server = server
        self.pool_name = pool_name
        self.check = check
        self.is_fallback = fallback
        # Servers start UP, as in HAProxy: a dead one is taken out by its checks (or at once by
        # refused connects from live traffic), a live one takes traffic from the first request.
        self.health = Health.UP
        self.admin = server.state
        self.weight = server.weight
        self.counters = ServerCounters()
        # Consecutive check results in the current direction, for rise/fall hysteresis.
        self.consecutive_ok = 0
        self.consecutive_fail = 0
        self.pool: PoolState | None = None  # set by PoolState; used for "N active left"
        # A drain with a deadline (runtime API): maint when the last client left or then.
        self.drain_deadline: float | None = None
        self.maxconn = server.maxconn  # 0: no limit
        # Slots in use: from the choice (before the connect) to the end of the exchange; what
        # maxconn limits (HAProxy's "served").
        self.served = 0
        self.queue = WaitQueue()  # requests bound to this server (persistence, a fallback)

    @property
    def label(self) -> str:
        return self.server.label

    @property
    def address(self) -> Address:
        return self.server.address

    def accepts_new(self) -> bool:
        """May be chosen for a client that is not bound to it."""
        return self.health is Health.UP and self.admin is AdminState.READY and self.weight > 0

    def accepts_sticky(self) -> bool:
        """May serve a client bound to it: drain and weight 0 still serve their holders."""
        return self.health is Health.UP and self.admin is not AdminState.MAINT

    def has_slot(self) -> bool:
        """A request may start here now: no maxconn, or a free slot nobody queues for."""
        return not self.maxconn or (self.served < self.maxconn and not self.queue.waiters)

    def status_text(self) -> str:
        """One word for stats pages: MAINT, DOWN, DRAIN or UP (HAProxy's precedence)."""
        if self.admin is AdminState.MAINT:
            return "MAINT"
        if self.health is Health.DOWN:
            return "DOWN"
        if self.admin is AdminState.DRAIN or self.weight == 0:
            return "DRAIN"
        return "UP"

    def set_admin(self, admin: AdminState, now: float) -> None:
        """``now`` is the clock of the health transitions (``trio.current_time()``)."""
        self.drain_deadline = None  # any new admin state ends a timed drain
        if admin is not self.admin:
            self.admin = admin
            self.counters.last_change = now

    def set_weight(self, weight: int) -> None:
        self.weight = max(weight, 0)

    def row(self) -> dict[str, object]:
        c = self.counters
        return {
            "pool": self.pool_name,
            "label": self.label,
            "address": str(self.address),
            "fallback": self.is_fallback,
            "status": self.status_text(),
            "health": self.health.value,
            "admin": self.admin.value,
            "weight": self.weight,
            "total": c.total,
            "active": c.active,
            "max_active": c.max_active,
            "failures_connect": c.failures_connect,
            "failures_response": c.failures_response,
            "retries": c.retries,
            "redispatches": c.redispatches,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "responses": dict(c.responses),
            "check_status": c.check_status,
            "check_desc": c.check_desc,
            "check_duration": c.check_duration,
            "last_change": c.last_change,
        }


class PoolState:
    """A pool at run time: its servers' states, the algorithm's cursors, the source table."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.active = 0  # requests in flight on this pool generation's servers
        self.max_active = 0  # the most at once (backend smax)
        check = pool.health_check
        self.servers = [ServerState(s, pool.name, check) for s in pool.real_servers]
        # In the listed order; each with its own check.
        self.fallbacks = [
            ServerState(f.server, pool.name, f.check, fallback=True) for f in pool.fallbacks()
        ]
        self.fallback = self.fallbacks[0] if self.fallbacks else None
        self.fallback_mode = pool.fallback_mode
        # Requests no real server had a slot for; any server that frees one takes the oldest.
        self.queue = WaitQueue()
        self._arrivals = itertools.count()
        # Any maxconn at all: only then does choose() look at slots.
        self.limited = any(s.maxconn for s in self.all_states())
        for state in self.all_states():
            state.pool = self
        self._by_label = {s.label: s for s in self.servers}
        self.round_robin = SmoothRoundRobin()
        self.fallback_round_robin = SmoothRoundRobin()  # fallback_mode: all
        self.least_conn = LeastConnections()
        self.ring = HashRing()
        persistence = pool.persistence
        self.source_table = (
            SourceTable(persistence.size, persistence.timeout)
            if isinstance(persistence, SourcePersistence)
            else None
        )
        # With worker processes each keeps its own source table: a new source is then placed
        # by the hash ring on its masked address, so every worker places it on the same server
        # (docs/operations.md, "Worker processes"). One process balances new sources normally.
        self.hash_new_sources = False

    @property
    def balance(self) -> Balance:
        return self.pool.balance

    def all_states(self) -> list[ServerState]:
        """Real servers in config order, then the fallbacks in theirs."""
        return self.servers + self.fallbacks

    def server(self, label: str) -> ServerState | None:
        """A real server by label (never the fallback: it has no cookie)."""
        return self._by_label.get(label)

    def usable_count(self) -> int:
        """Real servers that are up and not in maintenance ("N active left" in logs)."""
        return sum(
            1 for s in self.servers if s.health is Health.UP and s.admin is not AdminState.MAINT
        )

    def begin(self, state: ServerState) -> None:
        # Per request: comparisons rather than max() calls.
        c = state.counters
        c.total += 1
        active = c.active = c.active + 1
        if active > c.max_active:
            c.max_active = active
        c.session_rate.hit()
        active = self.active = self.active + 1
        if active > self.max_active:
            self.max_active = active

    def end(self, state: ServerState) -> None:
        """The exchange on ``state`` is over: its slot goes to the oldest waiter."""
        c = state.counters
        if c.active > 0:
            c.active -= 1
        if self.active > 0:
            self.active -= 1
        self.release_slot(state)

    # ---- connection slots and queues (docs/architecture.md, "Where decisions live") ---------

    def take_slot(self, state: ServerState) -> None:
        """The request chosen for ``state`` holds one of its slots until ``end`` (or
        ``release_slot`` when its connect failed)."""
        state.served += 1

    def release_slot(self, state: ServerState) -> None:
        if state.served > 0:
            state.served -= 1
        if state.queue.waiters or self.queue.waiters:
            self.hand_over(state)

    def enqueue(
        self, server: ServerState | None, wake: Callable[[], None], exclude: frozenset[str]
    ) -> Waiter:
        """Wait for a slot of ``server`` (a persistent client, a fallback) or, with None, of any
        real server of the pool that would take a new client."""
        waiter = Waiter(next(self._arrivals), wake, exclude)
        (self.queue if server is None else server.queue).push(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """The waiter gives up (queue timeout, client gone): out of its queue, and a slot it
        was given but will not use goes to the next one."""
        if waiter.queue is not None:
            waiter.queue.remove(waiter)
        elif waiter.server is not None:
            server, waiter.server = waiter.server, None
            self.release_slot(server)

    def hand_over(self, state: ServerState) -> None:
        """Give ``state``'s free slots to the oldest waiters that may use them: its own queue
        and the pool's, in arrival order (HAProxy's process_srv_queue)."""
        if not any(s.accepts_new() for s in self.servers):
            # No real server takes new clients any more: the pool's waiters choose again, and
            # find a fallback or a 503 at once (HAProxy's pendconn_redistribute).
            _send_back(self.queue)
        if not state.accepts_sticky():
            # It cannot take its own waiters any more: they choose again (a redispatch).
            _send_back(state.queue)
            return
        while not state.maxconn or state.served < state.maxconn:
            own = state.queue.waiters[0] if state.queue.waiters else None
            shared = None
            if not state.is_fallback and state.accepts_new():
                shared = self.queue.first(state)
            if own is None or (shared is not None and shared.seq < own.seq):
                own = shared
            if own is None:
                return
            assert own.queue is not None
            own.queue.remove(own)
            own.server = state
            state.served += 1
            own.wake()

    def statistics(self) -> list[dict[str, object]]:
        return [s.row() for s in self.all_states()]


class DrainEnd(enum.Enum):
    """Why a timed drain ended (it goes to maint)."""

    LAST_CLIENT_LEFT = "its last persistent client left"
    DEADLINE = "the drain deadline passed"


def drain_end(
    admin: AdminState, deadline: float | None, now: float, active: int, entries: int
) -> DrainEnd | None:
    """Whether a drain with a deadline is over: no connection on the server and no unexpired
    source-persistence entry naming it, or the deadline passed; whichever comes first."""
    if admin is not AdminState.DRAIN or deadline is None:
        return None
    if active == 0 and entries == 0:
        return DrainEnd.LAST_CLIENT_LEFT
    if now >= deadline:
        return DrainEnd.DEADLINE
    return None


def new_states(pools: Iterable[Pool]) -> dict[str, PoolState]:
    """Fresh runtime state for every pool, keyed by pool name."""
    return {pool.name: PoolState(pool) for pool in pools}


def _carry_server(old: ServerState, new: ServerState, notes: list[str]) -> None:
    # The operator's new config wins over a runtime change only where the config changed.
    if old.server.state is new.server.state:
        new.admin = old.admin
        new.drain_deadline = old.drain_deadline
    if old.server.weight == new.server.weight:
        new.weight = old.weight
    same_target = (
        old.server.address == new.server.address
        and old.server.check_address == new.server.check_address
    )
    if not same_target:
        notes.append(
            f"server {new.pool_name}/{new.label} now at {new.address}: health and counters reset"
        )
        return
    new.health = old.health
    new.consecutive_ok = old.consecutive_ok
    new.consecutive_fail = old.consecutive_fail
    # The same object: requests still running on the old generation end on it too.
    new.counters = old.counters


def carry_over(previous: dict[str, PoolState], current: dict[str, PoolState]) -> list[str]:
    """Move runtime state from the old generation to a freshly built one, on reload.

    Matched by pool name and server label (fallbacks with fallbacks). Health, check
    results and counters move when the server's address and check address are unchanged; admin
    state and weight move unless the operator changed them in the config; source-persistence
    entries move when both pools use source persistence. Returns one note per server whose
    state was reset, for the log.
    """
    notes: list[str] = []
    for name, new_pool in current.items():
        old_pool = previous.get(name)
        if old_pool is None:
            continue
        new_pool.max_active = old_pool.max_active
        for new_state in new_pool.servers:
            old_state = old_pool.server(new_state.label)
            if old_state is not None:
                _carry_server(old_state, new_state, notes)
        old_fallbacks = {s.label: s for s in old_pool.fallbacks}
        for new_state in new_pool.fallbacks:
            old_fallback = old_fallbacks.get(new_state.label)
            if old_fallback is not None:
                _carry_server(old_fallback, new_state, notes)
        if old_pool.source_table is not None and new_pool.source_table is not None:
            for key, label, seen in old_pool.source_table.items():
                if new_pool.server(label) is not None:
                    new_pool.source_table.record(key, label, seen)
    return notes
