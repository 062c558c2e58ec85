"""The servers under test: configuration text for each, and starting them.

All of them listen on 127.0.0.1 only, forward to the same nginx backend, keep connections to it
alive, and append X-Forwarded-For (lbproxy does by default), so they do the same work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import Child, free_port, start, stop, wait_ready

# Two static files: a small answer where per-request overhead dominates, and a 64 KiB one
# where moving bytes does.
FILES = {"100b": 100, "64k": 64 * 1024}
# Far above wrk's 50 connections plus the proxies' pools to the backend.
MAX_CONNECTIONS = 4096
# nginx closes a keep-alive connection after 1000 requests by default (1.19.10+); neither
# HAProxy nor lbproxy has such a limit, so lift it rather than measure reconnections.
KEEPALIVE_REQUESTS = 100_000_000
# HAProxy's shipped examples; lbproxy's defaults are the same values (config/model.py).
PROXY_TIMEOUT_CONNECT = "5s"
PROXY_TIMEOUT_IDLE = "60s"
UPSTREAM_KEEPALIVE = 64  # idle connections nginx keeps per worker to the backend (> wrk's 50)

ROOT = Path(__file__).resolve().parent.parent  # lets `python -m l7proxy` work from a temp dir
# lbproxy runs twice: with the access log off, and on as it is by default ("lbproxy-log").
LBPROXY_TARGETS = ("lbproxy", "lbproxy-log")
TARGETS = ("direct", *LBPROXY_TARGETS, "haproxy", "pound", "nginx")


@dataclass
class Server:
    """One started server: where to send load, and whose CPU time to count."""

    name: str
    child: Child
    port: int
    tls: bool


def make_docroot(workdir: Path) -> Path:
    www = workdir / "www"
    www.mkdir()
    for name, size in FILES.items():
        (www / name).write_bytes(b"x" * size)
        (www / name).chmod(0o644)
    # nginx workers drop to an unprivileged user when started as root: they must reach the files.
    workdir.chmod(0o755)
    www.chmod(0o755)
    return www


def _nginx_common(workdir: Path, name: str) -> str:
    temp = workdir / f"{name}-temp"
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections {MAX_CONNECTIONS}; }}
http {{
    access_log off;
    keepalive_requests {KEEPALIVE_REQUESTS};
    keepalive_timeout {PROXY_TIMEOUT_IDLE};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
"""


def backend_conf(workdir: Path, www: Path, port: int) -> str:
    return (
        _nginx_common(workdir, "backend")
        + f"""
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"""
    )


def nginx_proxy_conf(workdir: Path, port: int, backend: int, bundle: Path | None) -> str:
    if bundle is None:
        listen = f"listen 127.0.0.1:{port};"
    else:
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n"
            f"        ssl_certificate {bundle};\n"
            f"        ssl_certificate_key {bundle};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    return (
        _nginx_common(workdir, "nginx-proxy")
        + f"""
    upstream pool {{
        server 127.0.0.1:{backend};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        {listen}
        location / {{
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Hold a whole 64 KiB answer in memory, as the others do, instead of a temp file.
            proxy_buffers 16 8k;
        }}
    }}
}}
"""
    )


def haproxy_conf(port: int, backend: int, bundle: Path | None) -> str:
    tls = "" if bundle is None else f" ssl crt {bundle} alpn http/1.1"
    return f"""global
    nbthread 1
    maxconn {MAX_CONNECTIONS}
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option forwardfor
    timeout connect {PROXY_TIMEOUT_CONNECT}
    timeout client {PROXY_TIMEOUT_IDLE}
    timeout server {PROXY_TIMEOUT_IDLE}
    timeout http-keep-alive {PROXY_TIMEOUT_IDLE}

frontend bench
    bind 127.0.0.1:{port}{tls}
    default_backend pool

backend pool
    balance roundrobin
    server nginx 127.0.0.1:{backend}
"""


