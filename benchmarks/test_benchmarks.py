"""Tests of the bench harness itself: `.venv/bin/python -m pytest benchmarks -q`.

The parsing, report and configuration pieces are pure; the last tests start the real nginx
backend on loopback and put a short wrk run through it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import certs
import harness
import instructions
import loadgen
import memory
import pound
import profiling
import pytest
import report
import run
import servers
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

RESULT = loadgen.Result(
    seconds=10.0,
    requests=1000,
    bytes=1,
    socket_errors=0,
    bad_status=0,
    p50_us=500.0,
    p99_us=2000.0,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "BENCH-RESULT 10000000 50000 1 0 0 0 0 0 512.0 2048.5",
            loadgen.Result(10.0, 50000, 1, 0, 0, 512.0, 2048.5, ""),
        ),
        (
            "Running 10s test\nBENCH-RESULT 2000000 10 5 1 2 3 4 5 1.0 9.0\n",
            loadgen.Result(
                2.0,
                10,
                5,
                1 + 2 + 3 + 5,
                4,
                1.0,
                9.0,
                "connect 1, read 2, write 3, status 4, timeout 5",
            ),
        ),
    ],
)
def test_parse_reads_the_marker_line(line: str, expected: loadgen.Result) -> None:
    assert loadgen.parse(line) == expected


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("", "printed no result line"),
        ("Requests/sec: 100\n", "printed no result line"),
        ("BENCH-RESULT 1 2 3\n", "malformed result line"),
        ("BENCH-RESULT x 0 0 0 0 0 0 0 1 1\n", "could not convert"),
    ],
)
def test_parse_rejects_output_without_a_good_line(output: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        loadgen.parse(output)


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0.0, "0us"), (999.0, "999us"), (1000.0, "1.00ms"), (2500.0, "2.50ms"), (3.5e6, "3.50s")],
)
def test_latency_units(micros: float, text: str) -> None:
    assert report.latency(micros) == text


def _row(
    target: str, rps: float, *, variant: str = "rsa2048", errors: int = 0, cpu_us: float = 100.0
) -> report.Row:
    result = loadgen.Result(1.0, int(rps), 0, errors, 0, 1.0, 1.0)
    return report.Row("handshake", variant, target, result, cpu_seconds=rps * cpu_us / 1e6)


@pytest.mark.parametrize(
    ("ours", "theirs", "verdict"),
    [
        (800.0, 1000.0, "meets"),
        (750.0, 1000.0, "meets"),
        (740.0, 1000.0, "below"),
        (747.0, 1000.0, "below"),  # printed 0.74, not a rounded-up 0.75
    ],
)
def test_handshake_ratio_against_the_target(ours: float, theirs: float, verdict: str) -> None:
    lines = report.ratio_lines("handshake", [_row("lbproxy", ours), _row("haproxy", theirs)])
    assert len(lines) == 1
    assert f"lbproxy/haproxy {math.floor(ours / theirs * 100) / 100:.2f} " in lines[0]
    assert f"[target 0.75: req/s {verdict}, per CPU meets]" in lines[0]


@pytest.mark.parametrize(
    ("ours_us", "theirs_us", "per_cpu", "verdict"),
    [(400.0, 300.0, "0.75", "meets"), (600.0, 300.0, "0.50", "below")],
)
def test_handshake_per_cpu_ratio(
    ours_us: float, theirs_us: float, per_cpu: str, verdict: str
) -> None:
    rows = [_row("lbproxy", 900.0, cpu_us=ours_us), _row("haproxy", 1000.0, cpu_us=theirs_us)]
    (line,) = report.ratio_lines("handshake", rows)
    assert f"lbproxy/haproxy 0.90 (per CPU {per_cpu})" in line
    assert f"[target 0.75: req/s meets, per CPU {verdict}]" in line


def test_ratio_with_errors_is_marked_and_missing_lines_are_skipped() -> None:
    rows = [
        _row("lbproxy", 500.0, errors=3),
        _row("haproxy", 1000.0),
        report.Row("handshake", "rsa2048", "nginx", note="nginx not installed"),
    ]
    (line,) = report.ratio_lines("handshake", rows)
    assert "lbproxy/haproxy 0.50*" in line
    assert "nginx" not in line


def test_no_lbproxy_figure_is_said() -> None:
    rows = [
        report.Row("plain", "100b", "lbproxy", note="did not start"),
        _row("haproxy", 10.0, variant="100b"),
    ]
    assert report.ratio_lines("plain", rows) == ["  100b: no lbproxy figure"]


def test_cpu_per_request_and_share() -> None:
    row = report.Row("plain", "100b", "haproxy", RESULT, cpu_seconds=5.0)
    assert row.cpu_us_per_request == pytest.approx(5000.0)
    assert row.cpu_share == pytest.approx(0.5)
    assert report.Row("plain", "100b", "haproxy").cpu_us_per_request is None


@pytest.mark.parametrize(
    ("cores", "cpu_seconds", "shared"),
    [((0.95, 0.5), 9.0, False), ((1.0, 1.0), 5.0, True), ((), 5.0, False)],
)
def test_shared_server_core_is_noted(
    cores: tuple[float, ...], cpu_seconds: float, shared: bool
) -> None:
    row = report.Row("plain", "100b", "haproxy", RESULT, cpu_seconds=cpu_seconds, cores=cores)
    text = report.render([row], seconds=10, connections=50)
    assert ("core 0 shared" in text) is shared


def test_table_shows_every_row_and_notes() -> None:
    rows = [
        report.Row("plain", "100b", "direct", RESULT, cpu_seconds=1.0),
        report.Row("plain", "100b", "lbproxy", note="did not start (exit 1)"),
    ]
    text = report.render(rows, seconds=10, connections=50)
    assert "  100  " in text  # 1000 requests in 10 s
    assert "did not start (exit 1)" in text
    assert "wrk -t1 -c50 -d10s" in text


@pytest.mark.parametrize("tls", [False, True])
def test_lbproxy_config_is_the_documented_yaml(tls: bool) -> None:
    bundle = Path("/tmp/b.pem") if tls else None
    data = yaml.safe_load(servers.lbproxy_conf(8443, 9000, bundle))
    assert data["global"] == {"access_log": False, "log_level": "warning"}
    (vs,) = data["virtual_servers"]
    assert vs["real_servers"] == [{"label": "nginx", "address": "127.0.0.1:9000"}]
    assert vs["health_check"] == {"enabled": False}
    if tls:
        assert vs["bind"] == [{"address": "127.0.0.1:8443", "tls": {"certificate": "/tmp/b.pem"}}]
    else:
        assert vs["bind"] == "127.0.0.1:8443"


@pytest.mark.parametrize(
    ("bundle", "bind"),
    [
        (None, "bind 127.0.0.1:8443\n"),
        (Path("/x.pem"), "bind 127.0.0.1:8443 ssl crt /x.pem alpn http/1.1\n"),
    ],
)
def test_haproxy_config(bundle: Path | None, bind: str) -> None:
    text = servers.haproxy_conf(8443, 9000, bundle)
    assert bind in text
    assert "nbthread 1" in text
    assert "server nginx 127.0.0.1:9000" in text


@pytest.mark.parametrize(
    ("env", "cases"),
    [
        ({}, ("plain", "tls", "handshake", "resumed", "memory")),
        ({"BENCH_CASES": "plain"}, ("plain",)),
        ({"BENCH_CASES": "tls"}, ("tls", "handshake", "resumed")),
        ({"BENCH_CASES": "handshake,plain"}, ("plain", "handshake")),
        ({"BENCH_CASES": "tls-keepalive"}, ("tls",)),
    ],
)
def test_settings_cases(
    env: dict[str, str], cases: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BENCH_CASES", "BENCH_DURATION", "BENCH_TARGETS", "BENCH_SIZES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = run.settings_from_env()
    assert settings.cases == cases
    assert settings.seconds == run.DEFAULT_DURATION


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BENCH_CASES", "fast", "BENCH_CASES: choose from"),
        ("BENCH_TARGETS", "envoy", "BENCH_TARGETS: choose from"),
        ("BENCH_DURATION", "ten", "not a number of seconds"),
        ("BENCH_DURATION", "0.5", "at least 1 second"),
        ("BENCH_CONNECTIONS", "-3", "not a positive whole number"),
        ("BENCH_REPEAT", "0", "not a positive whole number"),
    ],
)
def test_settings_errors_are_one_line(
    name: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(harness.BenchError, match=message) as caught:
        run.settings_from_env()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key_type", certs.KEY_TYPES)
def test_bundle_is_private_and_key_matches(key_type: str, tmp_path: Path) -> None:
    path = certs.make_bundle(tmp_path, key_type)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.PEM, public) == (
        cert.public_key().public_bytes(serialization.Encoding.PEM, public)
    )


def test_stat_cpu_counts_a_busy_child() -> None:
    child = subprocess.Popen(["python3", "-c", "while True: pass"])
    try:
        used = 0.0
        for _ in range(100):  # at most ~5 s: one clock tick of CPU takes 10 ms
            used = harness.cpu_seconds(child.pid)
            if used > 0:
                break
            time.sleep(0.05)
        assert used > 0
        assert child.pid in harness.descendants(child.pid)
    finally:
        child.kill()
        child.wait(timeout=5)


NEEDS = [name for name in ("nginx", "wrk") if harness.find_tool(name) is None]


@pytest.fixture
def backend() -> Iterator[tuple[harness.Child, int, Path]]:
    nginx = harness.find_tool("nginx")
    assert nginx is not None
    with tempfile.TemporaryDirectory(prefix="bench-test-") as tmp:
        workdir = Path(tmp)
        www = servers.make_docroot(workdir)
        port = harness.free_port()
        child = servers.start_backend(nginx, workdir, www, port, cpu=None)
        try:
            harness.wait_ready(child, port, "/64k", 65536, tls=False)
            yield child, port, workdir
        finally:
            harness.stop(child)
        assert not child.alive()


@pytest.mark.skipif(bool(NEEDS), reason=f"needs {' and '.join(NEEDS)} installed")
def test_wrk_against_the_real_backend(backend: tuple[harness.Child, int, Path]) -> None:
    child, port, workdir = backend
    wrk = harness.find_tool("wrk")
    assert wrk is not None
    result = loadgen.run(
        wrk,
        f"http://127.0.0.1:{port}/100b",
        script=loadgen.write_script(workdir),
        seconds=1,
        connections=4,
        cpu=None,
    )
    assert result.requests > 0
    assert result.errors == 0
    assert result.p50_us <= result.p99_us
    # The worker is a child of the master: its CPU time is counted.
    assert len(harness.descendants(child.pid)) >= 2


@pytest.mark.skipif(bool(NEEDS), reason=f"needs {' and '.join(NEEDS)} installed")
def test_connection_close_makes_new_connections(backend: tuple[harness.Child, int, Path]) -> None:
    _, port, workdir = backend
    wrk = harness.find_tool("wrk")
    assert wrk is not None
    result = loadgen.run(
        wrk,
        f"http://127.0.0.1:{port}/100b",
        script=loadgen.write_script(workdir),
        seconds=1,
        connections=2,
        cpu=None,
        close=True,
    )
    assert result.requests > 0
    assert result.errors == 0


def test_a_server_that_exits_is_reported(tmp_path: Path) -> None:
    child = harness.start(
        "broken", ["python3", "-c", "import sys; sys.exit('no config')"], workdir=tmp_path, cpu=None
    )
    with pytest.raises(harness.BenchError, match="broken exited with status 1"):
        harness.wait_ready(child, harness.free_port(), "/", 0, tls=False)
    assert "no config" in child.log_tail()
    harness.stop(child)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(bool(NEEDS), reason=f"needs {' and '.join(NEEDS)} installed")
def test_sigterm_mid_run_stops_everything_and_removes_the_temp_dir() -> None:
    env = dict(
        os.environ,
        BENCH_CASES="plain",
        BENCH_TARGETS="direct",
        BENCH_SIZES="100b",
        BENCH_DURATION="30",
        BENCH_WARMUP="0",
    )
    bench = subprocess.Popen(
        [sys.executable, str(Path(run.__file__))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        workdir = None
        for _ in range(200):  # up to ~20 s for the backend to start and wrk to begin
            wrk = [
                pid
                for pid in harness.descendants(bench.pid)
                if Path(f"/proc/{pid}/comm").exists()
                and Path(f"/proc/{pid}/comm").read_text().strip() == "wrk"
            ]
            if wrk:
                args = Path(f"/proc/{wrk[0]}/cmdline").read_bytes().split(b"\0")
                script = next(a for a in args if a.endswith(b"done.lua"))
                workdir = Path(script.decode()).parent
                break
            time.sleep(0.1)
        assert workdir is not None, "wrk never started"
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode == 130
        assert "interrupted" in stderr
        assert "Traceback" not in stderr
        assert _processes_mentioning(str(workdir)) == []
        assert not workdir.exists()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
ACCEPT_POLL = 0.1  # how often the test server's accept loop looks at its stop flag


class _TlsCounter:
    """A small threaded TLS server on 127.0.0.1 that answers every request and closes, and
    counts how many handshakes resumed a session."""

    def __init__(self, bundle: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(bundle))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(ACCEPT_POLL)
        self.port: int = self.listener.getsockname()[1]
        self.full = 0
        self.resumed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                    tls.sendall(ANSWER)
                    if tls.session_reused:
                        self.resumed += 1
                    else:
                        self.full += 1
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.mark.skipif(
    harness.find_tool("wrk") is None or harness.find_tool("cc") is None,
    reason="needs wrk and a C compiler (cc) installed",
)
@pytest.mark.parametrize("shim", [False, True])
def test_wrk_resumes_sessions_unless_the_shim_is_loaded(shim: bool, tmp_path: Path) -> None:
    wrk = harness.find_tool("wrk")
    assert wrk is not None
    preload, why = loadgen.build_no_resume(tmp_path) if shim else (None, "")
    assert why == ""
    server = _TlsCounter(certs.make_bundle(tmp_path, "ecdsa-p256"))
    try:
        result = loadgen.run(
            wrk,
            f"https://127.0.0.1:{server.port}/",
            script=loadgen.write_script(tmp_path),
            seconds=1,
            connections=1,
            cpu=None,
            close=True,
            preload=preload,
        )
    finally:
        server.close()
    assert result.requests > 2
    assert server.full >= 1  # the first connection has nothing to resume
    if shim:
        assert server.resumed == 0
    else:
        assert server.resumed > 0


@pytest.mark.parametrize(
    ("filename", "function", "area"),
    [
        ("~", "<method 'do_handshake' of '_ssl._SSLSocket' objects>", "OpenSSL"),
        ("~", "<method 'send' of '_socket.socket' objects>", "socket system calls"),
        ("~", "<method 'poll' of 'select.epoll' objects>", "waiting in epoll"),
        ("~", "<built-in method builtins.len>", "other C built-ins"),
        ("/x/.venv/lib/python3.11/site-packages/h11/_connection.py", "next_event", "h11"),
        ("/x/.venv/lib/python3.11/site-packages/trio/_core/_run.py", "run", "trio"),
        (str(profiling.ROOT / "l7proxy" / "connection.py"), "run", "lbproxy: l7proxy"),
        (str(profiling.ROOT / "tls" / "sni.py"), "choose", "lbproxy: tls"),
        ("/nowhere/else.py", "f", "other Python"),
        ("<frozen importlib._bootstrap>", "_find_and_load", "standard library"),
    ],
)
def test_profile_areas(filename: str, function: str, area: str) -> None:
    assert profiling.area_of(filename, function).startswith(area)


def test_own_time_by_area_sums_a_real_profile(tmp_path: Path) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    sorted(range(100_000), key=lambda n: -n)
    profiler.disable()
    path = tmp_path / "p.prof"
    profiler.dump_stats(str(path))
    areas = dict(profiling.own_time_by_area(pstats.Stats(str(path))))
    assert "other C built-ins" in areas  # sorted() itself
    assert sum(areas.values()) > 0
    assert "own time by area" in profiling.area_table(path)


@pytest.mark.parametrize("key_type", certs.KEY_TYPES)
def test_tls_floor_times_real_handshakes(key_type: str, tmp_path: Path) -> None:
    import tls_floor

    micros = tls_floor.measure(certs.make_bundle(tmp_path, key_type), count=3)
    assert micros > 0


def test_compare_two_json_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = [report.Row("plain", "100b", "lbproxy", RESULT, cpu_seconds=2.0).as_dict()]
    faster = loadgen.Result(10.0, 1500, 1, 0, 0, 400.0, 1500.0)
    new = [
        report.Row("plain", "100b", "lbproxy", faster, cpu_seconds=2.0).as_dict(),
        report.Row("plain", "100b", "haproxy", note="not installed").as_dict(),
    ]
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert run.main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 0
    out = capsys.readouterr().out
    assert "100 -> 150 (+50%)" in out
    assert "2,000.0 -> 1,333.3 (-33%)" in out
    assert "haproxy" in out


@pytest.mark.parametrize(
    "args", [["--compare"], ["--compare", "/nonexistent/a.json", "/nonexistent/b.json"]]
)
def test_compare_errors_are_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: ")
    assert err.count("\n") == 1


def test_disturbed_handshake_ratio_gets_no_req_s_verdict() -> None:
    ours = _row("lbproxy", 900.0, cpu_us=400.0)
    theirs = dataclasses.replace(_row("haproxy", 100.0, cpu_us=300.0), cores=(1.0, 1.0))
    (line,) = report.ratio_lines("handshake", [ours, theirs])
    assert "lbproxy/haproxy 9.00~ (per CPU 0.75)" in line
    assert "[target 0.75: per CPU meets]" in line


@pytest.mark.parametrize(
    ("others", "kept"),
    [
        ((0.5, 0.0, 0.3), 1),  # the run with the least other work on the server core
        ((0.0, 0.0, 0.0), 2),  # all clean: the fastest
    ],
)
def test_repeat_keeps_the_least_disturbed_run(others: tuple[float, ...], kept: int) -> None:
    rows = []
    for index, other in enumerate(others):
        result = loadgen.Result(1.0, 1000 + index, 0, 0, 0, 1.0, 1.0)
        share = 0.5  # server CPU seconds per second
        rows.append(report.Row("plain", "100b", "lbproxy", result, share, cores=(share + other,)))
    assert min(rows, key=run._disturbance) is rows[kept]


@pytest.mark.parametrize(
    ("value", "text"), [(0.29, "0.29"), (0.747, "0.74"), (0.75, "0.75"), (1.0, "1.00")]
)
def test_ratios_round_down_to_two_decimals(value: float, text: str) -> None:
    assert report._two(value) == text


def test_every_lbproxy_line_is_compared_with_pound_and_haproxy() -> None:
    rows = [
        _row("lbproxy", 500.0, variant="100b", cpu_us=400.0),
        _row("lbproxy-log", 450.0, variant="100b", cpu_us=440.0),
        _row("haproxy", 1000.0, variant="100b", cpu_us=40.0),
        _row("pound", 800.0, variant="100b", cpu_us=200.0),
    ]
    off, on = report.ratio_lines("plain", rows)
    assert "lbproxy/haproxy 0.50 (per CPU 0.10)" in off
    assert "lbproxy/pound 0.62 (per CPU 0.50)" in off
    assert on.startswith("  100b: lbproxy-log/lbproxy 0.90 (per CPU 0.90)")
    assert "lbproxy-log/pound 0.56 (per CPU 0.45)" in on
    assert "lbproxy-log/haproxy 0.45 (per CPU 0.09)" in on


def test_a_missing_lbproxy_log_line_is_said() -> None:
    rows = [
        _row("lbproxy", 500.0, variant="64k"),
        report.Row("plain", "64k", "lbproxy-log", note="did not start"),
        _row("pound", 500.0, variant="64k"),
    ]
    assert report.ratio_lines("plain", rows)[1] == "  64k: no lbproxy-log figure"


@pytest.mark.parametrize("access_log", [False, True])
def test_lbproxy_config_access_log(access_log: bool) -> None:
    data = yaml.safe_load(servers.lbproxy_conf(8443, 9000, None, access_log=access_log))
    assert data["global"]["access_log"] is access_log


@pytest.mark.parametrize(
    ("bundle", "listen"),
    [
        (None, "ListenHTTP\n    Address 127.0.0.1\n    Port 8443\n"),
        (Path("/x.pem"), 'ListenHTTPS\n    Cert "/x.pem"\n    Disable TLSv1_1\n'),
    ],
)
def test_pound_config(bundle: Path | None, listen: str) -> None:
    text = servers.pound_conf(8443, 9000, bundle)
    assert text.startswith("Daemon 0\nLogLevel 0\n")
    assert listen in text
    assert "Backend\n            Address 127.0.0.1\n            Port 9000\n" in text
    assert text.count("End") == 3


def test_pound_without_the_build_script_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POUND", raising=False)
    root = tmp_path / "checkout"
    root.mkdir()
    binary, why = pound.find(root)
    assert binary is None
    assert why == "Pound not built: no ../shared/anchors/build-pound.sh beside the repository"


def test_pound_named_by_the_environment_must_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POUND", "/nonexistent/pound")
    assert pound.find(run.ROOT) == (None, "POUND=/nonexistent/pound is not an executable file")


@pytest.mark.skipif(bool(NEEDS), reason=f"needs {' and '.join(NEEDS)} installed")
def test_pound_proxies_to_the_backend(backend: tuple[harness.Child, int, Path]) -> None:
    binary, why = pound.find(run.ROOT)
    if binary is None:
        pytest.skip(why)
    _, port, workdir = backend
    server = servers.start_proxy("pound", [binary], workdir, port, None, cpu=None)
    try:
        harness.wait_ready(server.child, server.port, "/64k", 65536, tls=False)
    finally:
        harness.stop(server.child)
    assert not server.child.alive()


def test_holding_backend_answers_once_all_requests_are_in() -> None:
    backend = memory.HoldingBackend(2)
    backend.thread.start()
    socks = [socket.create_connection(("127.0.0.1", p), timeout=5) for p in backend.ports * 2]
    try:
        backend.hold = len(socks)
        for sock in socks[:-1]:
            sock.sendall(memory.REQUEST)
        socks[0].settimeout(0.3)
        with pytest.raises(TimeoutError):  # held: one request is still missing
            socks[0].recv(1)
        socks[0].settimeout(5)
        socks[-1].sendall(memory.REQUEST)
        for sock in socks:
            memory.read_answer(sock)
        assert backend.open_connections == len(socks)
    finally:
        for sock in socks:
            sock.close()
        backend.stop()


def test_memory_per_idle_connection_of_a_real_lbproxy(tmp_path: Path) -> None:
    found = memory.measure(run.find_lbproxy(), tmp_path, 100, cpu=None)
    assert found.note == ""
    assert found.clients == 100
    assert 90 <= found.pooled <= 100  # the warm-up left one pooled connection per real server
    assert found.real_servers == 2
    assert found.per_client is not None
    assert found.per_pooled is not None
    text = memory.render(found)
    assert "idle keep-alive client connection: " in text
    assert "idle pooled server connection: " in text
    assert json.dumps(found.as_dict())


def test_memory_without_lbproxy_says_why(tmp_path: Path) -> None:
    found = memory.measure(["python3", "-c", "raise SystemExit(3)", "--"], tmp_path, 10, None)
    assert "exited with status 3" in found.note
    assert "not measured: " in memory.render(found)


def test_file_limit_is_raised_when_allowed() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        wanted = min(soft + 100, hard) if hard != resource.RLIM_INFINITY else soft + 100
        assert memory.raise_file_limit(wanted) >= wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_callgrind_totals_and_per_request(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text(
        "version: 1\ncreator: callgrind\nevents: Ir\nsummary: 123450\n\ntotals: 123456\n"
    )
    assert instructions.total_instructions(out) == 123456  # totals, as valgrind reports
    out.write_text("events: Ir\nsummary: 123450\n")
    assert instructions.total_instructions(out) == 123450
    found = instructions.Count(access_log=False, short=3_000_000_000, long=5_180_000_000)
    assert found.per_request == 1_090_000
    assert instructions.render(found) == (
        "access log off: 1.090 M instructions per request "
        "(1,090,000 = (5,180,000,000 - 3,000,000,000) / 2000)"
    )
    out.write_text("events: Ir\n")
    with pytest.raises(harness.BenchError, match="no instruction total"):
        instructions.total_instructions(out)
