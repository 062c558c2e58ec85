"""Connection slots, the FIFO queues and the fallback list: choose() and PoolState, as values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from balancing.scheduler import Choice, MustWait, NoServerAvailable, Reason, choose, granted
from balancing.state import Health, PoolState, Waiter, carry_over
from config.model import (
    Address,
    CookiePersistence,
    Fallback,
    FallbackMode,
    HealthCheck,
    Pool,
    RealServer,
    SourcePersistence,
)


def real(label: str, port: int, maxconn: int = 0, backup: bool = False) -> RealServer:
    return RealServer(label, Address("127.0.0.1", port), maxconn=maxconn, backup=backup)


def limited_pool(
    maxconn: int = 1,
    *,
    labels: tuple[str, ...] = ("a", "b"),
    persistence: CookiePersistence | SourcePersistence | None = None,
    fallbacks: tuple[str, ...] = (),
    mode: FallbackMode = FallbackMode.FIRST,
) -> PoolState:
    servers = tuple(real(label, 8001 + i, maxconn) for i, label in enumerate(labels))
    backups = [Fallback(real(label, 9001 + i, maxconn, True)) for i, label in enumerate(fallbacks)]
    return PoolState(
        Pool(
            "www",
            servers,
            fallback=backups[0].server if backups else None,
            more_fallbacks=tuple(backups[1:]),
            fallback_mode=mode,
            persistence=persistence,
        )
    )


def start(pool: PoolState, cookie: str | None = None, ip: str = "192.0.2.1") -> Choice:
    """Choose and take the slot, as dispatch does."""
    choice = choose(pool, cookie_label=cookie, client_ip=ip, now=0.0)
    pool.take_slot(choice.server)
    pool.begin(choice.server)
    return choice


def must_wait(pool: PoolState, cookie: str | None = None, ip: str = "192.0.2.1") -> MustWait:
    with pytest.raises(MustWait) as raised:
        choose(pool, cookie_label=cookie, client_ip=ip, now=0.0)
    return raised.value


class Woken:
    def __init__(self) -> None:
        self.order: list[str] = []

    def waker(self, name: str) -> Callable[[], None]:
        return lambda: self.order.append(name)


def test_full_servers_queue_requests_and_hand_slots_over_in_arrival_order() -> None:
    pool = limited_pool()
    first, second = start(pool), start(pool)
    assert {first.server.label, second.server.label} == {"a", "b"}
    woken = Woken()
    waiters: list[Waiter] = []
    for name in ("w1", "w2", "w3"):
        wait = must_wait(pool).wait
        assert wait.server is None  # any server will do
        waiters.append(pool.enqueue(None, woken.waker(name), frozenset()))
    assert len(pool.queue) == 3
    assert pool.queue.max == 3
    pool.end(first.server)
    assert woken.order == ["w1"]
    assert waiters[0].server is first.server
    assert first.server.served == 1
    assert not first.server.has_slot()
    pool.end(second.server)
    assert woken.order == ["w1", "w2"]
    assert len(pool.queue) == 1
    # A newcomer lines up behind the queue even when a slot is free.
    pool.leave(waiters[2])
    assert len(pool.queue) == 0
    assert pool.queue.max == 3


def test_no_maxconn_never_waits() -> None:
    pool = limited_pool(maxconn=0)
    assert not pool.limited
    for _ in range(100):
        start(pool)
    assert pool.server("a") is not None


def test_a_waiter_that_gives_up_after_its_grant_passes_the_slot_on() -> None:
    pool = limited_pool(labels=("a",))
    held = start(pool)
    woken = Woken()
    w1 = pool.enqueue(None, woken.waker("w1"), frozenset())
    w2 = pool.enqueue(None, woken.waker("w2"), frozenset())
    pool.end(held.server)
    assert w1.server is held.server
    pool.leave(w1)  # its client went away before using the slot
    assert woken.order == ["w1", "w2"]
    assert w2.server is held.server
    assert held.server.served == 1


def test_an_excluded_server_skips_the_waiter_that_must_not_go_there() -> None:
    pool = limited_pool()
    a, b = start(pool), start(pool)
    woken = Woken()
    w1 = pool.enqueue(None, woken.waker("w1"), frozenset({a.server.label}))
    w2 = pool.enqueue(None, woken.waker("w2"), frozenset())
    pool.end(a.server)
    assert woken.order == ["w2"]
    assert w2.server is a.server
    pool.end(b.server)
    assert woken.order == ["w2", "w1"]
    assert w1.server is b.server


def test_a_persistent_client_waits_on_its_own_server_not_elsewhere() -> None:
    pool = limited_pool(persistence=CookiePersistence())
    held = start(pool, cookie="a")
    assert held.reason is Reason.COOKIE
    wait = must_wait(pool, cookie="a").wait
    a = pool.server("a")
    assert wait.server is a
    assert wait.reason is Reason.COOKIE
    assert a is not None
    woken = Woken()
    waiter = pool.enqueue(a, woken.waker("sticky"), frozenset())
    # b is free for everybody else meanwhile
    assert start(pool).server.label == "b"
    assert len(a.queue) == 1
    assert a.queue.max == 1
    pool.end(held.server)
    assert waiter.server is a
    choice = granted(pool, wait, a, 0.0)
    assert choice.server is a
    assert not choice.insert_cookie


def test_own_queue_and_pool_queue_are_served_by_age() -> None:
    pool = limited_pool(labels=("a",), persistence=CookiePersistence())
    held = start(pool, cookie="a")
    a = held.server
    woken = Woken()
    pool.enqueue(None, woken.waker("any-1"), frozenset())
    pool.enqueue(a, woken.waker("sticky-2"), frozenset())
    pool.enqueue(None, woken.waker("any-3"), frozenset())
    for _ in range(3):
        pool.end(a)
    assert woken.order == ["any-1", "sticky-2", "any-3"]


def test_a_server_that_went_down_sends_its_own_waiters_back_to_choose() -> None:
    pool = limited_pool(persistence=CookiePersistence())
    held = start(pool, cookie="a")
    a = held.server
    woken = Woken()
    waiter = pool.enqueue(a, woken.waker("sticky"), frozenset())
    a.health = Health.DOWN
    pool.end(a)
    assert woken.order == ["sticky"]
    assert waiter.server is None
    assert len(a.queue) == 0
    again = choose(pool, cookie_label="a", client_ip="192.0.2.1", now=0.0)
    assert again.server.label == "b"
    assert again.reason is Reason.REDISPATCH


def test_source_persistence_is_recorded_when_the_slot_is_granted() -> None:
    pool = limited_pool(labels=("a",), persistence=SourcePersistence())
    held = start(pool, ip="192.0.2.7")
    wait = must_wait(pool, ip="198.51.100.1").wait
    assert wait.source_key is not None
    choice = granted(pool, wait, held.server, 1.0)
    assert choice.server is held.server
    assert pool.source_table is not None
    assert pool.source_table.lookup(wait.source_key, 1.0) == "a"


def down(pool: PoolState, *labels: str) -> None:
    for state in pool.all_states():
        if state.label in labels:
            state.health = Health.DOWN


def test_fallbacks_are_used_in_the_listed_order() -> None:
    pool = limited_pool(maxconn=0, fallbacks=("f1", "f2", "f3"))
    down(pool, "a", "b")
    assert [start(pool).server.label for _ in range(3)] == ["f1"] * 3
    down(pool, "f1")
    choice = start(pool)
    assert choice.server.label == "f2"
    assert choice.reason is Reason.FALLBACK
    # a refused connect excludes it for this request: the next one
    after = choose(pool, cookie_label=None, client_ip="x", now=0.0, exclude=frozenset({"f2"}))
    assert after.server.label == "f3"
    down(pool, "f2", "f3")
    with pytest.raises(NoServerAvailable):
        choose(pool, cookie_label=None, client_ip="x", now=0.0)


def test_fallback_mode_all_balances_over_the_usable_fallbacks() -> None:
    pool = limited_pool(maxconn=0, fallbacks=("f1", "f2", "f3"), mode=FallbackMode.ALL)
    down(pool, "a", "b", "f3")
    seen = Counter(start(pool).server.label for _ in range(6))
    assert seen == Counter({"f1": 3, "f2": 3})


def test_a_full_first_fallback_queues_on_itself() -> None:
    pool = limited_pool(maxconn=1, fallbacks=("f1", "f2"))
    down(pool, "a", "b")
    assert start(pool).server.label == "f1"
    wait = must_wait(pool).wait
    assert wait.server is not None
    assert wait.server.label == "f1"
    assert wait.reason is Reason.FALLBACK


def test_fallbacks_keep_their_state_across_a_reload_by_label() -> None:
    old = limited_pool(maxconn=0, fallbacks=("f1", "f2"))
    down(old, "f2")
    new = limited_pool(maxconn=0, fallbacks=("f1", "f2"))
    carry_over({"www": old}, {"www": new})
    assert [s.health for s in new.fallbacks] == [Health.UP, Health.DOWN]


def test_each_fallback_has_its_own_check() -> None:
    checks = (HealthCheck(enabled=False), HealthCheck(interval=5.0))
    pool = Pool(
        "www",
        (real("a", 8001),),
        fallback=real("f1", 9001, backup=True),
        fallback_check=checks[0],
        more_fallbacks=(Fallback(real("f2", 9002, backup=True), checks[1]),),
    )
    state = PoolState(pool)
    assert tuple(s.check for s in state.fallbacks) == checks
    assert all(s.is_fallback for s in state.fallbacks)
    assert state.fallback is state.fallbacks[0]


def test_when_no_real_server_takes_new_clients_the_pool_queue_chooses_again() -> None:
    pool = limited_pool(labels=("a",), fallbacks=("f1",))
    held = start(pool)
    woken = Woken()
    waiter = pool.enqueue(None, woken.waker("w1"), frozenset())
    held.server.health = Health.DOWN
    pool.end(held.server)
    assert woken.order == ["w1"]
    assert waiter.server is None
    assert len(pool.queue) == 0
    assert start(pool).server.label == "f1"