def pound_conf(port: int, backend: int, bundle: Path | None) -> str:
    """Pound's minimal configuration: one listener, one service, the backend. Pound appends
    X-Forwarded-For by default; TLS 1.2 and 1.3 only, as for the others."""
    if bundle is None:
        listen = "ListenHTTP"
    else:
        listen = f'ListenHTTPS\n    Cert "{bundle}"\n    Disable TLSv1_1'
    return f"""Daemon 0
LogLevel 0
{listen}
    Address 127.0.0.1
    Port {port}
    Service
        Backend
            Address 127.0.0.1
            Port {backend}
        End
    End
End
"""


def lbproxy_conf(port: int, backend: int, bundle: Path | None, *, access_log: bool = False) -> str:
    """One virtual server in front of the backend; the access log (one line per request on
    standard output, which the harness sends to a file) off unless ``access_log``."""
    if bundle is None:
        bind = f"127.0.0.1:{port}"
    else:
        bind = f"[{{address: 127.0.0.1:{port}, tls: {{certificate: {bundle}}}}}]"
    log = "true" if access_log else "false"
    return f"""global: {{access_log: {log}, log_level: warning}}
virtual_servers:
  - label: bench
    bind: {bind}
    balance: roundrobin
    health_check: {{enabled: false}}
    real_servers:
      - {{label: nginx, address: 127.0.0.1:{backend}}}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def start_backend(nginx: str, workdir: Path, www: Path, port: int, cpu: int | None) -> Child:
    conf = _write(workdir / "backend.conf", backend_conf(workdir, www, port))
    (workdir / "backend-temp").mkdir()
    argv = [nginx, "-p", f"{workdir}/", "-e", str(workdir / "backend-error.log"), "-c", str(conf)]
    return start("backend-nginx", argv, workdir=workdir, cpu=cpu)


@contextlib.contextmanager
def running_backend(nginx: str, workdir: Path, cpu: int | None) -> Iterator[int]:
    """The nginx backend serving FILES from ``workdir``, ready; yields its port, stops it."""
    www = make_docroot(workdir)
    port = free_port()
    child = start_backend(nginx, workdir, www, port, cpu)
    try:
        for name, size in FILES.items():
            wait_ready(child, port, f"/{name}", size, tls=False)
        yield port
    finally:
        stop(child)


def start_proxy(
    name: str,
    command: list[str],
    workdir: Path,
    backend: int,
    bundle: Path | None,
    cpu: int | None,
) -> Server:
    """Start proxy ``name`` (one of TARGETS but direct) in front of the backend on a free port.

    ``command`` is the program and any leading arguments (lbproxy may be ``python -m l7proxy``).
    """
    port = free_port()
    suffix = "tls" if bundle is not None else "plain"
    label = f"{name}-{suffix}"
    if name in LBPROXY_TARGETS:
        text = lbproxy_conf(port, backend, bundle, access_log=name == "lbproxy-log")
        conf = _write(workdir / f"{label}.yaml", text)
        argv = [*command, "run", "-c", str(conf)]
    elif name == "pound":
        conf = _write(workdir / f"{label}.cfg", pound_conf(port, backend, bundle))
        argv = [*command, "-F", "-f", str(conf), "-p", str(workdir / f"{label}.pid")]
    elif name == "haproxy":
        conf = _write(workdir / f"{label}.cfg", haproxy_conf(port, backend, bundle))
        argv = [*command, "-db", "-f", str(conf)]
    elif name == "nginx":
        conf = _write(workdir / f"{label}.conf", nginx_proxy_conf(workdir, port, backend, bundle))
        (workdir / "nginx-proxy-temp").mkdir(exist_ok=True)
        argv = [*command, "-p", f"{workdir}/", "-e", str(workdir / f"{label}-error.log")]
        argv += ["-c", str(conf)]
    else:
        raise ValueError(f"unknown proxy {name!r}")
    # Python buffers its own stderr when it is a file; unbuffered so a crash report is complete.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    child = start(label, argv, workdir=workdir, cpu=cpu, env=env)
    return Server(name, child, port, bundle is not None)
