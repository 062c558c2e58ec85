"""choose(): persistence, then the pool's algorithm, then the fallbacks, else NoServerAvailable;
MustWait when the server for the request has no free slot (``maxconn``).

Pure and synchronous: the connection code calls it once per attempt, passing the labels it has
already tried in ``exclude``. Because nothing here awaits, looking up the source table and
recording a new entry happen in one step, so two first requests from one client cannot land on
different servers.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from config.model import Balance, CookiePersistence, FallbackMode, SourcePersistence

from .algorithms import Candidate
from .persistence import source_key
from .state import PoolState, ServerState


class Reason(enum.Enum):
    """Why a server was chosen; logged with every request."""

    COOKIE = "cookie"
    SOURCE = "source"
    HASH = "hash"
    BALANCE = "balance"
    REDISPATCH = "redispatch"
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Choice:
    server: ServerState
    reason: Reason
    insert_cookie: bool  # response carries Set-Cookie with server.label
    clear_cookie: bool  # response expires the cookie (fallback responses, as HAProxy does)


class NoServerAvailable(Exception):
    """No real server and no fallback can take the request: answer 503."""


@dataclass(frozen=True, slots=True)
class Wait:
    """What a request waits for when its server is full: a slot of ``server`` (a persistent
    client waits for its own server, as in HAProxy), or with None, of any real server; and the
    choice it becomes once ``granted`` a slot."""

    server: ServerState | None
    reason: Reason
    insert_cookie: bool
    clear_cookie: bool
    source_key: str | None = None  # recorded in the source table when granted


class MustWait(Exception):
    """Every server the request may go to is at its maxconn: queue (``PoolState.enqueue``)."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait)
        self.wait = wait


def granted(pool: PoolState, wait: Wait, server: ServerState, now: float) -> Choice:
    """The choice of a request that waited and was given a slot of ``server``."""
    if wait.source_key is not None and pool.source_table is not None:
        pool.source_table.record(wait.source_key, server.label, now)
    return Choice(server, wait.reason, wait.insert_cookie, wait.clear_cookie)


def _sticky(pool: PoolState, held: ServerState, reason: Reason) -> Choice:
    if pool.limited and not held.has_slot():
        raise MustWait(Wait(held, reason, insert_cookie=False, clear_cookie=False))
    return Choice(held, reason, insert_cookie=False, clear_cookie=False)


def _hash_key(client_ip: str) -> str:
    # `balance source` hashes the whole address; IPv4-mapped IPv6 is the IPv4 client.
    try:
        addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _balance(
    pool: PoolState, candidates: list[ServerState], client_ip: str, source: str | None = None
) -> ServerState:
    """``source``: the source-persistence key of a new source, when it is placed by hash."""
    if pool.balance is Balance.SOURCE or source is not None:
        servers = [(s.label, s.weight) for s in pool.servers]
        key = source if source is not None else _hash_key(client_ip)
        label = pool.ring.pick(key, servers, frozenset(s.label for s in candidates))
    else:
        cands = [Candidate(s.label, s.weight, s.counters.active) for s in candidates]
        if pool.balance is Balance.LEASTCONN:
            label = pool.least_conn.pick(cands)
        else:
            label = pool.round_robin.pick(cands)
    chosen = pool.server(label)
    assert chosen is not None
    return chosen


def choose(
    pool: PoolState,
    *,
    cookie_label: str | None,
    client_ip: str,
    now: float,
    exclude: frozenset[str] = frozenset(),
) -> Choice:
    """Pick the server for one attempt of one request.

    ``cookie_label`` is what ``persistence.read_cookie`` found (None: no valid cookie);
    ``exclude`` holds the labels already tried for this request. Raises NoServerAvailable.
    """
    persistence = pool.pool.persistence
    cookie_mode = isinstance(persistence, CookiePersistence)
    redispatched_from: ServerState | None = None  # the sticky server we had to leave

    if cookie_mode and cookie_label is not None:
        held = pool.server(cookie_label)
        if held is not None:
            if held.label not in exclude and held.accepts_sticky():
                return _sticky(pool, held, Reason.COOKIE)
            redispatched_from = held
        # An unknown label is no cookie at all: normal balancing, and a new cookie.

    key: str | None = None
    if isinstance(persistence, SourcePersistence) and pool.source_table is not None:
        key = source_key(client_ip, persistence.mask4, persistence.mask6)
        label = pool.source_table.lookup(key, now)
        if label is not None:
            held = pool.server(label)
            if held is not None and held.label not in exclude and held.accepts_sticky():
                return _sticky(pool, held, Reason.SOURCE)
            redispatched_from = redispatched_from or held

    candidates = [s for s in pool.servers if s.label not in exclude and s.accepts_new()]
    if candidates:
        if redispatched_from is not None:
            # Counted on the server the client was taken from, like HAProxy's wredis.
            redispatched_from.counters.redispatches += 1
            reason = Reason.REDISPATCH
        elif pool.balance is Balance.SOURCE:
            reason = Reason.HASH
        else:
            reason = Reason.BALANCE
        if pool.limited:
            # Full servers are skipped; with a queue, newcomers line up behind it (HAProxy).
            candidates = [s for s in candidates if s.has_slot()] if not pool.queue else []
            if not candidates:
                raise MustWait(Wait(None, reason, cookie_mode, clear_cookie=False, source_key=key))
        chosen = _balance(pool, candidates, client_ip, key if pool.hash_new_sources else None)
        if key is not None and pool.source_table is not None:
            pool.source_table.record(key, chosen.label, now)
        return Choice(chosen, reason, insert_cookie=cookie_mode, clear_cookie=False)

    return _fallback(pool, exclude, cookie_mode)


def _fallback(pool: PoolState, exclude: frozenset[str], cookie_mode: bool) -> Choice:
    """Never recorded in the source table and the cookie is cleared: clients go back to the
    real servers as soon as one recovers."""
    usable = [f for f in pool.fallbacks if f.label not in exclude and f.accepts_sticky()]
    if not usable:
        raise NoServerAvailable(f"no server available in pool {pool.pool.name}")
    if pool.fallback_mode is FallbackMode.FIRST:
        chosen = usable[0]
    else:
        free = [f for f in usable if f.has_slot()]
        if free:
            cands = [Candidate(f.label, f.weight, f.counters.active) for f in free]
            label = pool.fallback_round_robin.pick(cands)
            chosen = next(f for f in free if f.label == label)
        else:
            chosen = min(usable, key=lambda f: len(f.queue))
    if not chosen.has_slot():
        raise MustWait(Wait(chosen, Reason.FALLBACK, False, clear_cookie=cookie_mode))
    return Choice(chosen, Reason.FALLBACK, insert_cookie=False, clear_cookie=cookie_mode)
