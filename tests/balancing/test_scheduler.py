"""choose(): persistence, algorithm, fallback and NoServerAvailable across state combinations."""

from __future__ import annotations

from collections import Counter

import pytest

from balancing.scheduler import Choice, NoServerAvailable, Reason, choose
from balancing.state import Health, PoolState, new_states
from config.model import (
    AdminState,
    Balance,
    CookiePersistence,
    SourcePersistence,
)

from .helpers import make_pool

COOKIE = CookiePersistence()
SOURCE = SourcePersistence(timeout=300.0)


def set_states(pool: PoolState, states: dict[str, str]) -> None:
    """'up', 'down', 'drain', 'maint', 'w0' per label."""
    for label, what in states.items():
        st = pool.server(label) if label != "fallback" else pool.fallback
        assert st is not None
        if what == "down":
            st.health = Health.DOWN
        elif what == "drain":
            st.admin = AdminState.DRAIN
        elif what == "maint":
            st.admin = AdminState.MAINT
        elif what == "w0":
            st.weight = 0


def pick(pool: PoolState, cookie: str | None = None, ip: str = "192.0.2.1", **kw: object) -> Choice:
    return choose(pool, cookie_label=cookie, client_ip=ip, now=0.0, **kw)  # type: ignore[arg-type]


# (server states, cookie label, exclude) -> (label, reason, insert_cookie, clear_cookie)
COOKIE_TABLE = [
    ({}, None, (), ("a", Reason.BALANCE, True, False)),
    ({}, "b", (), ("b", Reason.COOKIE, False, False)),
    ({}, "nosuch", (), ("a", Reason.BALANCE, True, False)),
    ({}, "fallback", (), ("a", Reason.BALANCE, True, False)),
    ({"b": "drain"}, "b", (), ("b", Reason.COOKIE, False, False)),
    ({"b": "w0"}, "b", (), ("b", Reason.COOKIE, False, False)),
    ({"b": "maint"}, "b", (), ("a", Reason.REDISPATCH, True, False)),
    ({"b": "down"}, "b", (), ("a", Reason.REDISPATCH, True, False)),
    ({}, "b", ("b",), ("a", Reason.REDISPATCH, True, False)),
    ({"a": "down"}, None, (), ("b", Reason.BALANCE, True, False)),
    ({"a": "drain"}, None, (), ("b", Reason.BALANCE, True, False)),
    ({"a": "w0"}, None, (), ("b", Reason.BALANCE, True, False)),
    ({"a": "maint"}, None, ("b",), ("fallback", Reason.FALLBACK, False, True)),
    ({"a": "down", "b": "down"}, None, (), ("fallback", Reason.FALLBACK, False, True)),
    ({"a": "down", "b": "down"}, "a", (), ("fallback", Reason.FALLBACK, False, True)),
    ({"a": "drain", "b": "drain"}, None, (), ("fallback", Reason.FALLBACK, False, True)),
    ({"a": "drain", "b": "down"}, "a", (), ("a", Reason.COOKIE, False, False)),
]


@pytest.mark.parametrize(("states", "cookie", "exclude", "expected"), COOKIE_TABLE)
def test_choose_cookie_persistence(
    states: dict[str, str],
    cookie: str | None,
    exclude: tuple[str, ...],
    expected: tuple[str, Reason, bool, bool],
) -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=COOKIE, fallback=True))
    set_states(pool, states)
    choice = pick(pool, cookie, exclude=frozenset(exclude))
    assert (
        choice.server.label,
        choice.reason,
        choice.insert_cookie,
        choice.clear_cookie,
    ) == expected


@pytest.mark.parametrize(
    ("states", "exclude"),
    [
        ({"a": "down", "b": "down", "fallback": "down"}, ()),
        ({"a": "down", "b": "down", "fallback": "maint"}, ()),
        ({"a": "maint", "b": "maint"}, ("fallback",)),
        ({}, ("a", "b", "fallback")),
    ],
)
def test_choose_nothing_available(states: dict[str, str], exclude: tuple[str, ...]) -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=COOKIE, fallback=True))
    set_states(pool, states)
    with pytest.raises(NoServerAvailable, match="pool www"):
        pick(pool, "a", exclude=frozenset(exclude))


def test_choose_without_fallback_raises() -> None:
    pool = PoolState(make_pool(["a"]))
    set_states(pool, {"a": "down"})
    with pytest.raises(NoServerAvailable):
        pick(pool)


def test_fallback_without_cookie_persistence_clears_nothing() -> None:
    pool = PoolState(make_pool(["a"], fallback=True))
    set_states(pool, {"a": "down"})
    choice = pick(pool)
    assert (choice.server.label, choice.reason) == ("fallback", Reason.FALLBACK)
    assert not choice.insert_cookie
    assert not choice.clear_cookie


def test_recovered_servers_take_new_clients_back_from_fallback() -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=COOKIE, fallback=True))
    set_states(pool, {"a": "down", "b": "down"})
    assert pick(pool).reason is Reason.FALLBACK
    pool.servers[1].health = Health.UP
    choice = pick(pool)
    assert (choice.server.label, choice.reason, choice.insert_cookie) == ("b", Reason.BALANCE, True)


def test_round_robin_through_choose_is_weighted() -> None:
    pool = PoolState(make_pool([("a", 5), ("b", 1), ("c", 1)]))
    assert "".join(pick(pool).server.label for _ in range(7)) == "aabacaa"


def test_leastconn_through_choose_uses_in_flight_counts() -> None:
    pool = PoolState(make_pool(["a", "b", "c"], balance=Balance.LEASTCONN))
    first = pick(pool).server
    pool.begin(first)
    second = pick(pool).server
    pool.begin(second)
    third = pick(pool).server
    assert {first.label, second.label, third.label} == {"a", "b", "c"}
    pool.begin(third)
    pool.end(second)
    assert pick(pool).server is second
    assert first.counters.total == 1
    assert first.counters.active == 1
    assert second.counters.active == 0
    assert second.counters.max_active == 1


