"""``ha:`` in the configuration: what loads, and problems with file:line and the key path."""

from __future__ import annotations

import ipaddress

import pytest

from config.loader import ConfigError, load_text

BASE = """\
virtual_servers:
  - label: web
    bind: 10.99.0.100:80
    real_servers:
      - {label: rs1, address: "10.99.0.31:8000"}
"""

GOOD = (
    BASE
    + """\
ha:
  router_id: 51
  interface: eth0
  vips: [10.99.0.100/24, {address: "fd00::100/64", interface: eth1}]
  advert_interval: 1s
  preempt: false
  auth_pass_file: vrrp.pass
  notify_master: /usr/local/bin/became-master
  nodes:
    lb1: {address: 10.99.0.11, role: master, sync_cert: ha/lb1.pem}
    lb2: {address: 10.99.0.12, priority: 90, sync_cert: ha/lb2.pem, fingerprint: "FP"}
  sync: {key: ha/sync.key, port: 7000}
"""
).replace("FP", "AB:" * 31 + "AB")


def test_a_full_ha_section_loads() -> None:
    config = load_text(GOOD, "/etc/lbproxy/lb.yaml")
    ha = config.ha
    assert ha is not None
    assert ha.router_id == 51
    assert ha.interface == "eth0"
    assert ha.preempt is False
    assert [(str(v.address), v.interface) for v in ha.vips] == [
        ("10.99.0.100/24", "eth0"),
        ("fd00::100/64", "eth1"),
    ]
    lb1, lb2 = ha.nodes
    assert (lb1.name, lb1.priority, lb2.priority) == ("lb1", 150, 90)
    assert lb2.fingerprint == "ab" * 32
    assert lb1.sync_cert == "/etc/lbproxy/ha/lb1.pem"
    assert ha.auth_pass_file == "/etc/lbproxy/vrrp.pass"
    assert ha.sync is not None
    assert ha.sync.port == 7000
    assert ha.is_vip("10.99.0.100")
    assert not ha.is_vip("10.99.0.11")
    assert ha.peer_of(lb1) is lb2
    assert ha.vips[0].address.ip == ipaddress.ip_address("10.99.0.100")


def test_no_ha_section_means_no_pair() -> None:
    assert load_text(BASE, "lb.yaml").ha is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("router_id: 51", "router_id: 256"), "lb.yaml:7:14: ha.router_id:"),
        (
            ("vips: [10.99.0.100/24,", "vips: [10.99.0.100,"),
            "ha.vips[0]: '10.99.0.100': give the prefix",
        ),
        (("priority: 90", "priority: 150"), "ha.nodes: the two nodes have the same priority"),
        (("AB:AB:AB", "AB:zz:AB"), "ha.nodes.lb2.fingerprint: expected a SHA-256"),
        (("address: 10.99.0.12", "address: lb2.example"), "ha.nodes.lb2.address: expected an IP"),
        (
            ("address: 10.99.0.12", "address: 10.99.0.11"),
            "ha.nodes: the two nodes have the same address",
        ),
        (
            ("interface: eth0", "interface: eth0 with space"),
            "ha.interface: 'eth0 with space' is not",
        ),
        (("  preempt: false\n", "  preempt: false\n  peer: 10.0.0.1\n"), "ha.peer: unknown key"),
        ((", sync_cert: ha/lb2.pem", ""), "ha.nodes.lb2.sync_cert: required with sync"),
        (("role: master", "role: primary"), "ha.nodes.lb1.role:"),
    ],
)
def test_problems_name_the_line_and_key(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as caught:
        load_text(text, "lb.yaml")
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert all(problem.startswith("lb.yaml:") for problem in caught.value.problems)


def test_a_pair_has_two_nodes() -> None:
    text = "\n".join(line for line in GOOD.splitlines() if "lb2:" not in line)
    with pytest.raises(ConfigError, match=r"ha\.nodes: a pair has two nodes, got 1"):
        load_text(text, "lb.yaml")
