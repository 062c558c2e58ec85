"""Config sync on loopback: the real receiver and sender, pinned TLS, staging and refusal."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat

import pytest
import trio

from config.loader import load_file
from l7proxy import ha_bundle, ha_sync
from l7proxy.cli import main
from tests.e2e.process import free_port

CONFIG = """\
global:
  admin_socket: admin.sock
virtual_servers:
  - label: web
    bind: 127.0.0.1:{port}
    real_servers:
      - {{label: rs1, address: "127.0.0.1:9"}}
{extra}ha:
  router_id: 7
  interface: lo
  vips: [127.0.0.5/8]
  nodes:
    lb1: {{address: 127.0.0.1, priority: 150, sync_cert: ha/lb1.pem}}
    lb2: {{address: 127.0.0.2, priority: 100, sync_cert: ha/lb2.pem}}
  sync:
    key: ha/sync.key
    port: {sync_port}
"""


class Pair:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.sync_port = free_port("127.0.0.2")
        self.web_port = free_port()
        self.a, self.b = tmp / "a", tmp / "b"
        for folder, name in ((self.a, "lb1"), (self.b, "lb2")):
            assert main(["ha", "keygen", name, "--dir", str(folder / "ha")]) == 0
        shutil.copy(self.a / "ha" / "lb1.pem", self.b / "ha")
        shutil.copy(self.b / "ha" / "lb2.pem", self.a / "ha")
        self.write(self.a / "lb.yaml")
        self.write(self.b / "lb.yaml")

    def write(self, path: pathlib.Path, extra: str = "", **changes: str) -> pathlib.Path:
        text = CONFIG.format(port=self.web_port, sync_port=self.sync_port, extra=extra)
        for old, new in changes.items():
            text = text.replace(old, new)
        path.write_text(text)
        return path

    def write_with_tls(self, path: pathlib.Path) -> pathlib.Path:
        """The web bind with TLS from certs/site.pem (with certs/site.key beside it)."""
        plain = f"    bind: 127.0.0.1:{self.web_port}\n"
        tls = (
            f"    bind:\n      - {{address: '127.0.0.1:{self.web_port}', "
            "tls: {certificate: certs/site.pem}}\n"
        )
        return self.write(path, **{plain: tls})

    async def send(self, path: pathlib.Path) -> ha_bundle.SyncAnswer:
        config = load_file(str(path))
        outcome: ha_bundle.SyncAnswer | ha_sync.SyncError
        async with trio.open_nursery() as nursery:
            await nursery.start(ha_sync.receive_forever, str(self.b / "lb.yaml"), "lb2")
            try:
                outcome, _ = await trio.to_thread.run_sync(ha_sync.send, config, str(path), "lb1")
            except ha_sync.SyncError as error:
                outcome = error
            nursery.cancel_scope.cancel()
        if isinstance(outcome, ha_sync.SyncError):
            raise outcome
        return outcome


@pytest.fixture
def pair(tmp_path: pathlib.Path) -> Pair:
    return Pair(tmp_path)


async def test_sync_places_files_and_keeps_keys_private(pair: Pair) -> None:
    (pair.a / "certs").mkdir()
    assert main(["ha", "keygen", "site", "--dir", str(pair.a / "certs")]) == 0
    # A certificate with its key beside it: the key is named by the sidecar rule.
    os.rename(pair.a / "certs" / "sync.key", pair.a / "certs" / "site.key")
    source = pair.write_with_tls(pair.a / "lb.yaml")
    with trio.fail_after(60):
        answer = await pair.send(source)
    assert answer.ok, answer.lines
    assert (pair.b / "lb.yaml").read_bytes() == source.read_bytes()
    key = pair.b / "certs" / "site.key"
    assert key.read_bytes() == (pair.a / "certs" / "site.key").read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pair.b / "certs" / "site.pem").stat().st_mode) == 0o644
    # No proxy runs on b: the files are in place and the answer says so.
    assert any("not running" in line for line in answer.lines), answer.lines
    assert not [p for p in pair.b.iterdir() if p.name.startswith(".lbproxy-sync-")]


async def test_broken_configuration_is_refused_with_its_lines(pair: Pair) -> None:
    before = (pair.b / "lb.yaml").read_bytes()
    (pair.a / "certs").mkdir()
    (pair.a / "certs" / "site.pem").write_text("not a certificate\n")
    broken = pair.write_with_tls(pair.a / "broken.yaml")
    with trio.fail_after(60):
        answer = await pair.send(broken)
    assert not answer.ok
    assert "lb2 keeps its configuration:" in answer.lines
    assert any("site.pem" in line for line in answer.lines), answer.lines
    assert (pair.b / "lb.yaml").read_bytes() == before
    assert not (pair.b / "certs").exists()


async def test_a_sender_without_the_pinned_key_is_refused(pair: Pair) -> None:
    # The sender's lb1 key and certificate replaced: b still pins the original lb1.pem.
    os.unlink(pair.a / "ha" / "sync.key")
    os.unlink(pair.a / "ha" / "lb1.pem")
    assert main(["ha", "keygen", "lb1", "--dir", str(pair.a / "ha")]) == 0
    before = (pair.b / "lb.yaml").read_bytes()
    with trio.fail_after(60), pytest.raises(ha_sync.SyncError):
        await pair.send(pair.a / "lb.yaml")
    assert (pair.b / "lb.yaml").read_bytes() == before


async def test_a_receiver_with_another_key_is_refused(pair: Pair) -> None:
    # The sender's copy of lb2.pem is fine, but the fingerprint it pins names another one.
    pair.write(
        pair.a / "lb.yaml",
        **{"sync_cert: ha/lb2.pem}": "sync_cert: ha/lb2.pem, fingerprint: '" + "ab" * 32 + "'}"},
    )
    config = load_file(str(pair.a / "lb.yaml"))
    problems = ha_sync.check_files(config)
    assert problems, problems
    assert problems[0].startswith("ha.nodes.lb2.fingerprint:"), problems
    with trio.fail_after(60), pytest.raises(ha_sync.SyncError, match="pinned"):
        await pair.send(pair.a / "lb.yaml")


async def test_replaced_files_keep_their_owner(pair: Pair) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing owners needs root")
    target = pair.b / "lb.yaml"
    os.chown(target, 4321, 4321)  # as if owned by the proxy's unprivileged user
    with trio.fail_after(60):
        answer = await pair.send(pair.a / "lb.yaml")
    assert answer.ok, answer.lines
    assert (target.stat().st_uid, target.stat().st_gid) == (4321, 4321)
