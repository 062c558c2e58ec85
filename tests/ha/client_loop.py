"""The failover test's client loop: ``python -m tests.ha.client_loop HOST PORT CLIENTS OUT STOP``.

Each client keeps its own cookie jar (one cookie, the persistence label) and sends one request
on a new connection every ``PAUSE`` seconds, until the file STOP exists or the bounds are hit.
One JSON line per request goes to OUT: time, client, outcome and the real server that answered.
A connection that could not be opened is ``unreachable`` (nothing was sent: the VIP was on no
node that answers); one opened whose answer did not come is ``failed`` (it was in flight).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import time

PAUSE = 0.05
CONNECT_TIMEOUT = 0.3  # a lost SYN is retried by the kernel after 1 s: give up before
ANSWER_TIMEOUT = 2.0
MAX_SECONDS = 120.0  # bounds: the test stops the loop long before either
MAX_REQUESTS = 4000
COOKIE = "SERVERID"


def one(host: str, port: int, cookie: str | None) -> tuple[str, str | None, str | None]:
    """(outcome, server label, cookie set by the answer)."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError:
        return "unreachable", None, None
    conn = http.client.HTTPConnection(host, port, timeout=ANSWER_TIMEOUT)
    conn.sock = sock
    sock.settimeout(ANSWER_TIMEOUT)
    try:
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        set_cookie = response.getheader("Set-Cookie")
    except (OSError, http.client.HTTPException):
        return "failed", None, None
    finally:
        conn.close()
    if response.status != 200:
        return "failed", None, None
    new_cookie = None
    if set_cookie and set_cookie.startswith(COOKIE + "="):
        new_cookie = set_cookie.split(";", 1)[0].split("=", 1)[1]
    return "ok", body.split(" ", 1)[0], new_cookie


def client(index: int, host: str, port: int, out: list[str], stop: str) -> None:
    cookie: str | None = None
    deadline = time.monotonic() + MAX_SECONDS
    for _ in range(MAX_REQUESTS):
        if os.path.exists(stop) or time.monotonic() > deadline:
            return
        start = time.time()
        outcome, server, new_cookie = one(host, port, cookie)
        cookie = new_cookie or cookie
        out.append(
            json.dumps(
                {
                    "t": start,
                    "end": time.time(),
                    "client": index,
                    "outcome": outcome,
                    "server": server,
                    "cookie": cookie,
                }
            )
        )
        time.sleep(PAUSE)


def main() -> None:
    host, port, clients, out_path, stop = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
        sys.argv[5],
    )
    lines: list[str] = []
    threads = [
        threading.Thread(target=client, args=(i, host, port, lines, stop)) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(out_path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
