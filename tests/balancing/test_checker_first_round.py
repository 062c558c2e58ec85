"""``run_checks(on_first_round=...)``: called once, after every server's first check."""

from __future__ import annotations

import logging
from functools import partial

import trio
import trio.testing

from balancing.checker import run_checks
from balancing.state import new_states
from config.model import Address, AdminState, HealthCheck, Pool, RealServer
from tests.balancing.test_checker import autojump_clock, just_close, serving

__all__ = ["autojump_clock"]  # the fixture, used by name

LOG = logging.getLogger("lbproxy.test-first-round")


async def first_rounds(pool: Pool, seconds: float) -> tuple[float, list[float]]:
    """Run the checks of ``pool`` for ``seconds``: the start time and each first-round call."""
    done: list[float] = []
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(
            partial(
                run_checks,
                new_states([pool]),
                log=LOG,
                on_first_round=lambda: done.append(trio.current_time()),
            )
        )
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return start, done


async def test_first_round_ends_after_the_last_first_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probes: list[float] = []

    async def probed(stream: trio.SocketStream) -> None:
        probes.append(trio.current_time())
        await just_close(stream)

    with trio.fail_after(60):
        async with serving(probed) as port, serving(probed) as port2:
            pool = Pool(
                name="www",
                real_servers=(
                    RealServer("a", Address("127.0.0.1", port)),
                    RealServer("b", Address("127.0.0.1", port2)),
                    RealServer("m", Address("127.0.0.1", port2), state=AdminState.MAINT),
                ),
                health_check=HealthCheck(interval=3.0, timeout=1.0),
            )
            start, done = await first_rounds(pool, 10)
    # Three tasks spread over 3 s: probes at 0 and 1 s, the maintenance server's turn at 2 s
    # (not probed, but its turn counts); then once only, whatever the later rounds do.
    assert len(done) == 1
    assert done[0] >= max(probes[:2])
    assert round(done[0] - start, 1) == 2.0


async def test_nothing_to_check_is_a_first_round_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = Pool(
        name="www",
        real_servers=(RealServer("a", Address("127.0.0.1", 9)),),
        health_check=HealthCheck(enabled=False),
    )
    with trio.fail_after(60):
        start, done = await first_rounds(pool, 0)
    assert done == [start]
