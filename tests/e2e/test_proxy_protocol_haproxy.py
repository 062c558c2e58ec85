"""The PROXY protocol against HAProxy from Debian, both ways, through the lbproxy process.

- HAProxy sends it (`server ... send-proxy` / `send-proxy-v2`, also before its TLS handshake
  with `ssl`) to lbproxy binds with `accept_proxy`: the real server behind lbproxy sees the
  original client (127.0.0.2) in X-Forwarded-For, and lbproxy's access log names it.
- lbproxy sends it (`send_proxy: v1|v2`) to HAProxy binds with `accept-proxy`: HAProxy answers
  with the source it read, and lbproxy's health checks (v1 UNKNOWN, v2 LOCAL) pass there too.
"""

from __future__ import annotations

import http.client
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trustme

from tests.e2e.process import backend, free_port, lbproxy, stop, wait_listening

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if pathlib.Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed"),
]
CLIENT = "127.0.0.2"  # the original client, told apart from HAProxy and lbproxy (127.0.0.1)


@contextmanager
def haproxy(config: pathlib.Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    assert HAPROXY is not None
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening("127.0.0.1", port, proc)
        yield proc
    finally:
        stop(proc)


def get(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(CLIENT, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


HAPROXY_DEFAULTS = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
"""


def test_haproxy_sends_the_proxy_protocol_to_lbproxy(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    backend_port, plain_port, tls_port = free_port(), free_port(), free_port()
    v1_port, v2_port, v2_tls_port = free_port(), free_port(), free_port()
    cert = tmp_path / "localhost.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(cert))
    config = tmp_path / "lbproxy.yaml"
    config.write_text(
        "global: {state_dir: state}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind:\n"
        f"      - {{address: 127.0.0.1:{plain_port}, accept_proxy: [127.0.0.1]}}\n"
        f"      - address: 127.0.0.1:{tls_port}\n"
        "        accept_proxy: [127.0.0.0/30]\n"
        f"        tls: {{certificate: {cert}}}\n"
        "    health_check: {enabled: false}\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{backend_port}}}]\n"
    )
    ha_config = tmp_path / "haproxy.cfg"
    ha_config.write_text(
        HAPROXY_DEFAULTS
        + f"""\
frontend v1
    bind 127.0.0.1:{v1_port}
    default_backend v1
frontend v2
    bind 127.0.0.1:{v2_port}
    default_backend v2
frontend v2tls
    bind 127.0.0.1:{v2_tls_port}
    default_backend v2tls
backend v1
    server lb 127.0.0.1:{plain_port} send-proxy source 127.0.0.1
backend v2
    server lb 127.0.0.1:{plain_port} send-proxy-v2 source 127.0.0.1
backend v2tls
    server lb 127.0.0.1:{tls_port} send-proxy-v2 ssl verify none sni str(localhost)
"""
    )
    with (
        backend("web1", backend_port),
        lbproxy(config, ("127.0.0.1", plain_port)) as proxy,
        haproxy(ha_config, v1_port),
    ):
        wait_listening("127.0.0.1", v2_tls_port)
        for port in (v1_port, v2_port, v2_tls_port):
            status, headers, body = get(port, f"/via-{port}")
            assert status == 200, body
            assert body.startswith(b"web1 GET /via-")
            # HAProxy adds no X-Forwarded-For here: this one is lbproxy's, from the header.
            assert headers["x-seen-xff"] == CLIENT
        # A listed source that sends no header is closed, and the log says why.
        with socket.create_connection(("127.0.0.1", plain_port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        proxy.terminate()
        out, err = proxy.stdout(), proxy.stderr()
    logged = [line for line in out.splitlines() if "GET /via-" in line]
    assert len(logged) == 3, out
    assert all(line.split()[0].startswith(f"{CLIENT}:") for line in logged), logged
    assert "PROXY protocol from 127.0.0.1:" in err
    assert "not a PROXY protocol header; connection closed" in err
    assert "Traceback" not in err


# What HAProxy read from lbproxy's PROXY header (and the path, to tell the two servers apart).
ANSWER = "src=%[src] port=%[src_port] dst=%[dst]:%[dst_port] path=%[path]\\n"


def test_lbproxy_sends_the_proxy_protocol_to_haproxy(tmp_path: pathlib.Path) -> None:
    lb_port, v1_port, v2_port = free_port(), free_port(), free_port()
    ha_config = tmp_path / "haproxy.cfg"
    ha_config.write_text(
        HAPROXY_DEFAULTS
        + f"""\
frontend reader
    bind 127.0.0.1:{v1_port} accept-proxy
    bind 127.0.0.1:{v2_port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{ANSWER}"
"""
    )
    config = tmp_path / "lbproxy.yaml"
    config.write_text(
        "global: {state_dir: state}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: 127.0.0.1:{lb_port}\n"
        "    send_proxy: v1\n"
        "    rules: [{path_prefix: /v2/, pool: two}]\n"
        "    health_check: {interval: 100ms, http: {path: /health}}\n"
        f"    real_servers: [{{label: one, address: 127.0.0.1:{v1_port}}}]\n"
        "pools:\n"
        "  two:\n"
        "    health_check: {interval: 100ms, http: {path: /health}}\n"
        f"    real_servers: [{{label: two, address: 127.0.0.1:{v2_port}, send_proxy: v2}}]\n"
    )
    with haproxy(ha_config, v1_port), lbproxy(config, ("127.0.0.1", lb_port)) as proxy:
        for path in ("/v1/a", "/v2/b"):
            status, _, body = get(lb_port, path)
            assert status == 200, body
            text = body.decode()
            assert text.startswith(f"src={CLIENT} port="), text
            assert f"dst=127.0.0.1:{lb_port} path={path}" in text
        # Enough checks for three failures in a row to mark a server down (fall 3), had
        # HAProxy refused their header; both servers still answer.
        time.sleep(1.0)
        for path in ("/v1/c", "/v2/d"):
            assert get(lb_port, path)[0] == 200
        proxy.terminate()
        err = proxy.stderr()
    assert "DOWN" not in err, err
    assert "Traceback" not in err
