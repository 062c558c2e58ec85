"""Config keys of fallbacks, maxconn, the queue timeout and the connection limit."""

from __future__ import annotations

import pytest

from config.loader import load_text
from config.model import Address, FallbackMode, HealthCheck, HttpCheck, Timeouts
from tests.config.test_loader_files import GOOD, problems_of, where

HEAD = """\
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
"""


def test_a_list_of_fallbacks_in_order_each_with_its_own_check() -> None:
    text = HEAD + (
        "    real_servers: [{label: web1, address: 127.0.0.1:8081}]\n"
        "    fallback:\n"
        "      - 127.0.0.1:9001\n"
        "      - {address: 127.0.0.1:9002, label: sorry, health_check: {http: {path: /ok}}}\n"
        "      - {address: 127.0.0.1:9003, health_check: {enabled: false}, maxconn: 5}\n"
        "    fallback_mode: all\n"
    )
    pool = load_text(text, "/lb.yaml").virtual_servers[0].pool
    fallbacks = pool.fallbacks()
    assert [f.server.label for f in fallbacks] == ["fallback", "sorry", "fallback3"]
    assert [f.server.address for f in fallbacks] == [
        Address("127.0.0.1", 9001),
        Address("127.0.0.1", 9002),
        Address("127.0.0.1", 9003),
    ]
    assert fallbacks[0].check == HealthCheck()
    assert fallbacks[1].check.http == HttpCheck(path="/ok")
    assert fallbacks[2].check == HealthCheck(enabled=False)
    assert [f.server.maxconn for f in fallbacks] == [0, 0, 5]
    assert all(f.server.backup for f in fallbacks)
    assert pool.fallback_mode is FallbackMode.ALL


def test_one_fallback_stays_as_it_was() -> None:
    pool = load_text(GOOD + "    fallback: 127.0.0.1:9000\n", "/lb.yaml").virtual_servers[0].pool
    assert pool.fallback is not None
    assert pool.fallback.label == "fallback"
    assert pool.more_fallbacks == ()
    assert pool.fallback_mode is FallbackMode.FIRST


def test_maxconn_per_server_with_the_pool_default() -> None:
    text = HEAD + (
        "    maxconn: 10\n"
        "    real_servers:\n"
        "      - {label: web1, address: 127.0.0.1:8081}\n"
        "      - {label: web2, address: 127.0.0.1:8082, maxconn: 2}\n"
        "      - {label: web3, address: 127.0.0.1:8083, maxconn: 0}\n"
        "    fallback: 127.0.0.1:9000\n"
    )
    pool = load_text(text, "/lb.yaml").virtual_servers[0].pool
    assert [s.maxconn for s in pool.real_servers] == [10, 2, 0]
    assert pool.fallback is not None
    assert pool.fallback.maxconn == 10


def test_queue_timeout_and_connection_limit() -> None:
    text = GOOD + "    timeouts: {connect: 2s, queue: 30s}\n    limits: {max_connections: 500}\n"
    vs = load_text(text, "/lb.yaml").virtual_servers[0]
    assert vs.timeouts.queue == 30.0
    assert vs.timeouts.queue_timeout() == 30.0
    assert vs.max_connections == 500
    plain = load_text(GOOD + "    timeouts: {connect: 2s}\n", "/lb.yaml").virtual_servers[0]
    assert plain.timeouts.queue is None
    assert plain.timeouts.queue_timeout() == 2.0  # HAProxy: timeout queue defaults to connect
    assert plain.max_connections == 0
    assert Timeouts().queue_timeout() == Timeouts().connect


@pytest.mark.parametrize(
    ("tail", "place", "message"),
    [
        ("    maxconn: -1\n", "6:14: virtual_servers[0].maxconn", "0"),
        ("    fallback: []\n", "6:15: virtual_servers[0].fallback", "must not be empty"),
        ("    fallback_mode: some\n", "6:20: virtual_servers[0].fallback_mode", "first"),
        (
            "    limits: {max_connections: x}\n",
            "6:31: virtual_servers[0].limits.max_connections",
            "",
        ),
        ("    limits: {max_conns: 1}\n", "6:14: virtual_servers[0].limits.max_conns", "unknown"),
        ("    timeouts: {queue: soon}\n", "6:23: virtual_servers[0].timeouts.queue", ""),
        (
            "    fallback: [127.0.0.1:1, {address: 127.0.0.1:2, label: web1}]\n",
            "6:59: virtual_servers[0].fallback[1].label",
            "duplicate",
        ),
    ],
)
def test_bad_values_name_line_and_key(tail: str, place: str, message: str) -> None:
    problems = problems_of(GOOD + tail)
    assert len(problems) == 1, problems
    assert where(problems[0]) == place, problems[0]
    assert message in problems[0]


def test_a_default_fallback_label_may_not_clash_with_a_real_server() -> None:
    text = HEAD + (
        "    real_servers: [{label: fallback2, address: 127.0.0.1:8081}]\n"
        "    fallback: [127.0.0.1:9001, 127.0.0.1:9002]\n"
    )
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert "fallback2" in problems[0]
    assert "fallback[1]" in problems[0]
