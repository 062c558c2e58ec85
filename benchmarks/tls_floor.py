"""The floor under lbproxy's handshake cost: Python's ``ssl`` alone, no sockets, no trio.

`.venv/bin/python benchmarks/tls_floor.py [COUNT]` makes full TLS 1.3 handshakes between two
in-memory ``ssl.SSLObject`` s and times only the server side's calls. Whatever lbproxy spends per
new connection above this figure is its own overhead (accept, task, SSLStream, HTTP, close);
comparing it with HAProxy's CPU us/req from `make bench` says how far the 0.75 target is.
"""

from __future__ import annotations

import ssl
import sys
import tempfile
import time
from pathlib import Path

import certs

DEFAULT_COUNT = 300  # a few hundred handshakes: stable to a few percent, a second or two each


def _pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> float:
    """One full handshake; returns the CPU seconds of the server side's calls (CPU time, so
    other processes on a shared machine do not inflate it)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    spent = 0.0
    client_done = server_done = False
    while not (client_done and server_done):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            started = time.thread_time()
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - started
        c_in.write(s_out.read())
    return spent


def measure(bundle: Path, count: int) -> float:
    """Mean server-side microseconds per full handshake with this certificate bundle."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(str(bundle))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Like wrk: no verification, no session reuse (a new SSLObject never resumes by itself).
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    _pair(server_ctx, client_ctx)  # first handshake pays one-off setup
    total = sum(_pair(server_ctx, client_ctx) for _ in range(count))
    return total / count * 1e6


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv and argv[0].isdigit() else DEFAULT_COUNT
    print(f"{ssl.OPENSSL_VERSION}; server side of {count} full TLS 1.3 handshakes in memory:")
    with tempfile.TemporaryDirectory(prefix="lbproxy-tls-floor-") as tmp:
        for key_type in certs.KEY_TYPES:
            bundle = certs.make_bundle(Path(tmp), key_type)
            print(f"  {key_type:<11} {measure(bundle, count):7.1f} us per handshake")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
