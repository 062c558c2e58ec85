"""The stats rows and their renderings (HTML, HAProxy's CSV, JSON): pure, from a Runtime built
from a config, with the clocks given."""

from __future__ import annotations

import csv
import datetime
import io
import json

from balancing.state import Health, new_states
from config.model import (
    Address,
    AdminState,
    Bind,
    CookiePersistence,
    HealthCheck,
    Pool,
    ProxyConfig,
    RealServer,
    VirtualService,
)
from l7proxy import statspage, statsrows
from l7proxy.runtime import Runtime
from l7proxy.upstream import UpstreamPool

WALL = 1_800_000_000.0  # epoch seconds "now"
CLOCKS = statsrows.Clocks(now=5000.0, wall=WALL, started=WALL - 600)

# The first columns of HAProxy's stats CSV, which scrapers index by position.
HAPROXY_HEAD = (
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot"
)


def make_runtime() -> Runtime:
    pool = Pool(
        "www",
        (RealServer("web1", Address("10.0.0.1", 80)), RealServer("web<2>", Address("::1", 80))),
        fallback=RealServer("fallback", Address("10.0.0.9", 80), backup=True),
        persistence=CookiePersistence("SERVERID"),
        health_check=HealthCheck(),
    )
    api = Pool("api", (RealServer("api1", Address("10.0.1.1", 8080)),))
    vs = VirtualService("www", (Bind(Address("127.0.0.1", 80)),), pool)
    config = ProxyConfig((vs,), pools={"api": api})
    runtime = Runtime(config, new_states(config.all_pools()), UpstreamPool())
    www = runtime.pools["www"]
    web1 = www.servers[0]
    www.begin(web1)
    c = web1.counters
    c.record_response(200)
    c.record_response(503)
    c.bytes_in, c.bytes_out = 204_800, 1234
    c.check_status, c.check_desc, c.check_duration = "L7STS", "status 500, expected 200", 0.012
    c.health_changed(Health.DOWN, 4900.0)  # DOWN since 100 s
    web1.health = Health.DOWN
    www.servers[1].set_admin(AdminState.DRAIN, 4990.0)
    front = runtime.frontend("www")
    front.opened()
    front.record(200, 300, 1000)
    front.request_errors = 2
    return runtime


def rows() -> tuple[statsrows.Row, ...]:
    return statsrows.build(make_runtime(), CLOCKS)


def test_rows_come_as_frontend_servers_backend_per_proxy() -> None:
    order = [(r.pxname, r.svname, r.kind) for r in rows()]
    assert order == [
        ("www", "FRONTEND", "frontend"),
        ("www", "web1", "server"),
        ("www", "web<2>", "server"),
        ("www", "fallback", "server"),
        ("www", "BACKEND", "backend"),
        ("api", "api1", "server"),
        ("api", "BACKEND", "backend"),
    ]


def test_csv_has_haproxys_columns_in_order_and_a_line_per_row() -> None:
    text = statspage.render_csv(rows()).decode()
    lines = text.splitlines()
    assert lines[0].startswith("# " + HAPROXY_HEAD + ",")
    assert all(line.endswith(",") for line in lines)  # as HAProxy writes them
    header = lines[0].removeprefix("# ").split(",")
    parsed = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
    assert all(len(values) == len(header) for values in parsed)
    table = {(v[0], v[1]): dict(zip(header, v, strict=True)) for v in parsed}
    web1 = table["www", "web1"]
    assert (web1["status"], web1["type"], web1["bin"], web1["bout"]) == (
        "DOWN",
        "2",
        "204800",
        "1234",
    )
    assert (web1["hrsp_2xx"], web1["hrsp_5xx"], web1["scur"], web1["stot"]) == ("1", "1", "1", "1")
    assert (web1["lastchg"], web1["downtime"], web1["chkdown"]) == ("100", "100", "1")
    assert web1["check_desc"] == "status 500, expected 200"  # quoted: it holds a comma
    assert (web1["check_duration"], web1["addr"], web1["cookie"]) == ("12", "10.0.0.1:80", "web1")
    assert table["www", "web<2>"]["status"] == "DRAIN"
    assert table["www", "web<2>"]["lastchg"] == "10"  # an admin change resets it too
    assert table["www", "fallback"]["bck"] == "1"
    front = table["www", "FRONTEND"]
    assert (front["type"], front["status"], front["scur"], front["stot"]) == ("0", "OPEN", "1", "1")
    assert (front["bin"], front["bout"], front["ereq"], front["req_tot"]) == (
        "300",
        "1000",
        "2",
        "1",
    )
    back = table["www", "BACKEND"]
    assert (back["type"], back["status"], back["bin"], back["act"]) == ("1", "UP", "204800", "0")
    assert back["bck"] == "1"
    assert back["algo"] == "roundrobin"
    assert table["api", "BACKEND"]["act"] == "1"


def test_json_keeps_its_server_keys_and_shows_last_change_in_epoch_seconds() -> None:
    data = json.loads(statspage.render_json(rows()))
    by_name = {(r["pool"], r["label"]): r for r in data}
    web1 = by_name["www", "web1"]
    assert web1["last_change"] == WALL - 100
    assert (web1["total"], web1["active"], web1["bytes_in"]) == (1, 1, 204_800)
    assert web1["check_duration"] == 0.012
    # never changed: since the process started, not since the trio clock's zero
    assert by_name["api", "api1"]["last_change"] == WALL - 600
    assert by_name["www", "FRONTEND"]["type"] == "frontend"


def snapshot(certificates: tuple[statsrows.CertificateRow, ...] = ()) -> statsrows.Snapshot:
    return statsrows.Snapshot(
        rows(), certificates, version="1.2.3", pid=4242, uptime=3725.0, started=WALL - 3725
    )


def cert(days: float, subject: str = "CN=www.example.com") -> statsrows.CertificateRow:
    not_after = datetime.datetime.fromtimestamp(WALL + days * 86400, datetime.UTC)
    return statsrows.CertificateRow(
        "www", "127.0.0.1:443", subject, "/etc/lbproxy/www.pem", not_after, days * 86400
    )


def test_html_shows_state_escaped_with_uptime_and_certificates() -> None:
    page = statspage.render_html(snapshot((cert(45.5), cert(-2, "CN=old<")))).decode()
    assert "web&lt;2&gt;" in page
    assert "web<2>" not in page
    assert "fallback (fallback)" in page
    assert "L7STS status 500, expected 200 (12 ms)" in page
    assert "1m40s" in page  # web1 DOWN for 100 s
    assert "lbproxy 1.2.3, pid 4242, up 1h2m" in page
    assert ">45 days<" in page
    assert ">EXPIRED<" in page
    assert "CN=old&lt;" in page
    assert "<form" not in page
    assert "token" not in page


def test_html_with_a_login_has_the_action_forms_and_the_token() -> None:
    options = statspage.PageOptions(base="/stats", token="tok&en", user="admin", message="Done.")
    page = statspage.render_html(snapshot(), options).decode()
    assert page.count('<form method="post" action="/stats"') == 2  # www and api
    assert 'name="token" value="tok&amp;en"' in page
    assert 'name="one" value="web1|drain"' in page
    assert 'name="s" value="web&lt;2&gt;"' in page
    assert "logged in as admin" in page
    assert "Done." in page
