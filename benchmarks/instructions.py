"""`run.py --instructions`: CPU instructions lbproxy executes per proxied 100-byte GET.

Unlike CPU time, an instruction count hardly moves with the machine's load, so it shows a
change of a few percent that the wrk runs cannot. lbproxy runs under valgrind's callgrind, which
counts every instruction of the process (the Python interpreter included), in front of the
nginx backend; one keep-alive client connection sends GET /100b requests one after another.
Start-up, the readiness probe and shutdown are the same in a run of 1000 requests and in a run
of 3000, so (instructions of the 3000 run - those of the 1000 run) / 2000 is the cost of one
request with warm caches and a pooled server connection. PYTHONHASHSEED is fixed so that both
runs hash alike. Done for the access log off and on (on: lines go to a file, as in make bench).

``--connection new`` opens a new connection for every request instead (what a connection costs:
accept, task, close), ``--connection resumed`` a new TLS connection that resumes the session of
the one before (RSA-2048 certificate; the handshake's share of the work, like the "resumed"
line of make bench).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import certs
import harness
import memory
import servers
from harness import BenchError, say

ROOT = Path(__file__).resolve().parent.parent
SHORT, LONG = 1000, 3000  # requests in the two runs; their difference is what is counted
# Under callgrind Python runs some 50 times slower: importing lbproxy's dependencies takes tens
# of seconds, and shutting down writes the profile.
START_TIMEOUT = 300.0
STOP_TIMEOUT = 120.0
IO_TIMEOUT = 60.0
LOAD_CPU = 1


@dataclass(frozen=True)
class Count:
    access_log: bool
    short: int  # instructions of the whole run with SHORT requests
    long: int

    @property
    def per_request(self) -> float:
        return (self.long - self.short) / (LONG - SHORT)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py --instructions",
        description="Count lbproxy's instructions per proxied 100-byte GET under callgrind.",
    )
    parser.add_argument(
        "--access-log",
        choices=("off", "on", "both"),
        default="both",
        help="lbproxy's access log in the measured runs (default: both, off first)",
    )
    parser.add_argument(
        "--connection",
        choices=("keepalive", "new", "resumed"),
        default="keepalive",
        help="one keep-alive connection (default), a new one per request, or a new TLS one "
        "per request that resumes the session",
    )
    return parser.parse_args(argv)


class Client:
    """The measured requests, one after another, over the connection shape asked for."""

    def __init__(self, port: int, shape: str, bundle: Path | None) -> None:
        self.port = port
        self.shape = shape
        self.sock: socket.socket | None = None
        self.session: ssl.SSLSession | None = None
        self.context: ssl.SSLContext | None = None
        if bundle is not None:
            self.context = ssl.create_default_context(cafile=str(bundle))
            self.context.check_hostname = False

    def request(self) -> None:
        if self.sock is None or self.shape != "keepalive":
            self.close()
            self.sock = self._connect()
        self.sock.sendall(memory.REQUEST)
        memory.read_answer(self.sock)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), IO_TIMEOUT)
        if self.context is None:
            return sock
        tls = self.context.wrap_socket(sock, server_hostname="localhost", session=self.session)
        if self.session is not None and not tls.session_reused:
            raise BenchError("the TLS session was not resumed")
        return tls

    def close(self) -> None:
        if self.sock is not None:
            if isinstance(self.sock, ssl.SSLSocket):
                self.session = self.sock.session  # the ticket came with the answer
            self.sock.close()
            self.sock = None


def python_command() -> list[str]:
    """lbproxy as a module of the project's interpreter (callgrind follows one process; a
    console script would work too, but this also runs before `pip install -e .`)."""
    explicit = os.environ.get("LBPROXY")
    if explicit:
        return [explicit]
    venv = ROOT / ".venv" / "bin" / "python"
    return [str(venv if venv.exists() else Path(sys.executable)), "-m", "l7proxy"]


def total_instructions(callgrind_out: Path) -> int:
    """The event total callgrind writes at exit: its "totals:" line (what it reports as
    Collected), else the older "summary:" line."""
    found: dict[str, int] = {}
    for line in callgrind_out.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name in ("summary", "totals") and value.split():
            found[name] = int(value.split()[0])
    for name in ("totals", "summary"):
        if name in found:
            return found[name]
    raise BenchError(f"{callgrind_out.name}: no instruction total in callgrind's output")


def one_run(
    valgrind: str,
    workdir: Path,
    backend_port: int,
    *,
    access_log: bool,
    requests: int,
    shape: str = "keepalive",
) -> int:
    """Instructions of a whole lbproxy process that proxied ``requests`` sequential GETs."""
    label = f"callgrind-{'log' if access_log else 'nolog'}-{shape}-{requests}"
    port = harness.free_port()
    conf = workdir / f"{label}.yaml"
    bundle = None
    if shape == "resumed":
        bundle = workdir / "rsa2048.pem"
        if not bundle.exists():
            bundle = certs.make_bundle(workdir, "rsa2048")
    conf.write_text(servers.lbproxy_conf(port, backend_port, bundle, access_log=access_log))
    out = workdir / f"{label}.out"
    argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *python_command()]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    child = harness.start(
        label, [*argv, "run", "-c", str(conf)], workdir=workdir, cpu=None, env=env
    )
    try:
        harness.wait_ready(
            child,
            port,
            "/100b",
            servers.FILES["100b"],
            tls=bundle is not None,
            timeout=START_TIMEOUT,
        )
        client = Client(port, shape, bundle)
        with contextlib.closing(client):
            for _ in range(requests):
                client.request()
    except (BenchError, OSError) as error:
        say(f"--- last lines of {label}'s output ---\n{child.log_tail()}\n---")
        raise BenchError(f"{label}: {error}") from None
    finally:
        # SIGTERM: lbproxy stops at once with nothing in flight; callgrind writes on exit.
        harness.stop(child, signal.SIGTERM, STOP_TIMEOUT)
    if not out.exists():
        raise BenchError(f"{label}: callgrind wrote no output (status {child.popen.returncode})")
    return total_instructions(out)


def count(valgrind: str, workdir: Path, backend_port: int, access_log: bool, shape: str) -> Count:
    runs = [
        one_run(valgrind, workdir, backend_port, access_log=access_log, requests=n, shape=shape)
        for n in (SHORT, LONG)
    ]
    return Count(access_log, runs[0], runs[1])


def render(found: Count) -> str:
    log = "on " if found.access_log else "off"
    return (
        f"access log {log}: {found.per_request / 1e6:.3f} M instructions per request "
        f"({found.per_request:,.0f} = ({found.long:,} - {found.short:,}) / {LONG - SHORT})"
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    valgrind, nginx = harness.required_tools(["valgrind", "nginx"])
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.access_log]
    shape = {
        "keepalive": "one keep-alive connection",
        "new": "a new connection per request",
        "resumed": "a new TLS connection per request, session resumed",
    }[args.connection]
    print(
        f"instructions per proxied GET /100b, {shape}, "
        f"(I({LONG}) - I({SHORT})) / {LONG - SHORT} under callgrind"
    )
    with tempfile.TemporaryDirectory(prefix="lbproxy-instructions-") as tmp:
        workdir = Path(tmp)
        with servers.running_backend(nginx, workdir, LOAD_CPU) as backend_port:
            for access_log in modes:
                say(f"  callgrind runs with the access log {'on' if access_log else 'off'}")
                found = count(valgrind, workdir, backend_port, access_log, args.connection)
                print(render(found), flush=True)
    return 0
