"""The runtime API end to end: the real ``lbproxy run`` with an admin socket, two real servers,
and operators' tools (a plain unix socket, ``socat``, ``lbproxy ctl``).

A drain applies at once (new clients avoid the server, its cookie holders still reach it, stats
say DRAIN), survives SIGHUP and, through the state file, a restart; a timed drain ends in maint;
bad commands get HAProxy's texts; the socket has the configured mode.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from tests.e2e.process import Lbproxy, backend, free_port, lbproxy, lbproxy_command
from tests.e2e.test_failover import get

pytestmark = pytest.mark.e2e

ANSWER_TIMEOUT = 10.0
WAIT_LIMIT = 10.0  # a log line or a state we wait for must come within this
POLL = 0.05
NEW_CLIENTS = 6  # round robin over two servers would give web1 three of these
MODE = 0o640


def ask(path: pathlib.Path, line: str) -> str:
    """One command line over a plain unix socket; the proxy closes after answering."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWER_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode()


def stat_rows(path: pathlib.Path) -> dict[str, dict[str, str]]:
    """``show stat`` as {"pool/server": {column: value}}, whichever names the CSV uses for the
    pool and server columns (HAProxy's pxname/svname or pool/label)."""
    lines = ask(path, "show stat").strip().splitlines()
    header = lines[0].removeprefix("# ").split(",")
    pool_col, server_col = ("pxname", "svname") if "pxname" in header else ("pool", "label")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        rows[f"{row[pool_col]}/{row[server_col]}"] = row
    return rows


def wait_for(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL)
    raise AssertionError(f"not within {WAIT_LIMIT}s: {what}")


@dataclass
class Setup:
    dir: pathlib.Path
    config: pathlib.Path
    sock: pathlib.Path
    state: pathlib.Path
    port: int
    proxy: Lbproxy

    def status(self, server: str) -> str:
        return stat_rows(self.sock)[f"www/{server}"]["status"]

    def weight(self, server: str) -> str:
        row = stat_rows(self.sock)[f"www/{server}"]
        return row.get("weight", "")


def write_config(
    setup_dir: pathlib.Path, port: int, ports: dict[str, int], persistence: str
) -> None:
    servers = "\n".join(
        f"      - {{label: {label}, address: 127.0.0.1:{p}, weight: 4}}"
        for label, p in ports.items()
    )
    (setup_dir / "lb.yaml").write_text(
        f"""global:
  grace: 1s
  admin_socket: {{path: admin.sock, mode: {MODE:04o}}}
  state_file: server-state
virtual_servers:
  - label: www
    bind: 127.0.0.1:{port}
    persistence: {persistence}
    real_servers:
{servers}
"""
    )


@contextmanager
def running(tmp_path: pathlib.Path, persistence: str = "{cookie: SERVERID}") -> Iterator[Setup]:
    port = free_port()
    ports = {"web1": free_port(), "web2": free_port()}
    write_config(tmp_path, port, ports, persistence)
    with ExitStack() as stack:
        for label, p in ports.items():
            stack.enter_context(backend(label, p))
        proxy = stack.enter_context(lbproxy(tmp_path / "lb.yaml", ("127.0.0.1", port)))
        sock = tmp_path / "admin.sock"
        wait_for(sock.exists, "the admin socket is created")
        yield Setup(tmp_path, tmp_path / "lb.yaml", sock, tmp_path / "server-state", port, proxy)


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lbproxy_command(), "ctl", *args],
        capture_output=True,
        text=True,
        timeout=ANSWER_TIMEOUT,
        check=False,
    )


