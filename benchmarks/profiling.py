"""`run.py --profile`: lbproxy under cProfile during one wrk run; prints where the time goes.

The profiler slows lbproxy down severalfold, so the req/s printed here is not a benchmark
figure; the proportions between functions are what to read.
"""

from __future__ import annotations

import argparse
import io
import pstats
import signal
import sys
import tempfile
from pathlib import Path

import certs
import harness
import loadgen
import servers
from harness import BenchError, say

SERVER_CPU = 0
LOAD_CPU = 1
DEFAULT_TOP = 30
DEFAULT_DURATION = 10.0  # as in run.py
# lbproxy's SIGINT handling may give in-flight requests its grace period (30 s by default);
# after a wrk run there are none, so this is a generous bound for writing the profile.
PROFILE_STOP_TIMEOUT = 45.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py --profile",
        description="Run lbproxy under cProfile during one wrk run and print the top functions.",
    )
    parser.add_argument("--size", choices=sorted(servers.FILES), default="100b")
    parser.add_argument(
        "--tls",
        choices=certs.KEY_TYPES,
        default=None,
        help="listen with TLS, with a certificate of this key type",
    )
    parser.add_argument(
        "--close",
        action="store_true",
        help="Connection: close, a new connection (and TLS handshake) per request",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --tls --close: let wrk resume its TLS session (default: full handshakes)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=harness.env_seconds("BENCH_DURATION", DEFAULT_DURATION),
        help="seconds of load (default: BENCH_DURATION or 10)",
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="functions per listing")
    parser.add_argument(
        "--output", type=Path, default=None, help="also keep the raw profile in this file"
    )
    return parser.parse_args(argv)


ROOT = Path(__file__).resolve().parent.parent
# C methods, by the module of their object: what the time inside them is really spent on.
C_AREAS = {
    "_ssl": "OpenSSL (handshakes, record encryption)",
    "_socket": "socket system calls",
    "select": "waiting in epoll",
}


AREA_CUTOFF = 0.001  # areas under 0.1 % of the own time are noise in this table


def area_of(filename: str, function: str) -> str:
    """The part of the stack a profile entry belongs to: a project package, a dependency, the
    standard library, or for C functions what they do."""
    if filename == "~":
        for module, area in C_AREAS.items():
            if f"of '{module}." in function:
                return area
        return "other C built-ins"
    if filename.startswith("<frozen "):
        return "standard library"
    path = Path(filename)
    for marker in ("site-packages", "dist-packages"):
        if marker in path.parts:
            after = path.parts[path.parts.index(marker) + 1 :]
            return after[0] if after else marker
    try:
        relative = path.resolve().relative_to(ROOT)
    except ValueError:
        return "standard library" if filename.startswith(sys.base_prefix) else "other Python"
    return f"lbproxy: {relative.parts[0]}" if len(relative.parts) > 1 else "lbproxy"


def own_time_by_area(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time summed per area, largest first."""
    totals: dict[str, float] = {}
    entries = stats.stats  # type: ignore[attr-defined]  # documented, but not in the stubs
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in entries.items():
        area = area_of(filename, function)
        totals[area] = totals.get(area, 0.0) + own
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


def area_table(profile: Path) -> str:
    rows = own_time_by_area(pstats.Stats(str(profile)))
    total = sum(seconds for _, seconds in rows) or 1.0
    width = max((len(area) for area, _ in rows), default=0)
    lines = ["===== own time by area ====="]
    lines += [
        f"  {area:<{width}}  {sec:7.3f}s  {sec / total:6.1%}"
        for area, sec in rows
        if sec / total >= AREA_CUTOFF
    ]
    return "\n".join(lines)


def top_functions(profile: Path, top: int) -> str:
    """The ``top`` functions by cumulative time, then by own time, as pstats prints them."""
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs()
    for key, title in (("cumulative", "cumulative time"), ("tottime", "own time")):
        out.write(f"\n===== top {top} by {title} =====\n")
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wrk, nginx = harness.required_tools(["wrk", "nginx"])
    with tempfile.TemporaryDirectory(prefix="lbproxy-profile-") as tmp:
        workdir = Path(tmp)
        with servers.running_backend(nginx, workdir, LOAD_CPU) as backend_port:
            bundle = certs.make_bundle(workdir, args.tls) if args.tls else None
            profile = workdir / "lbproxy.prof"
            command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "l7proxy"]
            server = servers.start_proxy(
                "lbproxy", command, workdir, backend_port, bundle, SERVER_CPU
            )
            try:
                harness.wait_ready(
                    server.child,
                    server.port,
                    f"/{args.size}",
                    servers.FILES[args.size],
                    tls=server.tls,
                )
                preload = None
                if server.tls and args.close and not args.resume:
                    preload, why = loadgen.build_no_resume(workdir)
                    if preload is None:
                        raise BenchError(f"{why} (--resume profiles resumed handshakes)")
                scheme = "https" if server.tls else "http"
                result = loadgen.run(
                    wrk,
                    f"{scheme}://127.0.0.1:{server.port}/{args.size}",
                    script=loadgen.write_script(workdir),
                    seconds=args.duration,
                    connections=args.connections,
                    cpu=LOAD_CPU,
                    close=args.close,
                    preload=preload,
                )
            except BenchError:
                say(f"--- last lines of lbproxy's output ---\n{server.child.log_tail()}\n---")
                raise
            finally:
                # SIGINT: trio raises KeyboardInterrupt, cProfile writes the file on the way out.
                harness.stop(server.child, signal.SIGINT, PROFILE_STOP_TIMEOUT)
        if not profile.exists():
            tail = server.child.log_tail()
            raise BenchError(
                f"lbproxy wrote no profile (status {server.child.popen.returncode})"
                + (f"; its output:\n{tail}" if tail else "")
            )
        print(
            f"under the profiler: {result.rps:,.0f} req/s, p99 "
            f"{result.p99_us / 1000:.2f}ms, {result.errors} errors"
        )
        print(area_table(profile))
        print(top_functions(profile, args.top))
        if args.output is not None:
            args.output.write_bytes(profile.read_bytes())
            print(f"raw profile kept in {args.output} (python -m pstats {args.output})")
    return 0
