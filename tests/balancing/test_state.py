"""ServerState predicates, counters, and carrying runtime state over a reload."""

from __future__ import annotations

from dataclasses import replace

import pytest

from balancing.state import Health, PoolState, ServerState, carry_over, new_states
from config.model import Address, AdminState, CookiePersistence, Pool, SourcePersistence

from .helpers import make_pool, server


@pytest.mark.parametrize(
    ("health", "admin", "weight", "new", "sticky", "status"),
    [
        (Health.UP, AdminState.READY, 1, True, True, "UP"),
        (Health.UP, AdminState.READY, 0, False, True, "DRAIN"),
        (Health.UP, AdminState.DRAIN, 3, False, True, "DRAIN"),
        (Health.UP, AdminState.MAINT, 1, False, False, "MAINT"),
        (Health.DOWN, AdminState.READY, 1, False, False, "DOWN"),
        (Health.DOWN, AdminState.DRAIN, 1, False, False, "DOWN"),
        (Health.DOWN, AdminState.MAINT, 1, False, False, "MAINT"),
    ],
)
def test_server_predicates(
    health: Health, admin: AdminState, weight: int, new: bool, sticky: bool, status: str
) -> None:
    state = ServerState(server("a"), "www", make_pool(["a"]).health_check)
    state.health, state.admin, state.weight = health, admin, weight
    assert (state.accepts_new(), state.accepts_sticky(), state.status_text()) == (
        new,
        sticky,
        status,
    )


def test_initial_state_follows_config() -> None:
    pool = make_pool(["a"])
    cfg = replace(pool, real_servers=(server("a", weight=3, state=AdminState.DRAIN),))
    state = PoolState(cfg).servers[0]
    assert (state.health, state.admin, state.weight) == (Health.UP, AdminState.DRAIN, 3)
    assert state.label == "a"
    assert state.address == Address("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("status", "slot"),
    [(100, "1xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (599, "5xx"), (600, "other"),
     (42, "other")],
)  # fmt: skip
def test_record_response(status: int, slot: str) -> None:
    state = PoolState(make_pool(["a"])).servers[0]
    state.counters.record_response(status)
    assert [k for k, v in state.counters.responses.items() if v] == [slot]


def test_begin_end_never_negative() -> None:
    pool = PoolState(make_pool(["a"]))
    state = pool.servers[0]
    pool.begin(state)
    pool.begin(state)
    pool.end(state)
    pool.end(state)
    pool.end(state)
    assert (state.counters.total, state.counters.active, state.counters.max_active) == (2, 0, 2)


def test_set_admin_records_change_time() -> None:
    state = PoolState(make_pool(["a"])).servers[0]
    state.set_admin(AdminState.READY, now=5.0)
    assert state.counters.last_change == 0.0
    state.set_admin(AdminState.MAINT, now=6.0)
    assert (state.admin, state.counters.last_change) == (AdminState.MAINT, 6.0)
    state.set_weight(-3)
    assert state.weight == 0


def runtime_changed(pool: PoolState) -> None:
    a = pool.servers[0]
    a.health = Health.DOWN
    a.consecutive_fail = 3
    a.admin = AdminState.DRAIN
    a.weight = 7
    a.counters.total = 42


def test_carry_over_same_config_keeps_everything() -> None:
    cfg = make_pool(["a", "b"], fallback=True)
    old = new_states([cfg])
    runtime_changed(old["www"])
    assert old["www"].fallback is not None
    old["www"].fallback.health = Health.DOWN
    new = new_states([cfg])
    assert carry_over(old, new) == []
    a = new["www"].servers[0]
    assert (a.health, a.consecutive_fail, a.admin, a.weight) == (
        Health.DOWN,
        3,
        AdminState.DRAIN,
        7,
    )
    assert a.counters is old["www"].servers[0].counters
    assert new["www"].fallback is not None
    assert new["www"].fallback.health is Health.DOWN


def test_carry_over_config_changes_win() -> None:
    cfg = make_pool(["a", "b"])
    old = new_states([cfg])
    runtime_changed(old["www"])
    moved = replace(
        cfg,
        real_servers=(
            replace(cfg.real_servers[0], address=Address("127.0.0.1", 9999), weight=2),
            cfg.real_servers[1],
            server("c"),
        ),
    )
    new = new_states([moved])
    notes = carry_over(old, new)
    assert notes == ["server www/a now at 127.0.0.1:9999: health and counters reset"]
    a = new["www"].servers[0]
    # Address changed: health and counters start fresh. Weight changed in config: config wins.
    # Admin state unchanged in config: the runtime drain is kept.
    assert (a.health, a.counters.total, a.weight, a.admin) == (
        Health.UP,
        0,
        2,
        AdminState.DRAIN,
    )


def test_carry_over_source_table_and_missing_pools() -> None:
    cfg = make_pool(["a", "b"], persistence=SourcePersistence())
    old = new_states([cfg])
    table = old["www"].source_table
    assert table is not None
    table.record("192.0.2.0/24", "b", 1.0)
    table.record("198.51.100.0/24", "gone", 2.0)
    new = new_states([cfg, replace(cfg, name="other")])
    carry_over(old, new)
    new_table = new["www"].source_table
    assert new_table is not None
    assert new_table.items() == [("192.0.2.0/24", "b", 1.0)]
    # Switching to cookie persistence leaves nothing to carry.
    cookie = new_states([replace(cfg, persistence=CookiePersistence())])
    assert carry_over(old, cookie) == []
    assert cookie["www"].source_table is None


def test_new_states_keyed_by_name() -> None:
    p1, p2 = make_pool(["a"]), replace(make_pool(["b"]), name="api")
    states = new_states([p1, p2])
    assert list(states) == ["www", "api"]
    assert isinstance(states["api"].pool, Pool)
    assert states["api"].servers[0].pool is states["api"]
