"""keepalived's health probe: ``python -m l7proxy.ha_probe ADMIN_SOCKET``; exit 0 when healthy.

The same question as ``lbproxy ctl health`` (``show health`` on the admin socket: the proxy
answers and every bind is open), asked without loading the configuration or the rest of
lbproxy: keepalived runs it every second, and on a loaded machine the full command's imports
took longer than a second, which delayed the failover it exists to trigger. Stdlib only.
"""

from __future__ import annotations

import socket
import sys

TIMEOUT = 1.0  # below keepalived's script timeout; a proxy that hangs this long is not healthy


def healthy(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.sendall(b"show health\n")
            answer = sock.recv(4096)
    except OSError:
        return False
    return answer.startswith(b"ok")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m l7proxy.ha_probe ADMIN_SOCKET", file=sys.stderr)
        return 2
    return 0 if healthy(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
