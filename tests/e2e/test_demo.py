"""``lbproxy demo``: built-in real servers, HTTP and HTTPS, the stats page; and a browser."""

from __future__ import annotations

import http.client
import pathlib
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.e2e.process import free_port, lbproxy_command, stop, wait_listening

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a headless browser on a machine without network (see the machine notes).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def get(port: int, path: str = "/", context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("set-cookie") or "", resp.read().decode()
    finally:
        conn.close()


Demo = tuple[dict[str, int], pathlib.Path]  # the demo's ports by name, and its folder


@pytest.fixture
def demo(tmp_path: pathlib.Path) -> Iterator[Demo]:
    ports = {"http": free_port(), "https": free_port(), "stats": free_port()}
    proc = subprocess.Popen(
        [
            *lbproxy_command(),
            "demo",
            "--port",
            str(ports["http"]),
            "--tls-port",
            str(ports["https"]),
            "--stats-port",
            str(ports["stats"]),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "demo.err").open("wb"),
    )
    try:
        for port in ports.values():
            wait_listening("127.0.0.1", port, proc)
        yield ports, tmp_path
    finally:
        stop(proc, signal.SIGTERM)
    assert proc.returncode == 0


def test_demo_balances_persists_and_shows_stats(demo: Demo) -> None:
    ports, folder = demo
    labels = set()
    for _ in range(4):
        status, cookie, body = get(ports["http"])
        assert status == 200
        assert cookie.startswith("SERVERID=web")
        labels.add(cookie.split("=")[1].split(";")[0])
        assert "Served by real server" in body
    assert labels == {"web1", "web2"}
    # HTTPS with the self-signed certificate made on first start, trusted as its own root.
    cert = folder / "lbproxy-state" / "default-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    status, cookie, body = get(ports["https"], context=context)
    assert status == 200
    assert cookie.endswith("; Secure")
    assert "<td>x-forwarded-proto</td><td>https</td>" in body
    assert oct((folder / "lbproxy-state" / "default-key.pem").stat().st_mode & 0o777) == "0o600"
    status, _, page = get(ports["stats"])
    assert status == 200
    assert "web1" in page
    assert "web2" in page
    status, _, csv = get(ports["stats"], "/?csv")
    lines = csv.splitlines()
    header = lines[0].removeprefix("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    servers = [r for r in rows if r["pxname"] == "demo" and r["type"] == "2"]
    assert sorted(r["svname"] for r in servers) == ["web1", "web2"]
    assert all(r["status"] == "UP" for r in servers)
    assert "Traceback" not in (folder / "demo.err").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_a_browser_sees_the_demo_and_the_stats_page(demo: Demo) -> None:
    ports, _ = demo
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        for url, expected in [
            (f"http://127.0.0.1:{ports['http']}/", "Served by real server"),
            (f"http://127.0.0.1:{ports['stats']}/", "lbproxy statistics"),
            (f"https://127.0.0.1:{ports['https']}/", "Served by real server"),
        ]:
            result = subprocess.run(
                [
                    CHROMIUM,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "--ignore-certificate-errors",  # the demo's certificate is self-signed
                    "--dump-dom",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert expected in result.stdout, (url, result.stderr[-2000:])
