"""A private network for the pair tests: namespaces joined by a bridge in a switch namespace.

Nothing touches the host's own interfaces: every veth is created inside the switch namespace
with its peer end placed straight into a member namespace, and the bridge lives in the switch
namespace too. ``Network.close`` kills what ran inside and deletes every namespace, whatever
happened before.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

PREFIX = "10.99.0."  # only inside the namespaces made here
MASK = 24
IP = shutil.which("ip") or "/usr/sbin/ip"


def run(*words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(words), check=check, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "iproute2 (ip) is not installed"
    probe = f"lbha-probe-{os.getpid()}"
    result = run(IP, "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    run(IP, "netns", "del", probe, check=False)
    return None


class Network:
    """Members by role name, each with one address on ``eth0``."""

    def __init__(self, members: dict[str, int]) -> None:
        self.tag = f"lbha{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.members = {role: f"{self.tag}-{role}" for role in members}
        self.addresses = {role: PREFIX + str(host) for role, host in members.items()}
        self.procs: list[subprocess.Popen[bytes]] = []
        made: list[str] = []
        try:
            for name in (self.switch, *self.members.values()):
                run(IP, "netns", "add", name)
                made.append(name)
            run(IP, "-n", self.switch, "link", "add", "br0", "type", "bridge")
            run(IP, "-n", self.switch, "link", "set", "br0", "up")
            for role, ns in self.members.items():
                port = f"p-{role}"[:15]
                run(
                    IP,
                    "-n",
                    self.switch,
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                run(IP, "-n", self.switch, "link", "set", port, "master", "br0", "up")
                run(IP, "-n", ns, "addr", "add", f"{self.addresses[role]}/{MASK}", "dev", "eth0")
                run(IP, "-n", ns, "link", "set", "eth0", "up")
                run(IP, "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.names = made
            self.close()
            raise
        self.names = made

    def popen(self, role: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        command = [IP, "netns", "exec", self.members[role], *argv]
        proc: subprocess.Popen[bytes] = subprocess.Popen(command, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run_in(self, role: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            [IP, "netns", "exec", self.members[role], *argv],
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )

    def link(self, role: str, up: bool) -> None:
        run(IP, "-n", self.members[role], "link", "set", "eth0", "up" if up else "down")

    def has_address(self, role: str, address: str) -> bool:
        shown = run(IP, "-n", self.members[role], "-o", "addr", "show", "dev", "eth0").stdout
        return f" {address}/" in shown

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for name in reversed(self.names):
            # Anything started inside by a child and left over dies with its namespace's pids.
            pids = run(IP, "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(IP, "netns", "del", name, check=False)
