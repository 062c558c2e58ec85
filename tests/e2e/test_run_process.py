"""The built ``lbproxy`` command against real clients (curl, the standard HTTP client)."""

from __future__ import annotations

import http.client
import pathlib
import re
import shutil
import subprocess
import threading
import time

import pytest

from tests.e2e.process import backend, free_port, lbproxy, lbproxy_command

pytestmark = pytest.mark.e2e


def write_config(
    path: pathlib.Path, port: int, servers: list[tuple[str, int]], **extra: str
) -> None:
    lines = [
        "global: {grace: 10s}",
        "virtual_servers:",
        "  - label: www",
        f"    bind: 127.0.0.1:{port}",
        "    timeouts: {server: 10s}",
        "    real_servers:",
    ]
    lines += [f"      - {{label: {label}, address: 127.0.0.1:{p}}}" for label, p in servers]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def test_version_and_help_on_every_subcommand() -> None:
    out = subprocess.run(
        [*lbproxy_command(), "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert out.stdout.startswith("lbproxy ")
    commands = ["run", "check", "demo", "csr", "convert-pfx", "convert-cer", "install-cert"]
    for command in [*commands, "selfsigned", "show-cert"]:
        result = subprocess.run(
            [*lbproxy_command(), command, "--help"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, command
        assert "usage: lbproxy " + command in result.stdout


def test_check_reports_every_problem_with_file_line_and_key(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.yaml"
    write_config(good, 8080, [("web1", 8081)])
    ok = subprocess.run(
        [*lbproxy_command(), "check", "-c", str(good)], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:99999\n"
        "    real_servers:\n"
        "      - {label: no, address: 127.0.0.1:8081, wieght: 2}\n"
    )
    result = subprocess.run(
        [*lbproxy_command(), "check", "-c", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:3:") and "bind" in line for line in lines), lines
    assert any(f"{bad}:5:" in line and "label" in line for line in lines), lines
    assert any("wieght" in line and "weight" in line for line in lines), lines
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_the_process_with_keep_alive(tmp_path: pathlib.Path) -> None:
    port, b1, b2 = free_port(), free_port(), free_port()
    config = tmp_path / "lb.yaml"
    write_config(config, port, [("web1", b1), ("web2", b2)])
    with backend("web1", b1), backend("web2", b2), lbproxy(config, ("127.0.0.1", port)) as proxy:
        url = f"http://127.0.0.1:{port}/hello"
        result = subprocess.run(
            ["curl", "-sS", "-v", url, url, "-H", "X-Forwarded-For: 198.51.100.1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.split("\n")[:2]) == ["web1 GET /hello 0", "web2 GET /hello 0"]
        assert "Re-using existing connection" in result.stderr  # client keep-alive
        assert "x-seen-xff: 198.51.100.1, 127.0.0.1" in result.stderr.lower()
        assert proxy.terminate() == 0
    # One access-log line per request, HAProxy httplog-shaped.
    log_lines = [line for line in proxy.stdout().splitlines() if '"GET /hello HTTP/1.1"' in line]
    assert len(log_lines) == 2
    httplog = re.compile(
        r"^127\.0\.0\.1:\d+ \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3}\] www www/web[12] "
        r"\d+/0/\d+/\d+/\d+ 200 \d+ - - ---- \d+/\d+/\d+/\d+/0 0/0 "
        r'"GET /hello HTTP/1\.1" balance$'
    )
    for line in log_lines:
        assert httplog.match(line), line


def connected_to(port: int) -> bool:
    """An established TCP connection to 127.0.0.1:``port`` exists on this machine."""
    wanted = f"0100007F:{port:04X}"
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == wanted and fields[3] == "01":
            return True
    return False


def test_sigterm_lets_in_flight_requests_finish(tmp_path: pathlib.Path) -> None:
    port, b1 = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    write_config(config, port, [("web1", b1)])
    results: list[tuple[int, bytes]] = []

    def upload() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.putrequest("POST", "/slow")
        conn.putheader("Content-Length", "6")
        conn.endheaders()
        conn.send(b"abc")
        time.sleep(1.0)  # SIGTERM arrives while this request is in flight
        conn.send(b"def")
        resp = conn.getresponse()
        results.append((resp.status, resp.read()))
        conn.close()

    with backend("web1", b1), lbproxy(config, ("127.0.0.1", port)) as proxy:
        client = threading.Thread(target=upload)
        client.start()
        # SIGTERM once the request is in flight: lbproxy has connected to the real server.
        deadline = time.monotonic() + 10
        while not connected_to(b1):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status = proxy.terminate()
        client.join(timeout=20)
        assert status == 0
        assert results == [(200, b"web1 POST /slow 6\n")]
        # New connections are refused once it stopped accepting.
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
    assert "shutting down" in proxy.stderr()
