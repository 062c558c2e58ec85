"""Run HAProxy or Pound with an original file and lbproxy with its import, in front of the same
real servers, and record what each request got (tests/importers/test_differential.py).

The real servers are small threads answering JSON: which server answered and every header it
received. Everything listens on 127.0.0.1 with free ports.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from config.importers.pipeline import import_configs
from l7proxy.cli import main as lbproxy_main
from tests.e2e.process import free_port, lbproxy, stop, wait_listening

HAPROXY = "/usr/sbin/haproxy"
CLIENT_TIMEOUT = 10.0
POUND_BUILD_TIMEOUT = 900.0  # the build takes about 20 s once the tools are there


def _handler(label: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            seen = [[name.lower(), value] for name, value in self.headers.items()]
            body = json.dumps({"server": label, "path": self.path, "headers": seen}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Server", "echo")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checks that connect and close without a request


@contextmanager
def echo_servers(labels: list[str]) -> Iterator[dict[str, int]]:
    """Real servers on free 127.0.0.1 ports, by label, until the block ends."""
    servers = []
    ports: dict[str, int] = {}
    for label in labels:
        server = _QuietServer(("127.0.0.1", 0), _handler(label))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        ports[label] = server.server_address[1]
    try:
        yield ports
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@dataclass(frozen=True)
class Reply:
    status: int
    server: str | None
    location: str | None
    cookies: tuple[str, ...]  # NAME=VALUE of each Set-Cookie, attributes left out
    seen: dict[str, tuple[str, ...]] = field(default_factory=dict)  # headers the server got


@dataclass(frozen=True)
class Ask:
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    keep_cookie: bool = False  # send back the cookies set by the previous replies


def send(port: int, asks: list[Ask], context: ssl.SSLContext | None = None) -> list[Reply]:
    """The requests in order, each on a new connection (TLS with ``context``); a cookie jar
    across them."""
    jar: dict[str, str] = {}
    replies = []
    for ask in asks:
        conn: http.client.HTTPConnection
        if context is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        else:
            conn = http.client.HTTPSConnection(
                "localhost", port, timeout=CLIENT_TIMEOUT, context=context
            )
        headers = dict(ask.headers)
        headers.setdefault("Host", "www.example.com")
        if ask.keep_cookie and jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        conn.request(ask.method, ask.path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        cookies = []
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                pair = value.split(";")[0].strip()
                cookies.append(pair)
                key, _, val = pair.partition("=")
                jar[key] = val
        server = None
        seen: dict[str, tuple[str, ...]] = {}
        if response.getheader("Content-Type") == "application/json":
            data = json.loads(body)
            server = data["server"]
            grouped: dict[str, list[str]] = {}
            for name, value in data["headers"]:
                grouped.setdefault(name, []).append(value)
            # Several fields of one name are one list (RFC 9110 5.3): compare them joined.
            seen = {k: (", ".join(v),) for k, v in grouped.items()}
        replies.append(
            Reply(response.status, server, response.getheader("Location"), tuple(cookies), seen)
        )
    return replies


def fill(template: str, ports: dict[str, int]) -> str:
    """The configuration with ``{name}`` replaced by the port of that name."""
    text = template
    for name, port in ports.items():
        text = text.replace("{" + name + "}", str(port))
    return text


def import_yaml(
    tmp: pathlib.Path, haproxy: str | None, pound: str | None
) -> tuple[pathlib.Path, list[str]]:
    """Import the text(s), check the YAML as `lbproxy check` does; its path and the report."""
    paths: dict[str, str | None] = {"haproxy": None, "pound": None}
    for kind, text in (("haproxy", haproxy), ("pound", pound)):
        if text is not None:
            path = tmp / f"import-{kind}.cfg"
            path.write_text(text)
            paths[kind] = str(path)
    result = import_configs(paths["haproxy"], paths["pound"], env={})
    assert result.yaml_text is not None, result.report
    # One process: round robin and least-connections keep their state per worker
    # (docs/operations.md, "Worker processes"), while HAProxy's threads share one; the
    # comparison is of the balancing decisions, so both sides decide from one state.
    text = result.yaml_text.replace("workers: auto", "workers: 1")
    out = tmp / "lb.yaml"
    out.write_text(text)
    assert lbproxy_main(["check", "-c", str(out)]) == 0, result.yaml_text
    return out, result.report


@contextmanager
def _run(tmp: pathlib.Path, name: str, text: str, port: int, command: list[str]) -> Iterator[None]:
    """``command`` with its configuration written to ``tmp/NAME.cfg``, until the block ends."""
    path = tmp / f"{name}.cfg"
    path.write_text(text)
    with (tmp / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([*command, str(path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening("127.0.0.1", port, proc)
            yield
        finally:
            stop(proc, signal.SIGTERM)


def run_haproxy(tmp: pathlib.Path, text: str, port: int) -> AbstractContextManager[None]:
    return _run(tmp, "haproxy", text, port, [HAPROXY, "-db", "-f"])


def run_pound(tmp: pathlib.Path, binary: str, text: str, port: int) -> AbstractContextManager[None]:
    return _run(tmp, "pound", text, port, [binary, "-e", "-p", str(tmp / "pound.pid"), "-f"])


@contextmanager
def run_lbproxy(config: pathlib.Path, port: int) -> Iterator[None]:
    with lbproxy(config, wait_for=("127.0.0.1", port)):
        yield


def _pound_script(root: pathlib.Path) -> pathlib.Path | None:
    """``../shared/anchors/build-pound.sh`` beside this checkout or beside the main checkout."""
    candidates = [root]
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode == 0 and done.stdout.strip():
        candidates.append(pathlib.Path(done.stdout.strip()).parent)
    for checkout in candidates:
        script = checkout.parent / "shared" / "anchors" / "build-pound.sh"
        if script.is_file():
            return script
    return None


def find_pound(root: pathlib.Path) -> tuple[str | None, str]:
    """(Pound's binary, "") or (None, why not); built once per cache folder."""
    explicit = os.environ.get("POUND")
    if explicit:
        return (
            (explicit, "")
            if os.access(explicit, os.X_OK)
            else (None, f"POUND={explicit} is not executable")
        )
    script = _pound_script(root)
    if script is None:
        return None, "no ../shared/anchors/build-pound.sh beside the repository"
    if shutil.which("bash") is None:
        return None, "no bash to run the Pound build script"
    cache = pathlib.Path.home() / ".cache" / "lbproxy-tests" / "pound"
    try:
        done = subprocess.run(
            ["bash", str(script), str(cache)],
            capture_output=True,
            text=True,
            timeout=POUND_BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "the Pound build took too long"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"Pound not built: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return lines[-1], ""


__all__ = [
    "Ask",
    "Reply",
    "echo_servers",
    "fill",
    "find_pound",
    "free_port",
    "import_yaml",
    "run_haproxy",
    "run_lbproxy",
    "run_pound",
    "send",
]
