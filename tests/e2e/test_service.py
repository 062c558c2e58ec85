"""``lbproxy run`` as a system service: systemd notifications, the pidfile, dropping
privileges, the unit file."""

from __future__ import annotations

import datetime
import http.client
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trustme

from tests.e2e.process import ROOT, STARTUP_TIMEOUT, free_port, lbproxy_command, wait_listening

pytestmark = pytest.mark.e2e

UNIT = ROOT / "packaging" / "systemd" / "lbproxy.service"


@contextmanager
def started(
    config: pathlib.Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``lbproxy run -c config`` with output in files next to the config; killed at the end."""
    with config.with_suffix(".out").open("wb") as out, config.with_suffix(".err").open("wb") as err:
        proc = subprocess.Popen(
            [*lbproxy_command(), "run", "-c", str(config)],
            cwd=config.parent,
            stdout=out,
            stderr=err,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stderr_of(config: pathlib.Path) -> str:
    return config.with_suffix(".err").read_text(errors="replace")


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_for_text(path: pathlib.Path, text: str) -> None:
    """Until ``path`` holds ``text``: the listening socket answers from the bind on, and what
    the proxy does next (the pidfile, the switch of user) comes just after."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} never in {path}"
        time.sleep(0.05)


def listening_socket() -> socket.socket:
    """A real server that only accepts: enough for TCP health checks, and it sees each probe."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def config_text(port: int, servers: list[int], extra: str = "", check: str = "") -> str:
    lines = [
        "global:",
        "  grace: 5s",
        *[f"  {line}" for line in extra.splitlines()],
        "virtual_servers:",
        "  - label: www",
        f'    bind: "127.0.0.1:{port}"',
        f"    health_check: {{{check or 'enabled: false'}}}",
        "    real_servers:",
        *[f'      - {{label: s{i}, address: "127.0.0.1:{p}"}}' for i, p in enumerate(servers)],
    ]
    return "\n".join(lines) + "\n"


class NotifyEvents:
    """A fake ``$NOTIFY_SOCKET`` and the probes of the real servers, in the order they happen."""

    def __init__(self, path: pathlib.Path, servers: list[socket.socket]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.servers = servers
        self.events: list[str] = []
        self.probed: set[int] = set()

    def poll_until(self, wanted: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """Record events until a notification containing ``wanted``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([*self.servers, self.sock], [], [], 0.2)
            # The servers first: a probe accepted before a datagram was sent is seen first.
            for server in self.servers:
                if server in readable:
                    conn, _ = server.accept()
                    conn.close()
                    index = self.servers.index(server)
                    if index not in self.probed:
                        self.probed.add(index)
                        self.events.append(f"probe {index}")
            if self.sock in readable:
                message = self.sock.recv(4096).decode()
                self.events.append(message)
                if wanted in message:
                    return message
        raise TimeoutError(f"no {wanted} notification; saw {self.events}")


def test_systemd_hears_ready_after_binds_and_first_checks_reloading_and_stopping(
    tmp_path: pathlib.Path,
) -> None:
    servers = [listening_socket(), listening_socket()]
    ports = [s.getsockname()[1] for s in servers]
    port = free_port()
    config = tmp_path / "lb.yaml"
    # A long interval: the first round is spread over it, so READY visibly waits for it.
    config.write_text(config_text(port, ports, check="interval: 2s, timeout: 1s"))
    notify = NotifyEvents(tmp_path / "notify", servers)
    with started(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}) as proc:
        ready = notify.poll_until("READY=1")
        assert notify.events[:2] == ["probe 0", "probe 1"] or notify.events[:2] == [
            "probe 1",
            "probe 0",
        ], notify.events
        assert ready.splitlines() == [
            "READY=1",
            "STATUS=serving 1 virtual server(s), 2/2 server(s) up",
        ]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # bound before READY
        proc.send_signal(signal.SIGHUP)
        reloading = notify.poll_until("RELOADING=1")
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert notify.poll_until("READY=1").startswith("READY=1\nSTATUS=serving ")
        proc.send_signal(signal.SIGTERM)
        assert notify.poll_until("STOPPING=1").startswith("STOPPING=1")
        assert proc.wait(timeout=20) == 0
    notify.sock.close()
    for server in servers:
        server.close()


def test_abstract_notify_socket(tmp_path: pathlib.Path) -> None:
    name = f"lbproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(STARTUP_TIMEOUT)
    backend = listening_socket()
    port = free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(config_text(port, [backend.getsockname()[1]]))
    with started(config, env={"NOTIFY_SOCKET": "@" + name}) as proc:
        assert receiver.recv(4096).startswith(b"READY=1\n")
        proc.send_signal(signal.SIGTERM)
        assert receiver.recv(4096).startswith(b"STOPPING=1")
        assert proc.wait(timeout=20) == 0
    receiver.close()
    backend.close()


