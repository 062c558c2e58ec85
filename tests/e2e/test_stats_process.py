"""The ``lbproxy`` process's stats listener with curl: a 200 KB POST counted in bytes in, the
CSV and JSON behind Basic auth, and ``/metrics`` as Prometheus reads it."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.process import backend, free_port, lbproxy

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")


def curl(*args: str, stdin: bytes | None = None) -> bytes:
    assert CURL is not None
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "20", *args], input=stdin, capture_output=True, check=True
    )
    return done.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_sees_a_post_in_the_csv_json_and_metrics(tmp_path: pathlib.Path) -> None:
    port, stats, b1 = free_port(), free_port(), free_port()
    (tmp_path / "stats.pass").write_text("pw-for-curl\n")
    (tmp_path / "stats.pass").chmod(0o600)
    config = tmp_path / "lbproxy.yaml"
    config.write_text(
        "global:\n"
        f"  stats: {{bind: 127.0.0.1:{stats}, auth: {{user: ops, password_file: stats.pass}}}}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    health_check: {enabled: false}\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{b1}}}]\n"
    )
    # curl reads the credentials from a file, so they are not on its command line either.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login ops password pw-for-curl\n")
    with backend("web1", b1), lbproxy(config, wait_for=("127.0.0.1", stats)):
        body = b"p" * 200 * 1024
        answer = curl("--data-binary", "@-", f"http://127.0.0.1:{port}/upload", stdin=body)
        assert answer.split() == [b"web1", b"POST", b"/upload", str(len(body)).encode()]
        refused = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{stats}/?csv")
        assert refused == b"401"
        auth = ("--netrc-file", str(netrc))
        text = curl(*auth, f"http://127.0.0.1:{stats}/;csv").decode()
        lines = text.splitlines()
        header = lines[0].removeprefix("# ").split(",")
        table = {
            (v[0], v[1]): dict(zip(header, v, strict=True))
            for v in csv.reader(io.StringIO("\n".join(lines[1:])))
        }
        assert int(table["www", "web1"]["bin"]) >= len(body)
        assert int(table["www", "FRONTEND"]["bin"]) >= len(body)
        rows = json.loads(curl(*auth, f"http://127.0.0.1:{stats}/?json"))
        web1 = next(r for r in rows if r["label"] == "web1")
        assert web1["bytes_in"] >= len(body)
        assert web1["status"] == "UP"
        metrics = curl(*auth, f"http://127.0.0.1:{stats}/metrics").decode()
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        web1_up = (("proxy", "www"), ("server", "web1"), ("state", "UP"))
        assert values["haproxy_server_status", web1_up] == 1
        assert values["haproxy_frontend_bytes_in_total", (("proxy", "www"),)] >= len(body)
