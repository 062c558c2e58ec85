"""The counters behind the stats: the per-second rate, downtime and check counters."""

from __future__ import annotations

import pytest

from balancing.health import CheckResult, apply_check
from balancing.state import Health, RateCounter, ServerCounters, ServerState
from config.model import Address, HealthCheck, RealServer


def test_rate_counts_the_last_second_and_weighs_the_one_before() -> None:
    rate = RateCounter()
    for t in (10.0, 10.2, 10.4, 10.6):
        rate.hit(t)
    assert rate.rate(10.9) == 4
    assert rate.rate(11.5) == 2  # half of the previous second is still inside the last one
    rate.hit(11.5)
    assert rate.rate(11.5) == 3
    assert rate.rate(12.2) == 1  # the period of 11.5 weighs 0.8 now
    assert rate.rate(12.99) == 0
    assert rate.rate(13.5) == 0
    assert rate.max == 4


@pytest.mark.parametrize("gap", [2.0, 5.5, 1000.0])
def test_rate_forgets_after_a_quiet_gap(gap: float) -> None:
    rate = RateCounter()
    rate.hit(1.0)
    rate.hit(1.0 + gap)
    assert rate.rate(1.0 + gap) == 1


def test_downtime_sums_outages_and_counts_the_current_one() -> None:
    c = ServerCounters()
    c.health_changed(Health.DOWN, 100.0)
    c.health_changed(Health.UP, 130.0)
    c.health_changed(Health.DOWN, 200.0)
    assert c.downtime_at(210.0) == 40.0
    assert (c.down_transitions, c.health_transitions, c.last_change) == (2, 3, 200.0)


def test_failed_checks_while_up_are_counted_and_transitions_recorded() -> None:
    check = HealthCheck(fall=2, rise=1)
    state = ServerState(RealServer("web1", Address("127.0.0.1", 80)), "www", check)
    bad = CheckResult(ok=False, status="L4CON", desc="connection refused", duration=0.001)
    good = CheckResult(ok=True, status="L4OK", desc="", duration=0.001)
    apply_check(state, bad, check, 1.0)
    apply_check(state, bad, check, 2.0)  # DOWN now
    apply_check(state, bad, check, 3.0)  # already DOWN: not a check failure of an UP server
    apply_check(state, good, check, 4.0)
    c = state.counters
    assert (c.check_failures, c.down_transitions, c.health_transitions) == (2, 1, 2)
    assert c.downtime_at(10.0) == 2.0
    assert state.health is Health.UP