def test_pidfile_written_refuses_a_second_start_and_is_removed(tmp_path: pathlib.Path) -> None:
    backend = listening_socket()
    port, other_port = free_port(), free_port()
    pidfile = tmp_path / "run" / "lbproxy.pid"
    pidfile.parent.mkdir()
    first = tmp_path / "first.yaml"
    first.write_text(config_text(port, [backend.getsockname()[1]], "pidfile: run/lbproxy.pid"))
    second = tmp_path / "second.yaml"
    second.write_text(config_text(other_port, [backend.getsockname()[1]], f"pidfile: {pidfile}"))
    with started(first) as proc:
        wait_for_text(pidfile, f"{proc.pid}\n")
        assert pidfile.read_text() == f"{proc.pid}\n"
        refused = subprocess.run(
            [*lbproxy_command(), "run", "-c", str(second)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1] == (
            f"lbproxy: pidfile {pidfile}: lbproxy is already running as pid {proc.pid}"
        )
        assert "Traceback" not in refused.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not pidfile.exists()
    # A stale pidfile (a live process that is not lbproxy) does not stop a start.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        with started(first) as proc:
            wait_for_text(pidfile, f"{proc.pid}\n")
            assert pidfile.read_text() == f"{proc.pid}\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    backend.close()


def test_an_unknown_user_is_a_clear_startup_error(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(config_text(free_port(), [free_port()], "user: no-such-user-here"))
    result = subprocess.run(
        [*lbproxy_command(), "run", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "lbproxy: user 'no-such-user-here' does not exist on this machine"
    )


def free_privileged_port() -> int:
    for port in range(800, 1000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 800..999 on 127.0.0.1")


def ids_of(pid: int) -> dict[str, list[str]]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {key: fields[key].split() for key in ("Uid", "Gid", "Groups")}


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a start as root")
def test_started_as_root_it_serves_a_privileged_port_as_nobody(tmp_path: pathlib.Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    port, tls_port = free_privileged_port(), free_port()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.backend",
            "a",
            "127.0.0.1",
            str(backend_port := free_port()),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as backend:
        try:
            wait_listening("127.0.0.1", backend_port, backend)
            config = tmp_path / "lb.yaml"
            state = tmp_path / "state"
            config.write_text(
                "global:\n"
                "  user: nobody\n"
                f"  state_dir: {state}\n"
                "virtual_servers:\n"
                "  - label: www\n"
                f'    bind: ["127.0.0.1:{port}", {{address: "127.0.0.1:{tls_port}", tls: true}}]\n'
                "    health_check: {interval: 1s}\n"
                f'    real_servers: [{{label: a, address: "127.0.0.1:{backend_port}"}}]\n'
            )
            with started(config) as proc:
                wait_listening("127.0.0.1", port, proc)
                wait_listening("127.0.0.1", tls_port, proc)
                wait_for_text(config.with_suffix(".err"), "running as user nobody")
                ids = ids_of(proc.pid)
                assert ids["Uid"] == [str(nobody.pw_uid)] * 4
                assert ids["Gid"] == [str(nobody.pw_gid)] * 4
                assert ids["Groups"] == []
                assert [get(port, f"/{i}") for i in range(5)] == [200] * 5
                # The state directory (and the default certificate's key in it) is nobody's.
                assert state.stat().st_uid == nobody.pw_uid
                assert all(p.stat().st_uid == nobody.pw_uid for p in state.iterdir())
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0
            assert "Traceback" not in stderr_of(config)
        finally:
            backend.kill()


@pytest.mark.parametrize(
    ("euid", "egid", "allowed"),
    [(0, 0, True), (65534, 65534, True), (1000, 1000, False), (65534, 0, False)],
)
def test_only_root_or_the_user_itself_may_run_with_user(
    euid: int, egid: int, allowed: bool
) -> None:
    from l7proxy.service import Identity, ServiceError, check_can_become

    nobody = Identity("nobody", 65534, 65534)
    if allowed:
        check_can_become(nobody, euid, egid)
        return
    with pytest.raises(ServiceError, match="not as root, so it cannot switch users"):
        check_can_become(nobody, euid, egid)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_the_unit_file_verifies(tmp_path: pathlib.Path) -> None:
    # The unit names /opt/lbproxy/bin/lbproxy; verify checks that the command exists, so point
    # it at this checkout's command.
    text = UNIT.read_text().replace("/opt/lbproxy/bin/lbproxy", lbproxy_command()[0])
    unit = tmp_path / "lbproxy.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "lbproxy.service" not in result.stderr, result.stderr
    for line in (
        "Type=notify",
        "ExecStartPre=/opt/lbproxy/bin/lbproxy check -c /etc/lbproxy/lb.yaml",
        "ExecStart=/opt/lbproxy/bin/lbproxy run -c /etc/lbproxy/lb.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ):
        assert line in UNIT.read_text().splitlines(), line


def test_a_certificate_near_its_end_is_warned_about_at_start_and_at_reload(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    soon = ca.issue_cert("soon.example.com", not_after=now + datetime.timedelta(days=10, hours=1))
    later = ca.issue_cert("later.example.com", not_after=now + datetime.timedelta(days=90))
    for name, cert in (("soon", soon), ("later", later)):
        path = tmp_path / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o600)
    port, backend = free_port(), listening_socket()
    config = tmp_path / "lb.yaml"
    config.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        f'    bind: {{address: "127.0.0.1:{port}", tls: {{certificate: [soon.pem, later.pem]}}}}\n'
        "    health_check: {enabled: false}\n"
        f'    real_servers: [{{label: a, address: "127.0.0.1:{backend.getsockname()[1]}"}}]\n'
    )
    warning = (
        f"WARNING lbproxy.tls: {tmp_path / 'soon.pem'}: certificate soon.example.com "
        "expires in 10 day(s), on "
    )
    with started(config) as proc:
        wait_listening("127.0.0.1", port, proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while stderr_of(config).count(warning) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        while "SIGHUP: configuration reloaded" not in stderr_of(config):
            assert time.monotonic() < deadline, stderr_of(config)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = stderr_of(config)
    assert text.count(warning) == 2, text  # at start and at the reload
    assert "later.example.com" not in text
    backend.close()
