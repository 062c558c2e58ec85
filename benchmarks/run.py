"""`make bench`: lbproxy against the direct backend, HAProxy, Pound and nginx, on one core each.

Placement on a two-core machine: the server under test (lbproxy with its access log off and on,
HAProxy, Pound, nginx as a proxy, or the backend itself for the "direct" line) owns core 0; wrk
and, during the proxy runs, the backend nginx share core 1. The "memory" case measures what an
idle connection costs lbproxy (memory.py), the "workers" case lbproxy with one worker and with
one per core, nothing pinned (workers_bench.py). Settings come from the environment (see README.md):
BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_CASES, BENCH_TARGETS, BENCH_SIZES,
BENCH_REPEAT, BENCH_IDLE, BENCH_JSON, LBPROXY, POUND, BENCH_POUND_CACHE. ``--profile`` runs
lbproxy under cProfile instead (profiling.py); ``--instructions`` counts its instructions per
request under callgrind (instructions.py); ``--compare OLD.json NEW.json`` shows what changed
between two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import certs
import harness
import loadgen
import memory
import pound
import report
import servers
import workers_bench
from harness import BenchError, say

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0  # the server under test
LOAD_CPU = 1  # wrk, and the backend while a proxy is measured
DEFAULT_DURATION = 10.0  # seconds; wrk's own example duration is of this order
DEFAULT_WARMUP = 2.0  # seconds of load thrown away first: pools filled, caches warm
DEFAULT_CONNECTIONS = 50
CASES = ("plain", "tls", "handshake", "resumed", "memory", "workers")
CASE_ALIASES = {
    "tls": ("tls", "handshake", "resumed"),
    "tls-keepalive": ("tls",),
    "all": CASES,
}


@dataclass(frozen=True)
class Settings:
    seconds: float
    warmup: float
    connections: int
    cases: tuple[str, ...]
    targets: tuple[str, ...]
    sizes: tuple[str, ...]
    json_path: str | None
    repeat: int
    lbproxy: list[str]
    idle: int = memory.DEFAULT_IDLE


def _names(name: str, default: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name, default)
    chosen = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    bad = [p for p in chosen if p not in allowed]
    if bad or not chosen:
        raise BenchError(f"{name}: choose from {', '.join(allowed)} (got {raw!r})")
    return chosen


def _positive(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise BenchError(f"{name}={raw!r} is not a positive whole number")
    return int(raw)


def settings_from_env() -> Settings:
    cases: list[str] = []
    for case in _names("BENCH_CASES", "plain,tls,memory,workers", (*CASES, *CASE_ALIASES)):
        cases.extend(CASE_ALIASES.get(case, (case,)))
    seconds = harness.env_seconds("BENCH_DURATION", DEFAULT_DURATION)
    if seconds < 1:
        raise BenchError("BENCH_DURATION must be at least 1 second")
    return Settings(
        seconds=seconds,
        warmup=harness.env_seconds("BENCH_WARMUP", DEFAULT_WARMUP),
        connections=_positive("BENCH_CONNECTIONS", DEFAULT_CONNECTIONS),
        cases=tuple(c for c in CASES if c in cases),
        targets=_names("BENCH_TARGETS", ",".join(servers.TARGETS), servers.TARGETS),
        sizes=_names("BENCH_SIZES", ",".join(servers.FILES), tuple(servers.FILES)),
        json_path=os.environ.get("BENCH_JSON") or None,
        repeat=_positive("BENCH_REPEAT", 1),
        lbproxy=find_lbproxy(),
        idle=_positive("BENCH_IDLE", memory.DEFAULT_IDLE),
    )


def find_lbproxy() -> list[str]:
    """The command that starts lbproxy: $LBPROXY, the virtualenv's script, or the package run
    as a module by this interpreter (works before `pip install -e .` made the script)."""
    explicit = os.environ.get("LBPROXY")
    if explicit:
        return [explicit]
    local = ROOT / ".venv" / "bin" / "lbproxy"
    if local.exists():
        return [str(local)]
    return [sys.executable, "-m", "l7proxy"]


def _disturbance(row: report.Row) -> tuple[float, float]:
    other = row.other_on_server_core
    rps = row.result.rps if row.result is not None else 0.0
    return (round(other, 2) if other is not None else 0.0, -rps)


class Bench:
    """One bench run: the temp dir, the backend, and the rows measured so far."""

    def __init__(
        self,
        settings: Settings,
        tools: dict[str, str | None],
        workdir: Path,
        missing: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.tools = tools
        self.missing = missing or {}  # why a tool is not there, when more can be said
        self.workdir = workdir
        self.rows: list[report.Row] = []
        self.script = loadgen.write_script(workdir)
        self.www = servers.make_docroot(workdir)
        self.backend_port = harness.free_port()
        self._bundles: dict[str, Path] = {}
        self.tls_params: dict[str, str] = {}  # per started TLS server: what wrk will negotiate
        self._no_resume: tuple[Path | None, str] | None = None

    def bundle(self, key_type: str) -> Path:
        if key_type not in self._bundles:
            self._bundles[key_type] = certs.make_bundle(self.workdir, key_type)
        return self._bundles[key_type]

    def no_resume(self) -> tuple[Path | None, str]:
        """The shim that keeps wrk from resuming TLS sessions, built once; or why there is none."""
        if self._no_resume is None:
            self._no_resume = loadgen.build_no_resume(self.workdir)
        return self._no_resume

    def wrk(
        self, url: str, seconds: float, *, close: bool, preload: Path | None = None
    ) -> loadgen.Result:
        wrk = self.tools["wrk"]
        assert wrk is not None
        return loadgen.run(
            wrk,
            url,
            script=self.script,
            seconds=seconds,
            connections=self.settings.connections,
            cpu=LOAD_CPU,
            close=close,
            preload=preload,
        )

    def measure(
        self,
        server: servers.Server,
        path: str,
        *,
        close: bool = False,
        preload: Path | None = None,
    ) -> report.Row:
        """Warm up, then BENCH_REPEAT measured wrk runs; the least disturbed one is kept."""
        scheme = "https" if server.tls else "http"
        url = f"{scheme}://127.0.0.1:{server.port}/{path}"
        if self.settings.warmup > 0:
            self.wrk(url, self.settings.warmup, close=close, preload=preload)
        rows = [
            self.measure_once(server, url, close=close, preload=preload)
            for _ in range(self.settings.repeat)
        ]
        # On a shared machine other processes come and go: the run in which they took least of
        # the server's core says most about the server (ties: the faster run).
        return min(rows, key=_disturbance)

    def measure_once(
        self, server: servers.Server, url: str, *, close: bool, preload: Path | None
    ) -> report.Row:
        """One wrk run, counting the server's CPU time and every core's busy time around it."""
        before, cores_before = harness.cpu_seconds(server.child.pid), harness.core_ticks()
        try:
            result = self.wrk(url, self.settings.seconds, close=close, preload=preload)
        except BenchError as error:  # this line failed; the others still tell something
            return report.Row("", "", server.name, note=str(error))
        used = harness.cpu_seconds(server.child.pid) - before
        cores = harness.busy_shares(cores_before, harness.core_ticks())
        note = ""
        if not server.child.alive():
            note = f"exited during the run (status {server.child.popen.returncode})"
        elif result.requests == 0:
            note = "no answers"
        elif server.tls:
            note = self.tls_params.get(server.child.name, "")
        return report.Row("", "", server.name, result, used, note, cores)

    def record(self, case: str, variant: str, row: report.Row) -> None:
        row = dataclasses.replace(row, case=case, variant=variant)
        self.rows.append(row)
        res = row.result
        if res is None:
            say(f"  {case} {variant} {row.target}: {row.note}")
        else:
            say(
                f"  {case} {variant} {row.target}: {res.rps:,.0f} req/s, p99 "
                f"{report.latency(res.p99_us)}, {res.errors} errors {row.note}".rstrip()
            )

    def skip(self, case: str, variants: tuple[str, ...], target: str, why: str) -> None:
        for variant in variants:
            self.record(case, variant, report.Row(case, variant, target, note=why))

    @contextlib.contextmanager
    def proxy(self, name: str, bundle: Path | None) -> Iterator[servers.Server | str]:
        """A started, ready proxy; or the reason it is not there (a str), to be reported."""
        tool = self.tools.get(name)
        if name in servers.LBPROXY_TARGETS:
            command = self.settings.lbproxy
        elif tool is not None:
            command = [tool]
        else:
            yield self.missing.get(name, f"{name} not installed")
            return
        server = servers.start_proxy(
            name, command, self.workdir, self.backend_port, bundle, SERVER_CPU
        )
        try:
            problem = self.ready(server)
            yield server if problem is None else problem
            if problem is None and not server.child.alive():
                say(f"--- last lines of {name}'s output ---\n{server.child.log_tail()}\n---")
        finally:
            harness.stop(server.child)

    def ready(self, server: servers.Server) -> str | None:
        """None when the server answers every file in full; else why not (its output shown)."""
        try:
            for size in self.settings.sizes:
                harness.wait_ready(
                    server.child, server.port, "/" + size, servers.FILES[size], tls=server.tls
                )
        except BenchError as error:
            say(f"{server.child.name} did not start: {error}")
            tail = server.child.log_tail()
            if tail:
                say(f"--- last lines of its output ---\n{tail}\n---")
            return f"did not start ({error})"
        if server.tls:
            self.tls_params[server.child.name] = harness.tls_parameters(server.port)
        return None

    def run_plain(self, backend: harness.Child) -> None:
        sizes = self.settings.sizes
        for target in self.settings.targets:
            if target == "direct":
                # The backend gets the server core to itself for its own line.
                harness.repin(backend.pid, SERVER_CPU)
                try:
                    direct = servers.Server("direct", backend, self.backend_port, False)
                    for size in sizes:
                        self.record("plain", size, self.measure(direct, size))
                finally:
                    harness.repin(backend.pid, LOAD_CPU)
                continue
            with self.proxy(target, None) as server:
                if isinstance(server, str):
                    self.skip("plain", sizes, target, server)
                    continue
                for size in sizes:
                    self.record("plain", size, self.measure(server, size))

    def run_tls(self) -> None:
        sizes = self.settings.sizes
        bundle = self.bundle("rsa2048")
        for target in self.proxies():
            with self.proxy(target, bundle) as server:
                if isinstance(server, str):
                    self.skip("tls", sizes, target, server)
                    continue
                for size in sizes:
                    self.record("tls", size, self.measure(server, size))

    def run_handshakes(self) -> None:
        """Full handshakes: wrk with the shim that drops its session on every reconnect."""
        shim, why = self.no_resume()
        if shim is None:
            say(f"full handshakes not measured: {why}")
        for key_type in certs.KEY_TYPES:
            bundle = self.bundle(key_type)
            for target in self.proxies():
                if shim is None:
                    self.skip("handshake", (key_type,), target, why)
                    continue
                with self.proxy(target, bundle) as server:
                    if isinstance(server, str):
                        self.skip("handshake", (key_type,), target, server)
                        continue
                    row = self.measure(server, "100b", close=True, preload=shim)
                    self.record("handshake", key_type, row)

    def run_resumed(self) -> None:
        """wrk as it is: it offers its last session on every reconnect; no signature, so one
        key type says it all."""
        key_type = certs.KEY_TYPES[0]
        bundle = self.bundle(key_type)
        for target in self.proxies():
            with self.proxy(target, bundle) as server:
                if isinstance(server, str):
                    self.skip("resumed", (key_type,), target, server)
                    continue
                self.record("resumed", key_type, self.measure(server, "100b", close=True))

    def proxies(self) -> list[str]:
        return [t for t in self.settings.targets if t != "direct"]


VERSION_TIMEOUT = 10.0  # `haproxy -v` and friends answer at once


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def versions(tools: dict[str, str | None], lbproxy: list[str]) -> str:
    """One line naming what is compared, so figures from different runs can be told apart."""
    parts = [f"lbproxy {_first_line(['git', '-C', str(ROOT), 'describe', '--always', '--dirty'])}"]
    for name, flag in (("haproxy", "-v"), ("pound", "-V"), ("nginx", "-v"), ("wrk", "-v")):
        if tools.get(name):
            words = _first_line([str(tools[name]), flag]).split()
            parts.append(" ".join(words[:3]))
    parts.append(f"{ssl.OPENSSL_VERSION.split(' ')[0]} {ssl.OPENSSL_VERSION.split(' ')[1]}")
    return "versions: " + "; ".join(parts)


def bench(settings: Settings) -> int:
    tools = harness.ensure_tools(["wrk", "nginx", "haproxy"])
    needed = [name for name in ("wrk", "nginx") if tools[name] is None]
    if needed:
        raise BenchError(f"{' and '.join(needed)} not found and could not be installed")
    for name in ("haproxy",):
        if tools[name] is None and name in settings.targets:
            say(f"{name} not found and could not be installed: its lines are skipped")
    missing: dict[str, str] = {}
    if "pound" in settings.targets and set(settings.cases) - {"memory", "workers"}:
        tools["pound"], why = pound.find(ROOT)
        if why:
            missing["pound"] = why
            say(f"{why}: the Pound lines are skipped")
    if len(os.sched_getaffinity(0)) < 2:
        say("fewer than two CPUs available: processes are not pinned, figures are rough")
    started = time.monotonic()
    print(versions(tools, settings.lbproxy))
    with tempfile.TemporaryDirectory(prefix="lbproxy-bench-") as tmp:
        workdir = Path(tmp)
        run = Bench(settings, tools, workdir, missing)
        idle: memory.Result | None = None
        assert tools["nginx"] is not None
        backend = servers.start_backend(
            tools["nginx"], workdir, run.www, run.backend_port, LOAD_CPU
        )
        try:
            for size in settings.sizes:
                harness.wait_ready(
                    backend, run.backend_port, "/" + size, servers.FILES[size], tls=False
                )
            if "plain" in settings.cases:
                run.run_plain(backend)
            if "tls" in settings.cases:
                run.run_tls()
            if "handshake" in settings.cases:
                run.run_handshakes()
            if "resumed" in settings.cases:
                run.run_resumed()
            if "memory" in settings.cases:
                idle = memory.measure(settings.lbproxy, workdir, settings.idle, SERVER_CPU)
        except BenchError:
            if not backend.alive():
                say(f"--- last lines of the backend's output ---\n{backend.log_tail()}\n---")
            raise
        finally:
            harness.stop(backend)
        print()
        if run.rows:
            print(
                report.render(run.rows, seconds=settings.seconds, connections=settings.connections)
            )
        if idle is not None:
            print(("\n" if run.rows else "") + memory.render(idle))
        workers: list[workers_bench.Row] = []
        if "workers" in settings.cases:
            # Last and apart: nothing is pinned there, and its own backend runs in its own folder.
            assert tools["wrk"] is not None
            folder = workdir / "workers"
            folder.mkdir()
            workers = workers_bench.measure_all(
                settings.lbproxy, tools["wrk"], tools["nginx"], folder
            )
            print(("\n" if run.rows or idle else "") + workers_bench.render(workers))
    print(f"(total {time.monotonic() - started:.0f}s)")
    if settings.json_path:
        figures: list[dict[str, object]] = [row.as_dict() for row in run.rows]
        if idle is not None:
            figures.append(idle.as_dict())
        figures.extend(workers_bench.as_dicts(workers))
        Path(settings.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def compare_files(paths: list[str]) -> int:
    """`run.py --compare OLD.json NEW.json`: what changed between two BENCH_JSON files."""
    if len(paths) != 2:
        raise BenchError("--compare takes two files written with BENCH_JSON: OLD NEW")
    loaded = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise BenchError(f"{path}: cannot read it as BENCH_JSON output ({error})") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise BenchError(f"{path}: not a list of figures as BENCH_JSON writes them")
        loaded.append(data)
    print(report.compare(loaded[0], loaded[1]))
    return 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would end Python without running the finally blocks that stop the servers.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["--compare"]:
            return compare_files(args[1:])
        signal.signal(signal.SIGTERM, _terminate)
        # Also when started in the background, where the shell leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args[:1] == ["--profile"]:
            import profiling

            return profiling.main(args[1:])
        if args[:1] == ["--instructions"]:
            import instructions

            return instructions.main(args[1:])
        if args:
            raise BenchError(f"unknown argument {args[0]!r} (settings come from BENCH_* variables)")
        return bench(settings_from_env())
    except BenchError as error:
        say(f"bench: {error}")
        return 1
    except KeyboardInterrupt:
        say("bench: interrupted; every server started was stopped")
        return 130
    except Exception as error:  # a harness bug: one line for the user, the rest on request
        if os.environ.get("BENCH_DEBUG"):
            raise
        say(f"bench: unexpected {type(error).__name__}: {error} (BENCH_DEBUG=1 shows where)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
