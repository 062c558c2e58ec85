"""``lbproxy run`` logging to syslog over UDP and to a file rotated under it (SIGUSR1)."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import time

import pytest

from tests.e2e.process import backend, free_port, wait_listening
from tests.e2e.test_service import get, started, stderr_of

pytestmark = pytest.mark.e2e

RFC5424_RE = re.compile(
    r"<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\d+) - - (?P<msg>.*)", re.S
)
RFC3164_RE = re.compile(
    r"<(?P<pri>\d+)>(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    r"(?P<app>[^\[]+)\[(?P<pid>\d+)\]: (?P<msg>.*)",
    re.S,
)
REQUESTS = 30  # after the syslog server went away; every one must still get its 200


def write_config(path: pathlib.Path, port: int, backend_port: int, log: str) -> None:
    path.write_text(
        "global:\n"
        "  grace: 5s\n"
        f"  log: {log}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        f'    bind: "127.0.0.1:{port}"\n'
        "    health_check: {enabled: false}\n"
        f'    real_servers: [{{label: a, address: "127.0.0.1:{backend_port}"}}]\n'
    )


def receive_until(sock: socket.socket, needle: str, timeout: float = 10.0) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(65536).decode())
        except TimeoutError:
            break
        if needle in messages[-1]:
            return messages
    raise AssertionError(f"no message with {needle!r} in {messages}")


@pytest.mark.parametrize(("fmt", "pattern"), [("rfc5424", RFC5424_RE), ("rfc3164", RFC3164_RE)])
def test_syslog_gets_access_and_diagnostics_and_a_dead_one_costs_no_request(
    tmp_path: pathlib.Path, fmt: str, pattern: re.Pattern[str]
) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    syslog_port = receiver.getsockname()[1]
    port, backend_port = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    target = f"udp://127.0.0.1:{syslog_port}"
    write_config(
        config, port, backend_port, f"{{target: {target}, format: {fmt}, facility: local1}}"
    )
    with backend("a", backend_port), started(config) as proc:
        wait_listening("127.0.0.1", port, proc)
        assert get(port, "/first") == 200
        messages = receive_until(receiver, '"GET /first HTTP/1.1"')
        parsed = [pattern.fullmatch(m) for m in messages]
        assert all(parsed), (messages, stderr_of(config))
        by_text = {p["msg"]: p for p in parsed if p is not None}
        access = next(p for text, p in by_text.items() if "GET /first" in text)
        listening = next(p for text, p in by_text.items() if "listening: www on" in text)
        for match in (access, listening):
            assert int(match["pri"]) == 17 * 8 + 6  # local1.info
            assert match["host"] == socket.gethostname()
            assert match["app"] == "lbproxy"
            assert int(match["pid"]) == proc.pid
        assert access["msg"].startswith("127.0.0.1:")
        assert " www www/a " in access["msg"]
        assert " 200 " in access["msg"]
        receiver.close()  # the syslog server goes away
        assert [get(port, f"/after/{i}") for i in range(REQUESTS)] == [200] * REQUESTS
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, stderr_of(config)


def wait_for(path: pathlib.Path, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in (text := path.read_text()):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never reached {path}")


def test_the_log_file_is_reopened_on_sigusr1_after_rotation(tmp_path: pathlib.Path) -> None:
    port, backend_port = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    write_config(config, port, backend_port, "access.log")
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    with backend("a", backend_port), started(config) as proc:
        wait_listening("127.0.0.1", port, proc)
        assert get(port, "/before") == 200
        wait_for(log, '"GET /before HTTP/1.1"')
        log.rename(rotated)  # logrotate's rename
        assert get(port, "/between") == 200
        wait_for(rotated, '"GET /between HTTP/1.1"')  # still the open (renamed) file
        proc.send_signal(signal.SIGUSR1)  # logrotate's postrotate
        wait_for(log, "SIGUSR1: log files reopened")
        assert get(port, "/after") == 200
        wait_for(log, '"GET /after HTTP/1.1"')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "/after" not in rotated.read_text()
    assert "/before" not in log.read_text()
    assert "/between" not in log.read_text()
    # Diagnostics share the file: the start is in the old one, the stop in the new one.
    assert "listening: www on" in rotated.read_text()
    assert "SIGTERM: shutting down" in log.read_text()
    assert os.stat(log).st_mode & 0o777 == 0o640
