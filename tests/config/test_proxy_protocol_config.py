"""The PROXY protocol keys: `accept_proxy` on a bind, `send_proxy` on a pool or real server."""

from __future__ import annotations

import ipaddress

import pytest

from config.loader import ConfigError, load_text
from config.model import ProxyVersion

VS = """\
virtual_servers:
  - label: www
    bind: {address: 127.0.0.1:8080, accept_proxy: [10.0.0.0/8, "::1", 192.0.2.7]}
    SEND
    fallback: 127.0.0.1:8089
    real_servers:
      - {label: a, address: 127.0.0.1:8081}
      - {label: b, address: 127.0.0.1:8082, send_proxy: v1}
      - {label: c, address: 127.0.0.1:8083, send_proxy: false}
pools:
  api:
    real_servers: [{label: d, address: 127.0.0.1:8084, send_proxy: v2}]
"""


def test_accept_proxy_and_send_proxy_with_pool_defaults() -> None:
    config = load_text(VS.replace("SEND", "send_proxy: v2"), "lb.yaml")
    vs = config.virtual_servers[0]
    assert vs.binds[0].accept_proxy == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
        ipaddress.IPv4Network("192.0.2.7/32"),
    )
    versions = [server.send_proxy for server in vs.pool.real_servers]
    assert versions == [ProxyVersion.V2, ProxyVersion.V1, None]
    assert vs.pool.fallback is not None
    assert vs.pool.fallback.send_proxy is ProxyVersion.V2
    assert config.pools["api"].real_servers[0].send_proxy is ProxyVersion.V2


def test_defaults_are_off() -> None:
    config = load_text(VS.replace("    SEND\n", ""), "lb.yaml")
    pool = config.virtual_servers[0].pool
    assert [server.send_proxy for server in pool.real_servers] == [None, ProxyVersion.V1, None]
    assert pool.fallback is not None
    assert pool.fallback.send_proxy is None
    plain = load_text(
        VS.replace("    SEND\n", "").replace(', accept_proxy: [10.0.0.0/8, "::1", 192.0.2.7]', ""),
        "lb.yaml",
    )
    assert plain.virtual_servers[0].binds[0].accept_proxy == ()


@pytest.mark.parametrize(
    ("old", "new", "where", "fragment"),
    [
        (
            "SEND",
            "send_proxy: v3",
            "4:17: virtual_servers[0].send_proxy:",
            "'v3' is not one of: v1, v2",
        ),
        (
            "SEND",
            "send_proxy: true",
            "4:17: virtual_servers[0].send_proxy:",
            "expected a string, got a boolean (true)",
        ),
        (
            "send_proxy: v1}",
            "send_proxy: 2}",
            "8:57: virtual_servers[0].real_servers[1].send_proxy:",
            "expected a string, got a number (2)",
        ),
        (
            '[10.0.0.0/8, "::1", 192.0.2.7]',
            "[]",
            "3:51: virtual_servers[0].bind.accept_proxy:",
            "must not be empty",
        ),
        (
            '"::1"',
            "10.0.0.1/8",
            "3:64: virtual_servers[0].bind.accept_proxy[1]:",
            "did you mean 10.0.0.0/8",
        ),
        (
            '[10.0.0.0/8, "::1", 192.0.2.7]',
            "yes",
            "3:51: virtual_servers[0].bind.accept_proxy:",
            "expected a list",
        ),
    ],
)
def test_bad_values_are_reported_at_their_position(
    old: str, new: str, where: str, fragment: str
) -> None:
    text = VS.replace("SEND", "send_proxy: v2") if old != "SEND" else VS
    with pytest.raises(ConfigError) as caught:
        load_text(text.replace(old, new, 1), "lb.yaml")
    matching = [p for p in caught.value.problems if p.startswith(f"lb.yaml:{where} ")]
    assert matching, caught.value.problems
    assert any(fragment in p for p in matching), matching
