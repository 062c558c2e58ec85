"""Running wrk and reading its numbers.

A small Lua ``done`` hook prints one machine-readable line, so nothing depends on the layout of
wrk's human report.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError, find_tool, pinning

MARKER = "BENCH-RESULT"
DONE_SCRIPT = f"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{MARKER} %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.1f %.1f\\n",
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
# wrk's own limit for one response; a proxy slower than this has a problem worth counting.
WRK_TIMEOUT = "5s"
# wrk stops itself after the duration; this margin only guards against a hung wrk.
WRK_MARGIN = 30.0
NO_RESUME_SOURCE = Path(__file__).resolve().parent / "noresume.c"
COMPILE_TIMEOUT = 60.0  # a 20-line shared object; generous for a loaded machine


@dataclass(frozen=True)
class Result:
    seconds: float
    requests: int
    bytes: int
    socket_errors: int  # connect + read + write + timeout
    bad_status: int  # answers other than 2xx/3xx
    p50_us: float
    p99_us: float
    error_detail: str = ""  # e.g. "read 12, status 3": which kinds wrk counted

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.bad_status


def parse(output: str) -> Result:
    """The Result in wrk's output; ValueError when the marker line is missing or malformed."""
    for line in output.splitlines():
        if line.startswith(MARKER + " "):
            fields = line.split()[1:]
            if len(fields) != 10:
                raise ValueError(f"malformed result line: {line!r}")
            duration, requests, size, connect, read, write, status, timeout = (
                int(float(f)) for f in fields[:8]
            )
            kinds = zip(
                ("connect", "read", "write", "status", "timeout"),
                (connect, read, write, status, timeout),
                strict=True,
            )
            return Result(
                seconds=duration / 1e6,
                requests=requests,
                bytes=size,
                socket_errors=connect + read + write + timeout,
                bad_status=status,
                p50_us=float(fields[8]),
                p99_us=float(fields[9]),
                error_detail=", ".join(f"{kind} {n}" for kind, n in kinds if n),
            )
    raise ValueError("wrk printed no result line")


def write_script(folder: Path) -> Path:
    path = folder / "done.lua"
    path.write_text(DONE_SCRIPT)
    return path


def build_no_resume(folder: Path) -> tuple[Path | None, str]:
    """Compile noresume.c into ``folder``: (the shared object, "") or (None, why not)."""
    compiler = find_tool("cc") or find_tool("gcc")
    if compiler is None:
        return None, "no C compiler to build the no-resumption shim for wrk"
    target = folder / "noresume.so"
    argv = [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(NO_RESUME_SOURCE)]
    try:
        done = subprocess.run(
            [*argv, "-ldl"], capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, "compiling the no-resumption shim timed out"
    if done.returncode != 0 or not target.exists():
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        return None, f"the no-resumption shim did not compile: {first}"
    return target, ""


def run(
    wrk: str,
    url: str,
    *,
    script: Path,
    seconds: float,
    connections: int,
    cpu: int | None,
    close: bool = False,
    preload: Path | None = None,
) -> Result:
    """One wrk run: one thread, ``connections`` connections, keep-alive unless ``close``;
    ``preload`` (the no-resumption shim) makes every TLS connection a full handshake."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    argv += ["--timeout", WRK_TIMEOUT, "-s", str(script)]
    if close:
        # A new connection per request; for https a handshake, resumed unless ``preload``.
        argv += ["-H", "Connection: close"]
    argv.append(url)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_MARGIN,
            preexec_fn=pinning(cpu),
            env=None if preload is None else dict(os.environ, LD_PRELOAD=str(preload)),
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"wrk did not finish within {seconds + WRK_MARGIN:.0f}s") from error
    try:
        return parse(done.stdout)
    except ValueError as error:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"wrk failed ({error}): {detail[0]}") from error