@pytest.mark.parametrize(
    ("ip", "same_as"),
    [
        ("192.0.2.200", "192.0.2.1"),  # same /24
        ("::ffff:192.0.2.9", "192.0.2.1"),  # IPv4-mapped IPv6 is IPv4
        ("2001:db8::2", "2001:db8::1"),  # same /64
    ],
)
def test_source_persistence_masks(ip: str, same_as: str) -> None:
    pool = PoolState(make_pool(["a", "b", "c"], persistence=SOURCE))
    first = pick(pool, ip=same_as)
    assert first.reason is Reason.BALANCE
    assert not first.insert_cookie
    for _ in range(3):
        again = pick(pool, ip=ip)
        assert (again.server, again.reason) == (first.server, Reason.SOURCE)


def test_source_persistence_first_writer_wins() -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=SOURCE))
    # Two "concurrent" first requests: the second sees the first one's entry.
    one = pick(pool, ip="198.51.100.7")
    two = pick(pool, ip="198.51.100.7")
    assert one.server is two.server
    assert two.reason is Reason.SOURCE
    # A different network gets the next server.
    assert pick(pool, ip="203.0.113.1").server is not one.server


@pytest.mark.parametrize(
    ("state", "expected_reason", "moves"),
    [
        ("drain", Reason.SOURCE, False),
        ("w0", Reason.SOURCE, False),
        ("down", Reason.REDISPATCH, True),
        ("maint", Reason.REDISPATCH, True),
    ],
)
def test_source_persistence_holder_states(state: str, expected_reason: Reason, moves: bool) -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=SOURCE))
    held = pick(pool, ip="192.0.2.1").server
    set_states(pool, {held.label: state})
    choice = pick(pool, ip="192.0.2.1")
    assert choice.reason is expected_reason
    assert (choice.server is not held) is moves
    if moves:
        # The new server is recorded: the client stays there even when the old one returns.
        held.health, held.admin = Health.UP, AdminState.READY
        assert pick(pool, ip="192.0.2.1").server is choice.server


def test_source_persistence_idle_expiry() -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=SourcePersistence(timeout=10.0)))
    first = choose(pool, cookie_label=None, client_ip="192.0.2.1", now=0.0)
    assert choose(pool, cookie_label=None, client_ip="192.0.2.1", now=9.0).reason is Reason.SOURCE
    assert choose(pool, cookie_label=None, client_ip="192.0.2.1", now=18.0).reason is Reason.SOURCE
    late = choose(pool, cookie_label=None, client_ip="192.0.2.1", now=40.0)
    assert late.reason is Reason.BALANCE
    assert first.server.label == "a"
    assert late.server.label == "b"


def test_source_persistence_not_recorded_for_fallback() -> None:
    pool = PoolState(make_pool(["a"], persistence=SOURCE, fallback=True))
    set_states(pool, {"a": "down"})
    assert pick(pool).reason is Reason.FALLBACK
    pool.servers[0].health = Health.UP
    choice = pick(pool)
    assert (choice.server.label, choice.reason) == ("a", Reason.BALANCE)


def test_balance_source_hash_is_stable_and_skips_excluded() -> None:
    pool_a = PoolState(make_pool(["a", "b", "c"], balance=Balance.SOURCE))
    pool_b = PoolState(make_pool(["a", "b", "c"], balance=Balance.SOURCE))
    ips = [f"10.1.{i}.{i}" for i in range(200)]
    first = [pick(pool_a, ip=ip).server.label for ip in ips]
    assert first == [pick(pool_b, ip=ip).server.label for ip in ips]
    assert pick(pool_a, ip=ips[0]).reason is Reason.HASH
    assert len(Counter(first)) == 3
    for ip, label in zip(ips, first, strict=True):
        other = pick(pool_a, ip=ip, exclude=frozenset({label})).server.label
        assert other != label


def test_new_states_and_statistics() -> None:
    states = new_states([make_pool(["a", "b"], fallback=True)])
    pool = states["www"]
    assert pool.server("a") is pool.servers[0]
    assert pool.server("fallback") is None
    assert pool.fallback is not None
    pool.servers[1].admin = AdminState.DRAIN
    pool.servers[0].counters.record_response(503)
    rows = pool.statistics()
    assert [r["label"] for r in rows] == ["a", "b", "fallback"]
    assert [r["status"] for r in rows] == ["UP", "DRAIN", "UP"]
    assert rows[0]["responses"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 1, "other": 0}
    assert rows[2]["fallback"] is True
    assert rows[0]["address"] == "127.0.0.1:8001"


@pytest.mark.parametrize(
    ("persistence", "sticky"), [(COOKIE, Reason.COOKIE), (SOURCE, Reason.SOURCE)]
)
def test_redispatch_counted_on_the_server_left(
    persistence: CookiePersistence | SourcePersistence, sticky: Reason
) -> None:
    pool = PoolState(make_pool(["a", "b"], persistence=persistence))
    a, b = pool.servers
    pick(pool, "a")  # records a in the source table (cookie mode: ignored)
    set_states(pool, {"a": "down"})
    choice = pick(pool, "a")
    assert (choice.server, choice.reason) == (b, Reason.REDISPATCH)
    assert (a.counters.redispatches, b.counters.redispatches) == (1, 0)
    # The client now holds b (new cookie, or the source entry was rewritten): no more redispatch.
    assert (pick(pool, "b").server, pick(pool, "b").reason) == (b, sticky)
    assert a.counters.redispatches == 1
