"""rise/fall hysteresis and passive failure reports, table-driven."""

from __future__ import annotations

import pytest

from balancing.health import (
    L4CON,
    L7OK,
    CheckResult,
    apply_check,
    next_check_delay,
    report_passive_failure,
)
from balancing.state import Health, PoolState
from config.model import HealthCheck

from .helpers import make_pool

OK = CheckResult(ok=True, status=L7OK, desc="status 200", duration=0.001)
FAIL = CheckResult(ok=False, status=L4CON, desc="connection refused", duration=0.0)


def run(seq: str, check: HealthCheck, start: Health = Health.UP) -> tuple[str, list[int]]:
    """Apply '+'/'-' results; return the health after each and the steps that logged."""
    pool = PoolState(make_pool(["a", "b"], check=check))
    state = pool.servers[0]
    state.health = start
    healths = ""
    logged: list[int] = []
    for i, ch in enumerate(seq):
        msg = apply_check(state, OK if ch == "+" else FAIL, check, now=float(i))
        healths += "U" if state.health is Health.UP else "D"
        if msg is not None:
            logged.append(i)
            assert state.counters.last_change == float(i)
    return healths, logged


@pytest.mark.parametrize(
    ("rise", "fall", "start", "seq", "healths", "logged"),
    [
        (2, 3, Health.UP, "---", "UUD", [2]),
        (2, 3, Health.UP, "--+--", "UUUUU", []),  # a success resets the failure run
        (2, 3, Health.UP, "---++", "UUDDU", [2, 4]),
        (2, 3, Health.UP, "---+-++", "UUDDDDU", [2, 6]),  # a failure resets the rise run
        (2, 3, Health.DOWN, "+", "D", []),
        (2, 3, Health.DOWN, "++", "DU", [1]),
        (1, 1, Health.UP, "-+-+", "DUDU", [0, 1, 2, 3]),
        (3, 2, Health.UP, "--+++", "UDDDU", [1, 4]),
        (2, 3, Health.UP, "++++", "UUUU", []),
        (0, 0, Health.UP, "-+", "DU", [0, 1]),  # nonsense thresholds act as 1
    ],
)
def test_rise_fall(
    rise: int, fall: int, start: Health, seq: str, healths: str, logged: list[int]
) -> None:
    assert run(seq, HealthCheck(rise=rise, fall=fall), start) == (healths, logged)


def test_messages_and_check_fields() -> None:
    check = HealthCheck(fall=1, rise=1)
    pool = PoolState(make_pool(["web1", "web2"], check=check))
    web1 = pool.servers[0]
    down = apply_check(web1, FAIL, check, now=5.0)
    assert down == "server www/web1 is DOWN: connection refused (L4CON), 1 active left"
    assert web1.counters.check_status == "L4CON"
    assert web1.counters.check_desc == "connection refused"
    assert web1.counters.check_duration == 0.0
    apply_check(pool.servers[1], FAIL, check, now=6.0)
    up = apply_check(web1, OK, check, now=7.0)
    assert up == "server www/web1 is UP: status 200 (L7OK), 1 active up"
    assert web1.counters.check_status == "L7OK"


def test_fallback_message() -> None:
    check = HealthCheck(fall=1)
    pool = PoolState(make_pool(["a"], fallback=True, check=check))
    assert pool.fallback is not None
    msg = apply_check(pool.fallback, FAIL, check, now=1.0)
    assert msg == "fallback server www/fallback is DOWN: connection refused (L4CON), 1 active left"


@pytest.mark.parametrize(
    ("fall", "reports", "down_after"),
    [(3, 3, 3), (3, 2, None), (1, 1, 1), (2, 5, 2)],
)
def test_passive_failures_take_server_down(fall: int, reports: int, down_after: int | None) -> None:
    pool = PoolState(make_pool(["a", "b"], check=HealthCheck(fall=fall)))
    state = pool.servers[0]
    messages = [
        report_passive_failure(state, float(i), "connection refused") for i in range(reports)
    ]
    transitions = [i + 1 for i, m in enumerate(messages) if m is not None]
    assert transitions == ([down_after] if down_after else [])
    assert state.health is (Health.DOWN if down_after else Health.UP)
    assert state.counters.failures_connect == 0  # the caller's counter, not ours
    if down_after:
        assert messages[down_after - 1] == (
            "server www/a is DOWN: connection refused (PASSIVE), 1 active left"
        )


def test_passive_and_active_failures_add_up_and_checks_bring_it_back() -> None:
    check = HealthCheck(rise=2, fall=3)
    pool = PoolState(make_pool(["a"], check=check))
    state = pool.servers[0]
    assert apply_check(state, FAIL, check, now=0.0) is None
    assert report_passive_failure(state, 0.5, "connection reset") is None
    assert report_passive_failure(state, 0.6, "connection reset") is not None
    assert state.health is Health.DOWN
    assert apply_check(state, OK, check, now=2.0) is None
    assert apply_check(state, OK, check, now=4.0) is not None
    assert pool.servers[0].health is Health.UP  # (indexed: mypy keeps no narrowing)


def test_passive_failure_without_checks_only_counts() -> None:
    pool = PoolState(make_pool(["a"], check=HealthCheck(enabled=False, fall=1)))
    state = pool.servers[0]
    for i in range(5):
        assert report_passive_failure(state, float(i), "connection refused") is None
    assert state.health is Health.UP
    assert state.consecutive_fail == 0


@pytest.mark.parametrize(
    ("health", "ok", "fail", "interval", "timeout", "delay"),
    [
        (Health.UP, 5, 0, 2.0, 1.0, 2.0),  # steady
        (Health.UP, 0, 1, 2.0, 1.0, 1.0),  # going down: quicker
        (Health.UP, 0, 2, 2.0, 0.5, 1.5),
        (Health.DOWN, 0, 4, 2.0, 1.0, 2.0),  # steady down
        (Health.DOWN, 1, 0, 2.0, 1.0, 1.0),  # coming up: quicker
        (Health.UP, 0, 1, 2.0, 3.0, 2.0),  # timeout >= interval: no quickening
    ],
)
def test_next_check_delay(
    health: Health, ok: int, fail: int, interval: float, timeout: float, delay: float
) -> None:
    check = HealthCheck(interval=interval, timeout=timeout)
    state = PoolState(make_pool(["a"], check=check)).servers[0]
    state.health, state.consecutive_ok, state.consecutive_fail = health, ok, fail
    assert next_check_delay(state, check) == delay


def test_timeouts_reach_fall_within_fall_intervals() -> None:
    """Worst case of a pulled cable: every check runs into the timeout."""
    check = HealthCheck(interval=2.0, timeout=1.0, fall=3)
    state = PoolState(make_pool(["a"], check=check)).servers[0]
    timeout = CheckResult(ok=False, status="L4TOUT", desc="timeout", duration=1.0)
    died = 0.001  # just after a good check at 0.0
    start = check.interval  # the next scheduled check
    while state.health is Health.UP:
        apply_check(state, timeout, check, now=start + check.timeout)
        went_down = start + check.timeout
        start += next_check_delay(state, check)
    assert went_down - died <= check.fall * check.interval