def test_drain_applies_at_once_and_survives_reload_and_restart(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as setup:
        mode = os.stat(setup.sock).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == MODE

        assert ask(setup.sock, "set server www/web1 state drain") == "\n"
        # All right after the command: no check interval, no reload in between.
        assert setup.status("web1") == "DRAIN"
        assert {get(setup.port, "127.0.0.1").server for _ in range(NEW_CLIENTS)} == {"web2"}
        assert get(setup.port, "127.0.0.1", cookie="web1").server == "web1"
        assert "admin socket: server www/web1 state ready -> drain" in setup.proxy.stderr()
        assert ask(setup.sock, "set server www/web2 weight 50%") == "\n"
        assert setup.weight("web2") == "2"
        assert " www 1 web1 " in setup.state.read_text()  # written on the change

        # HAProxy's texts for bad commands; ctl's exit status says error.
        assert ask(setup.sock, "set server www/nope state drain") == "No such server.\n\n"
        assert ask(setup.sock, "set server nope/web1 state drain") == "No such backend.\n\n"
        assert ask(setup.sock, "set server web1 state drain") == "Require 'backend/server'.\n\n"
        assert ask(setup.sock, "frobnicate").startswith(
            "Unknown command: 'frobnicate'. Please enter one of the following commands only:\n"
        )
        bad = ctl("-s", str(setup.sock), "set", "server", "www/nope", "state", "drain")
        assert (bad.returncode, bad.stdout) == (1, "No such server.\n\n")
        good = ctl("-c", str(setup.config), "show", "info")
        assert good.returncode == 0
        assert f"Pid: {setup.proxy.proc.pid}\n" in good.stdout
        health = ctl("-c", str(setup.config), "health")
        assert health.returncode == 0
        assert health.stdout.startswith("ok: 1 bind(s) open")

        setup.proxy.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "SIGHUP: configuration reloaded" in setup.proxy.stderr(), "the reload is done"
        )
        assert (setup.status("web1"), setup.weight("web2")) == ("DRAIN", "2")
        assert get(setup.port, "127.0.0.1").server == "web2"
        assert ask(setup.sock, "show health").startswith("ok")  # the same socket, kept

        # A reload that changes the mode replaces the socket at the same path.
        text = setup.config.read_text()
        setup.config.write_text(text.replace(f"mode: {MODE:04o}", "mode: 0600"))
        setup.proxy.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: setup.proxy.stderr().count("SIGHUP: configuration reloaded") == 2,
            "the second reload is done",
        )
        wait_for(lambda: stat.S_IMODE(os.stat(setup.sock).st_mode) == 0o600, "the new mode")
        assert setup.status("web1") == "DRAIN"

        assert setup.proxy.terminate() == 0
        assert not setup.sock.exists()
        missing = ctl("-s", str(setup.sock), "health")
        assert missing.returncode == 1
        assert missing.stderr.startswith(f"lbproxy ctl: cannot connect to {setup.sock}")

        again = Lbproxy(setup.config)
        try:
            again.wait_listening("127.0.0.1", setup.port)
            wait_for(setup.sock.exists, "the admin socket is created again")
            assert (setup.status("web1"), setup.weight("web2")) == ("DRAIN", "2")
            assert "server www/web1: state drain, weight 4 restored" in again.stderr()
            assert {get(setup.port, "127.0.0.1").server for _ in range(NEW_CLIENTS)} == {"web2"}
        finally:
            again.terminate()


def test_timed_drain_ends_in_maint_at_its_deadline(tmp_path: pathlib.Path) -> None:
    with running(tmp_path, persistence="{source: {timeout: 5m}}") as setup:
        holder = get(setup.port, "127.0.0.1")  # its source entry names a server for 5 minutes
        server = holder.server
        assert ask(setup.sock, f"set server www/{server} state drain 1s") == "\n"
        assert setup.status(server) == "DRAIN"
        assert get(setup.port, "127.0.0.1").server == server  # the persistent client still
        wait_for(lambda: setup.status(server) == "MAINT", "the drain deadline moves it to MAINT")
        assert (
            f"server www/{server} drained (the drain deadline passed): now maint"
            in setup.proxy.stderr()
        )
        assert get(setup.port, "127.0.0.1").server != server


def test_drain_ends_when_the_last_client_left(tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as setup:
        assert ask(setup.sock, "set server www/web1 state drain 10m") == "\n"
        wait_for(lambda: setup.status("web1") == "MAINT", "no client left: MAINT")
        assert "www/web1 drained (its last persistent client left)" in setup.proxy.stderr()


def test_socat_and_prompt_mode(tmp_path: pathlib.Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is missing")

    def talk(sock: pathlib.Path, text: str) -> str:
        return subprocess.run(
            [socat, "stdio", f"UNIX-CONNECT:{sock}"],
            input=text,
            capture_output=True,
            text=True,
            timeout=ANSWER_TIMEOUT,
            check=True,
        ).stdout

    with running(tmp_path) as setup:
        lines = talk(
            setup.sock, "set server www/web1 state drain; show servers state www\n"
        ).splitlines()
        assert lines[:3] == ["", "1", lines[2]]
        assert lines[2].startswith("# be_id be_name srv_id")
        assert lines[3].split()[1:7] == ["www", "1", "web1", "127.0.0.1", "2", "8"]
        assert {get(setup.port, "127.0.0.1").server for _ in range(NEW_CLIENTS)} == {"web2"}
        interactive = talk(setup.sock, "prompt\nenable server www/web1\nshow health\nquit\n")
        assert interactive == "\n> \n> ok: 1 bind(s) open\n\n> "
        assert setup.status("web1") == "UP"
