"""Process plumbing for the benchmarks: tools, ports, child processes, CPU accounting.

Every child is started in its own session so that stopping it also stops the workers it forked
(nginx master + worker), and every wait here has a bound.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# How long a server gets to answer its first request: nginx and HAProxy take milliseconds,
# lbproxy imports trio/h11/cryptography and may build TLS contexts, a second or two.
READY_TIMEOUT = 20.0
READY_POLL = 0.1
# SIGTERM, then this long before SIGKILL: nginx fast shutdown and HAProxy stop at once; lbproxy's
# grace applies only to in-flight requests, of which there are none between runs.
STOP_TIMEOUT = 10.0
# apt-get can be slow on a cold cache; bounded so the harness never hangs on the network.
APT_UPDATE_TIMEOUT = 300.0
APT_INSTALL_TIMEOUT = 600.0
# One probe request during the readiness check.
PROBE_TIMEOUT = 2.0
LOG_TAIL_LINES = 20


class BenchError(Exception):
    """A problem to report to the user in one line and exit 1."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def env_seconds(name: str, default: float) -> float:
    """A duration from the environment: "10", "2.5" or "10s"; BenchError when malformed."""
    raw = os.environ.get(name, "").strip().removesuffix("s")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise BenchError(f"{name} must not be negative")
    return value


def find_tool(name: str) -> str | None:
    """The tool on PATH, or in the sbin directories a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(names: list[str]) -> dict[str, str | None]:
    """Find each tool; when some are missing and we are root, apt-get install them once."""
    found = {name: find_tool(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing missing tools: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # RUNLEVEL=1 keeps the packages' maintainer scripts from starting system nginx/haproxy
        # services we did not ask for (invoke-rc.d honours it).
        env["RUNLEVEL"] = "1"
        try:
            subprocess.run(
                ["apt-get", "update"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=APT_UPDATE_TIMEOUT,
                check=False,
            )
            for name in missing:
                # One at a time: a package that is unavailable must not block the others.
                subprocess.run(
                    ["apt-get", "install", "-y", "--no-install-recommends", name],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=APT_INSTALL_TIMEOUT,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            say("package installation timed out")
        found = {name: find_tool(name) for name in names}
    return found


def required_tools(names: list[str]) -> list[str]:
    """The paths of the tools, installed if need be; BenchError naming those still missing."""
    tools = ensure_tools(names)
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise BenchError(f"{' and '.join(missing)} not found and could not be installed")
    return [path for path in tools.values() if path is not None]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the small race until the server binds is accepted:
    every server is checked for readiness before it is measured)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinning(cpu: int | None) -> Callable[[], None] | None:
    """A preexec hook pinning the child (and what it forks) to one CPU, if that CPU exists."""
    if cpu is None or cpu not in os.sched_getaffinity(0):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])


def start(
    name: str,
    argv: list[str],
    *,
    workdir: Path,
    cpu: int | None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``argv`` in its own session with output to ``workdir/name.log``."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pinning(cpu),
            env=env,
        )
    return Child(name, popen, log)


def stop(child: Child, first_signal: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the child and everything in its session; SIGKILL after ``timeout`` seconds."""
    pgid = child.pid  # start_new_session made it the group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, first_signal)
    try:
        child.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        child.popen.wait(timeout=STOP_TIMEOUT)
    # Workers that outlived their master (they should not) go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _client_tls() -> ssl.SSLContext:
    # The harness made the certificate itself a moment ago, for 127.0.0.1 only.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fetch(port: int, path: str, *, tls: bool) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port; returns status and body."""
    connection: http.client.HTTPConnection
    if tls:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=PROBE_TIMEOUT, context=_client_tls()
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class TlsProbe:
    version: str
    cipher: str
    session: ssl.SSLSession | None
    reused: bool


def _tls_get(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> TlsProbe:
    """One GET /100b over a new TLS connection, offering ``session`` for resumption."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT)
    with context.wrap_socket(raw, session=session) as tls:
        # Read before the exchange: once the server has closed, version() may be gone.
        version, cipher, reused = tls.version(), tls.cipher(), tls.session_reused
        tls.sendall(b"GET /100b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while tls.recv(65536):  # to the end: TLS 1.3 tickets arrive after the handshake
            pass
        return TlsProbe(
            version=version or "?",
            cipher=cipher[0] if cipher else "?",
            session=tls.session,
            reused=bool(reused),
        )


def tls_parameters(port: int) -> str:
    """Protocol and cipher an OpenSSL client with default settings (like wrk) negotiates, and
    whether the server resumes a session offered on a second connection."""
    try:
        context = _client_tls()  # a session resumes only through the context that made it
        first = _tls_get(port, context, None)
        second = _tls_get(port, context, first.session)
    except (OSError, ssl.SSLError) as error:
        return f"TLS probe failed: {error}"
    resumes = "resumes sessions" if second.reused else "no session resumption"
    return f"{first.version} {first.cipher}, {resumes}"


def wait_ready(
    child: Child,
    port: int,
    path: str,
    expect_len: int,
    *,
    tls: bool,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Wait until ``path`` answers 200 with ``expect_len`` bytes; BenchError otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited with status {child.popen.returncode}")
        try:
            status, body = fetch(port, path, tls=tls)
        except (OSError, http.client.HTTPException) as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if status == 200 and len(body) == expect_len:
                return
            last = f"status {status}, {len(body)} bytes instead of 200 and {expect_len}"
        time.sleep(READY_POLL)
    raise BenchError(f"{child.name} not ready after {timeout:.0f}s ({last})")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (nginx workers, for instance)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants, from /proc/PID/stat."""
    ticks = 0
    for member in descendants(pid):
        fields = _stat_fields(member)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLOCK_TICKS


def repin(pid: int, cpu: int) -> None:
    """Move pid and its descendants to one CPU (the backend changes core between phases)."""
    if cpu not in os.sched_getaffinity(0):
        return
    for member in descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(member, {cpu})


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) clock ticks since boot, from /proc/stat."""
    ticks: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values]
        # idle and iowait are the not-busy columns; guest time is already inside user.
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        total = sum(numbers[:8])
        ticks[int(name[3:])] = (total - idle, total)
    return ticks


def busy_shares(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[float, ...]:
    """Busy fraction of each CPU between two core_ticks() samples, by CPU number."""
    shares = []
    for cpu in sorted(after):
        busy0, total0 = before.get(cpu, (0, 0))
        busy1, total1 = after[cpu]
        elapsed = total1 - total0
        shares.append((busy1 - busy0) / elapsed if elapsed > 0 else 0.0)
    return tuple(shares)
