"""The stats page in a real browser: log in with Basic auth, drain a server with the page's
button, see its row say DRAIN and new clients go to the other server.

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``: JSON messages ending in
NUL on file descriptors 3 and 4), with nothing but the standard library.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import pathlib
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.e2e.process import backend, free_port, lbproxy
from tests.e2e.test_demo import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret stats"
STEP_TIMEOUT = 30.0


class DevTools:
    """One page of a headless Chromium, over the DevTools pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self.proc = proc
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, "the browser did not answer in time"
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 65536)
                assert chunk, "the browser closed its pipe"
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def wait_event(self, method: str) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return
            self.events.append(self._message(deadline))

    def open_page(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def click_and_wait(self, selector: str) -> None:
        self.events.clear()
        clicked = self.evaluate(
            f"(() => {{ const b = document.querySelector({json.dumps(selector)});"
            " if (!b) return false; b.click(); return true; })()"
        )
        assert clicked, f"no {selector} on the page"
        self.wait_event("Page.loadEventFired")


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe moved above fd 9, so the shell's ``3<&N 4>&M`` cannot clobber one end."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved[0], moved[1]


@contextmanager
def chromium(profile: str) -> Iterator[DevTools]:
    assert CHROMIUM is not None
    to_read, to_browser = _high(os.pipe())  # the browser reads commands on its fd 3
    from_browser, to_write = _high(os.pipe())  # and writes answers on its fd 4
    proc = subprocess.Popen(
        [
            "bash",  # dash takes one-digit descriptors only
            "-c",
            f'exec "$0" "$@" 3<&{to_read} 4>&{to_write}',
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ],
        pass_fds=(to_read, to_write),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_read)
    os.close(to_write)
    try:
        yield DevTools(proc, to_browser, from_browser)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(to_browser)
        os.close(from_browser)


def served_by(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode().split()[0]
    finally:
        conn.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_a_browser_drains_a_server_from_the_stats_page(tmp_path: pathlib.Path) -> None:
    port, stats, b1, b2 = (free_port() for _ in range(4))
    password_file = tmp_path / "stats.pass"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    config = tmp_path / "lbproxy.yaml"
    config.write_text(
        "global:\n"
        f"  stats: {{bind: 127.0.0.1:{stats}, path: /stats,"
        f" auth: {{user: admin, password_file: {password_file.name}}}}}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    persistence: {cookie: SERVERID}\n"
        "    health_check: {enabled: false}\n"
        "    real_servers:\n"
        f"      - {{label: web1, address: 127.0.0.1:{b1}}}\n"
        f"      - {{label: web2, address: 127.0.0.1:{b2}}}\n"
    )
    with (
        backend("web1", b1),
        backend("web2", b2),
        lbproxy(config, wait_for=("127.0.0.1", stats)) as proxy,
        tempfile.TemporaryDirectory() as profile,
        chromium(profile) as browser,
    ):
        assert {served_by(port) for _ in range(4)} == {"web1", "web2"}
        browser.open_page()
        browser.navigate(f"http://admin:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{stats}/stats")
        text = browser.evaluate("document.body.innerText")
        assert "logged in as admin" in text, text[:500]
        browser.click_and_wait('button[name="one"][value="web1|drain"]')
        assert browser.evaluate("location.pathname + location.search") == "/stats?st=done"
        row = browser.evaluate("document.querySelector('tr[data-row=\"www/web1\"]').innerText")
        assert "DRAIN" in row, row
        assert "Done." in browser.evaluate("document.body.innerText")
        assert {served_by(port) for _ in range(6)} == {"web2"}
        log = proxy.stderr()
        assert "stats page: www/web1 -> drain by user admin" in log
        assert PASSWORD not in log
