"""The master-worker messages as values: frames, the servers' states, the summed counters, and
the ``workers`` setting (docs/operations.md, "Worker processes")."""

from __future__ import annotations

import pytest

from balancing.state import Health, new_states
from config.loader import ConfigError, load_text
from config.model import Address, AdminState, GlobalSettings, ProxyConfig
from l7proxy.runtime import Runtime
from l7proxy.upstream import UpstreamPool, connect_tcp
from l7proxy.worker_messages import (
    CONFIG,
    MESSAGE,
    CounterSums,
    FrameError,
    FrameReader,
    apply_states,
    encode_config,
    encode_message,
    server_states,
    snapshot,
)
from tests.config.test_loader import GOOD_VS
from tests.helpers import server, simple_config


def two_servers() -> ProxyConfig:
    return simple_config(
        [server("a", Address("127.0.0.1", 9001)), server("b", Address("127.0.0.1", 9002))]
    )


def runtime_of(config: ProxyConfig) -> Runtime:
    return Runtime(config, new_states(config.all_pools()), UpstreamPool(connect_tcp))


def test_frames_survive_any_split() -> None:
    config = two_servers()
    data = encode_message({"t": "ready", "pid": 7}) + encode_config(config)
    for cut in range(len(data) + 1):
        reader = FrameReader()
        frames = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert frames == [(MESSAGE, {"t": "ready", "pid": 7}), (CONFIG, config)]


def test_a_broken_frame_is_an_error() -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(b"\x00\x00\x00\x02X?")
    with pytest.raises(FrameError):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_states_reach_a_worker_and_a_down_server_is_reported() -> None:
    config = two_servers()
    master, worker = new_states(config.all_pools()), new_states(config.all_pools())
    a = master["www"].servers[0]
    a.health = Health.DOWN
    master["www"].servers[1].set_admin(AdminState.DRAIN, 1.0)
    master["www"].servers[1].set_weight(7)
    went_down = apply_states(worker, server_states(master), 5.0)
    assert [s.label for s in went_down] == ["a"]
    wa, wb = worker["www"].servers
    assert (wa.health, wa.admin, wa.weight) == (Health.DOWN, AdminState.READY, 1)
    assert (wb.health, wb.admin, wb.weight) == (Health.UP, AdminState.DRAIN, 7)
    assert apply_states(worker, server_states(master), 6.0) == []  # nothing new
    # A worker still on an older configuration skips servers it does not have.
    assert apply_states(worker, [["gone", "x", False, "down", "maint", 0]], 7.0) == []


def test_the_master_sums_living_and_finished_workers() -> None:
    config = two_servers()
    one, two, master = runtime_of(config), runtime_of(config), runtime_of(config)
    for rt, count in ((one, 3), (two, 5)):
        front = rt.frontend("www")
        for _ in range(count):
            front.opened()
            front.record(200, 10, 20)
        pool = rt.pools["www"]
        pool.begin(pool.servers[0])  # one request in flight on "a"
    sums = CounterSums()
    sums.update(1, snapshot(one))
    sums.update(2, snapshot(two))
    sums.apply(master)
    front = master.frontends["www"]
    assert (front.requests, front.bytes_in, front.bytes_out) == (8, 80, 160)
    assert front.responses["2xx"] == 8
    assert front.current == 8
    a = master.pools["www"].servers[0].counters
    assert (a.total, a.active) == (2, 2)
    assert front.request_rate.rate() == 8
    # Worker 1 exits: its counts stay, what it had open does not.
    sums.gone(1)
    sums.apply(master)
    assert front.requests == 8
    assert front.current == 5
    assert (a.total, a.active) == (2, 1)
    assert master.pools["www"].active == 1


def test_the_master_keeps_its_own_check_results() -> None:
    config = two_servers()
    worker, master = runtime_of(config), runtime_of(config)
    master.pools["www"].servers[0].counters.check_status = "L7OK"
    worker.pools["www"].servers[0].counters.check_status = ""
    sums = CounterSums()
    sums.update(1, snapshot(worker))
    sums.apply(master)
    assert master.pools["www"].servers[0].counters.check_status == "L7OK"


@pytest.mark.parametrize(
    ("text", "workers", "count_on_4", "count_on_64"),
    [("", 1, 1, 1), ("auto", 0, 4, 16), ("1", 1, 1, 1), ("3", 3, 3, 3), ("32", 32, 32, 32)],
)
def test_workers_setting(text: str, workers: int, count_on_4: int, count_on_64: int) -> None:
    head = f"global: {{workers: {text}}}\n" if text else ""
    settings = load_text(head + GOOD_VS, "lb.yaml").global_
    assert settings.workers == workers
    assert settings.worker_count(4) == count_on_4
    assert settings.worker_count(64) == count_on_64
    assert GlobalSettings().worker_count(8) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "lb.yaml:1:19: global.workers: 0 is out of range: must be in 1..64"),
        ("65", "lb.yaml:1:19: global.workers: 65 is out of range: must be in 1..64"),
        ("many", "lb.yaml:1:19: global.workers: expected auto or a number of worker processes"),
        ("1.5", "lb.yaml:1:19: global.workers: expected auto or a number of worker processes"),
    ],
)
def test_bad_workers_setting_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(f"global: {{workers: {text}}}\n" + GOOD_VS, "lb.yaml")
    assert caught.value.problems == [message]
