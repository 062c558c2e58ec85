"""Binds on a floating address open before the address is on the node (IP_FREEBIND).

Run in a namespace the test makes: the addresses are on no interface there, as on a standby.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator

import pytest

from tests.ha import netns

ROOT = pathlib.Path(__file__).resolve().parents[2]

PROBE = """
import sys
from config.model import Address
from l7proxy.server import BindError, open_listening_socket
host, freebind = sys.argv[1], sys.argv[2] == "1"
try:
    open_listening_socket(Address(host, 8080), freebind=freebind).close()
except BindError as error:
    print(error)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def space() -> Iterator[str]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"lbha{os.getpid() % 100000}-fb"
    netns.run(netns.IP, "netns", "add", name)
    netns.run(netns.IP, "-n", name, "link", "set", "lo", "up")
    yield name
    netns.run(netns.IP, "netns", "del", name, check=False)


@pytest.mark.parametrize("host", ["10.99.0.100", "fd00:99::100"])
def test_a_floating_address_binds_only_with_freebind(space: str, host: str) -> None:
    def bind(freebind: bool) -> tuple[int, str]:
        done = netns.run(
            netns.IP,
            "netns",
            "exec",
            space,
            "env",
            f"PYTHONPATH={ROOT}",
            sys.executable,
            "-c",
            PROBE,
            host,
            "1" if freebind else "0",
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    status, output = bind(False)
    assert status == 1, output
    assert "Cannot assign requested address" in output, output
    status, output = bind(True)
    assert status == 0, output
