"""The ``workers`` line: lbproxy with ``workers: 1`` and ``workers: N`` (N = the cores this
process may use), plain HTTP keep-alive, 100 B, req/s and CPU per request (master and workers
together). Part of ``make bench`` (the "workers" case), or alone:
``.venv/bin/python benchmarks/workers_bench.py`` (BENCH_DURATION, BENCH_WARMUP,
BENCH_CONNECTIONS as for run.py; BENCH_WORKERS overrides N). See README.md, "The workers line".

Nothing is pinned here: the point is to let the workers spread over the cores. The backend
(nginx, one worker) and wrk (one thread) share the cores with lbproxy, so on a small machine the
N line says how much of the rest of the machine the workers could use.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import harness
import loadgen
import servers
from harness import BenchError, say

SIZE = "100b"


def _config(port: int, backend: int, workers: int) -> str:
    text = servers.lbproxy_conf(port, backend, None)
    return text.replace("global: {", f"global: {{workers: {workers}, ", 1)


def measure(
    lbproxy: list[str], wrk: str, workdir: Path, backend: int, workers: int
) -> tuple[float, float, int]:
    """(req/s, CPU µs per request, errors) for ``workers`` worker processes."""
    seconds = harness.env_seconds("BENCH_DURATION", 10.0)
    warmup = harness.env_seconds("BENCH_WARMUP", 2.0)
    connections = int(os.environ.get("BENCH_CONNECTIONS", "50"))
    port = harness.free_port()
    conf = workdir / f"workers-{workers}.yaml"
    conf.write_text(_config(port, backend, workers))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(servers.ROOT))
    child = harness.start(
        f"lbproxy-workers-{workers}",
        [*lbproxy, "run", "-c", str(conf)],
        workdir=workdir,
        cpu=None,
        env=env,
    )
    try:
        harness.wait_ready(child, port, "/" + SIZE, servers.FILES[SIZE], tls=False)
        url = f"http://127.0.0.1:{port}/{SIZE}"
        script = loadgen.write_script(workdir)
        if warmup > 0:
            loadgen.run(wrk, url, script=script, seconds=warmup, connections=connections, cpu=None)
        before = harness.cpu_seconds(child.pid)
        result = loadgen.run(
            wrk, url, script=script, seconds=seconds, connections=connections, cpu=None
        )
        used = harness.cpu_seconds(child.pid) - before
    finally:
        harness.stop(child)
    if result.requests == 0:
        raise BenchError(f"workers {workers}: no answers\n{child.log_tail()}")
    return result.rps, used * 1e6 / result.requests, result.errors


Row = tuple[int, float, float, int]  # workers, req/s, CPU µs per request, errors


def measure_all(lbproxy: list[str], wrk: str, nginx: str, workdir: Path) -> list[Row]:
    """The line for ``workers: 1`` and ``workers: N``, with a backend of its own (unpinned)."""
    cores = len(os.sched_getaffinity(0))
    many = int(os.environ.get("BENCH_WORKERS", str(cores)))
    with servers.running_backend(nginx, workdir, None) as backend:
        return [(n, *measure(lbproxy, wrk, workdir, backend, n)) for n in (1, many)]


def render(rows: list[Row]) -> str:
    cores = len(os.sched_getaffinity(0))
    base_rps, base_cpu = rows[0][1], rows[0][2]
    lines = [f"workers (plain keep-alive {SIZE}, {cores} core(s), nothing pinned)"]
    head = ("workers", "req/s", "CPU µs/req", "errors", "req/s x1", "CPU x1")
    lines.append("{:>8} {:>10} {:>11} {:>7} {:>8} {:>6}".format(*head))
    for n, rps, cpu, errors in rows:
        lines.append(
            f"{n:>8} {rps:>10,.0f} {cpu:>11,.0f} {errors:>7} "
            f"{rps / base_rps:>8.2f} {cpu / base_cpu:>6.2f}"
        )
    return "\n".join(lines)


def as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [
        {
            "case": "workers",
            "variant": f"workers: {n}",
            "target": "lbproxy",
            "requests_per_second": rps,
            "cpu_us_per_request": cpu,
            "errors": errors,
        }
        for n, rps, cpu, errors in rows
    ]


def main() -> int:
    tools = harness.ensure_tools(["wrk", "nginx"])
    wrk, nginx = tools["wrk"], tools["nginx"]
    if wrk is None or nginx is None:
        say("wrk and nginx are needed")
        return 1
    from run import find_lbproxy  # run.py imports this module: imported when run alone

    with tempfile.TemporaryDirectory(prefix="lbproxy-workers-") as tmp:
        rows = measure_all(find_lbproxy(), wrk, nginx, Path(tmp))
    print("\n" + render(rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        say(f"workers bench: {error}")
        sys.exit(1)
