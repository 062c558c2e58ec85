"""SIGHUP reloads the configuration file in place: nothing dropped, state carried over."""

from __future__ import annotations

import http.client
import json
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.e2e.process import Lbproxy, backend, free_port, lbproxy, lbproxy_command

pytestmark = pytest.mark.e2e


def config_text(port: int, stats: int, servers: list[str], extra_vs: int | None = None) -> str:
    lines = [
        f"global: {{stats: {{bind: 127.0.0.1:{stats}}}}}",
        "virtual_servers:",
        "  - label: www",
        f"    bind: 127.0.0.1:{port}",
        "    persistence: {cookie: SERVERID}",
        "    real_servers:",
        *(f"      - {s}" for s in servers),
    ]
    if extra_vs is not None:
        lines += [
            "  - label: extra",
            f"    bind: 127.0.0.1:{extra_vs}",
            "    real_servers:",
            *(f"      - {s}" for s in servers[-1:]),
        ]
    return "\n".join(lines) + "\n"


def get(conn: http.client.HTTPConnection, cookie: str | None = None) -> tuple[str, str]:
    conn.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    return resp.read().decode().split()[0], resp.getheader("set-cookie") or ""


def fresh_get(port: int, cookie: str | None = None) -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return get(conn, cookie)
    finally:
        conn.close()


def stats_rows(port: int) -> dict[str, dict[str, str | int]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/?json")
    rows = json.loads(conn.getresponse().read())
    conn.close()
    return {f"{r['pool']}/{r['label']}": r for r in rows}


def wait_for(predicate: Callable[[], bool], what: str, proxy: Lbproxy) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{proxy.stderr()}"
        time.sleep(0.05)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_sighup_reloads_in_place(tmp_path: pathlib.Path) -> None:
    port, stats, extra, b1, b2 = (free_port() for _ in range(5))
    web1 = f"{{label: web1, address: 127.0.0.1:{b1}}}"
    web2 = f"{{label: web2, address: 127.0.0.1:{b2}}}"
    config = tmp_path / "lb.yaml"
    config.write_text(config_text(port, stats, [web1]))
    with backend("web1", b1), backend("web2", b2), lbproxy(config, ("127.0.0.1", port)) as proxy:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert get(kept)[0] == "web1"  # a keep-alive connection open across the reload
        for _ in range(3):
            fresh_get(port)
        before = stats_rows(stats)["www/web1"]["total"]

        # v2: web1 drained, web2 added, a second virtual server on a new port.
        drained = web1[:-1] + ", state: drain}"
        config.write_text(config_text(port, stats, [drained, web2], extra_vs=extra))
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: listening(extra), "the new bind never opened", proxy)
        assert fresh_get(port)[0] == "web2"  # new clients avoid the drained server
        assert fresh_get(port, "SERVERID=web1")[0] == "web1"  # its cookie holders stay
        assert get(kept)[0] in ("web1", "web2")  # the open connection carried on
        kept.close()
        assert fresh_get(extra)[0] == "web2"
        # The log says what changed.
        assert (
            f"configuration reloaded: binds: +extra 127.0.0.1:{extra}; "
            "virtual servers: +extra; servers: +extra/web2 +www/web2"
        ) in proxy.stderr()
        rows = stats_rows(stats)
        assert rows["www/web1"]["status"] == "DRAIN"
        assert int(rows["www/web1"]["total"]) >= int(before)  # counters carried over

        # A broken file changes nothing.
        config.write_text("virtual_servers: [")
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "still serving the previous configuration" in proxy.stderr(), "", proxy)
        assert fresh_get(extra)[0] == "web2"

        # v3: the second virtual server removed: its port closes, the first keeps serving.
        config.write_text(config_text(port, stats, [web1, web2]))
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not listening(extra), "the removed bind stayed open", proxy)
        assert fresh_get(port)[0] in ("web1", "web2")

        # A bind that cannot be opened refuses the whole reload; the old one goes on.
        with socket.create_server(("127.0.0.1", 0)) as taken:
            busy = taken.getsockname()[1]
            config.write_text(config_text(port, stats, [web1], extra_vs=busy))
            proxy.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload refused: cannot bind" in proxy.stderr(), "", proxy)
        assert fresh_get(port)[0] in ("web1", "web2")
        assert stats_rows(stats)["www/web2"]["status"] == "UP"  # still the v3 pool
        assert proxy.terminate() == 0
    assert "Traceback" not in proxy.stderr()


def test_stats_listener_that_cannot_bind_says_so(tmp_path: pathlib.Path) -> None:
    port, b1 = free_port(), free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        stats = taken.getsockname()[1]
        config = tmp_path / "lb.yaml"
        config.write_text(config_text(port, stats, [f"{{label: web1, address: 127.0.0.1:{b1}}}"]))
        result = subprocess.run(
            [*lbproxy_command(), "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"stats listener: cannot bind 127.0.0.1:{stats}" in result.stderr
    assert "Traceback" not in result.stderr
