"""``lbproxy ha keepalived``: the text, keepalived's own check of it, and bad input."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest

from config.loader import load_text
from l7proxy.cli import main
from l7proxy.ha_keepalived import HaConfigError, keepalived_conf, read_auth_pass, this_node
from tests.ha import netns

KEEPALIVED = "/usr/sbin/keepalived"

CONFIG = """\
global:
  admin_socket: /run/lbproxy/admin.sock
virtual_servers:
  - label: web
    bind: 10.99.0.100:80
    real_servers:
      - {label: rs1, address: "10.99.0.31:8000"}
ha:
  router_id: 51
  interface: eth0
  vips: [10.99.0.100/24, {address: 10.99.1.100/24, interface: eth1}]
  auth_pass_file: vrrp.pass
  notify_master: /usr/local/bin/became-master
  nodes:
    lb1: {address: 10.99.0.11, role: master}
    lb2: {address: 10.99.0.12, role: backup}
"""


def write(tmp_path: pathlib.Path, text: str = CONFIG, password: str = "s3cret") -> str:
    (tmp_path / "vrrp.pass").write_text(password + "\n")
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return str(path)


def test_the_master_node_conf(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path)
    assert main(["ha", "keepalived", "-c", config, "--node", "lb1", "--python", "/usr/bin/py"]) == 0
    text = capsys.readouterr().out
    for line in (
        'script "/usr/bin/py -m l7proxy.ha_probe /run/lbproxy/admin.sock"',
        "interval 1",
        "fall 2",
        "rise 2",
        "state MASTER",
        "virtual_router_id 51",
        "priority 150",
        "advert_int 1",
        "unicast_src_ip 10.99.0.11",
        "10.99.0.12",
        "auth_pass s3cret",
        "10.99.0.100/24 dev eth0",
        "10.99.1.100/24 dev eth1",
        "lbproxy_health",
        'notify "/usr/bin/logger -t lbproxy-ha"',
        'notify_master "/usr/local/bin/became-master"',
    ):
        assert line in text, line
    assert "nopreempt" not in text


def test_without_preempt_both_start_as_backup() -> None:
    ha = load_text(CONFIG.replace("  nodes:", "  preempt: false\n  nodes:"), "lb.yaml").ha
    assert ha is not None
    for node in ha.nodes:
        text = keepalived_conf(ha, node, health_command="probe")
        assert "state BACKUP" in text
        assert "nopreempt" in text


def test_keepalived_accepts_the_file(tmp_path: pathlib.Path) -> None:
    if not os.path.exists(KEEPALIVED):
        pytest.skip("keepalived is not installed")
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    # keepalived -t also checks that the interfaces exist (and are not lo): it runs in a
    # namespace of its own that has an eth0 and an eth1, never on the host's interfaces.
    space = f"lbha{os.getpid() % 100000}-kt"
    netns.run(netns.IP, "netns", "add", space)
    try:
        netns.run(netns.IP, "-n", space, "link", "add", "eth0", "type", "veth", "peer", "eth1")
        config = write(tmp_path)
        for node in ("lb1", "lb2"):
            out = tmp_path / f"{node}.conf"
            assert main(["ha", "keepalived", "-c", config, "--node", node, "-o", str(out)]) == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the VRRP password
            checked = netns.run(
                netns.IP, "netns", "exec", space, KEEPALIVED, "-t", "-f", str(out), check=False
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        netns.run(netns.IP, "netns", "del", space, check=False)


def test_the_node_is_found_by_its_address_or_named() -> None:
    ha = load_text(CONFIG, "lb.yaml").ha
    assert ha is not None
    assert this_node(ha, {"127.0.0.1", "10.99.0.12"}, None).name == "lb2"
    assert this_node(ha, set(), "lb1").name == "lb1"
    with pytest.raises(HaConfigError, match="none of the node addresses"):
        this_node(ha, {"127.0.0.1"}, None)
    with pytest.raises(HaConfigError, match="no node named 'lb3'"):
        this_node(ha, set(), "lb3")


@pytest.mark.parametrize("password", ["", "longer than eight", "has space"])
def test_bad_vrrp_passwords(password: str) -> None:
    with pytest.raises(HaConfigError, match=r"vrrp\.pass"):
        read_auth_pass(password + "\n", "vrrp.pass")


def test_the_password_never_reaches_stderr(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, password="far-too-long-secret")
    assert main(["ha", "keepalived", "-c", config, "--node", "lb1"]) == 1
    err = capsys.readouterr().err
    assert "vrrp.pass" in err
    assert "far-too-long-secret" not in err


def test_check_reads_the_password_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path)
    os.unlink(tmp_path / "vrrp.pass")
    assert main(["check", "-c", config]) == 1
    assert "ha.auth_pass_file:" in capsys.readouterr().err


def test_the_probe_says_unhealthy_without_a_proxy(tmp_path: pathlib.Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "l7proxy.ha_probe", str(tmp_path / "none.sock")], timeout=30
    )
    assert probe.returncode == 1
