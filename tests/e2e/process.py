"""Start the real ``lbproxy`` command and real server processes for end-to-end tests."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

ROOT = pathlib.Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 15.0


def lbproxy_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m l7proxy``."""
    script = pathlib.Path(sys.executable).parent / "lbproxy"
    if script.exists():
        return [str(script)]
    found = shutil.which("lbproxy")
    return [found] if found else [sys.executable, "-m", "l7proxy"]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@contextmanager
def backend(label: str, port: int, host: str = "127.0.0.1") -> Iterator[subprocess.Popen[bytes]]:
    """A real server process (tests/e2e/backend.py) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.backend", label, host, str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(host, port, proc)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Lbproxy:
    """A running ``lbproxy run -c FILE``; output goes to files so it never blocks."""

    def __init__(self, config: pathlib.Path, args: Sequence[str] = ()) -> None:
        self.config = config
        self.stdout_path = config.with_suffix(".stdout")
        self.stderr_path = config.with_suffix(".stderr")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*lbproxy_command(), "run", "-c", str(config), *args],
                cwd=config.parent,
                stdout=out,
                stderr=err,
                env=env,
            )

    def wait_listening(self, host: str, port: int) -> None:
        try:
            wait_listening(host, port, self.proc)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\nstderr:\n{self.stderr()}") from error

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit status (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise

    def rss_kib(self) -> int:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@contextmanager
def lbproxy(config: pathlib.Path, wait_for: tuple[str, int] | None = None) -> Iterator[Lbproxy]:
    proxy = Lbproxy(config)
    try:
        if wait_for is not None:
            proxy.wait_listening(*wait_for)
        yield proxy
    finally:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait(timeout=5)
