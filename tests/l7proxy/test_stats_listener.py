"""The stats listener of a running proxy: real sockets, real backends, real TLS (trustme)."""

from __future__ import annotations

import base64
import csv
import io
import json
import pathlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from config.model import (
    Address,
    AdminState,
    Bind,
    CertificateSpec,
    CookiePersistence,
    GlobalSettings,
    HealthCheck,
    Pool,
    ProxyConfig,
    StatsAuth,
    StatsSettings,
    TlsSettings,
    VirtualService,
)
from l7proxy import app
from tests.helpers import Backend, Response, raw_exchange, request, server, start_proxy

PASSWORD = "correct horse"


def auth_header(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def make_config(
    web1: Backend, web2: Backend, tmp_path: pathlib.Path, ca: trustme.CA, *, auth: bool = True
) -> ProxyConfig:
    cert_path = tmp_path / "www.pem"
    ca.issue_cert("www.example.com").private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    password_file = tmp_path / "stats.pass"
    password_file.write_text(PASSWORD + "\nignored\n")
    password_file.chmod(0o600)
    tls = TlsSettings(certificates=(CertificateSpec(str(cert_path)),))
    vs = VirtualService(
        "www",
        (Bind(Address("127.0.0.1", 0)), Bind(Address("127.0.0.1", 0), tls)),
        Pool(
            "www",
            (server("web1", web1), server("web2", web2)),
            persistence=CookiePersistence("SERVERID"),
            health_check=HealthCheck(enabled=False),
        ),
    )
    stats = StatsSettings(
        Address("127.0.0.1", 0),
        path="/stats",
        auth=StatsAuth("admin", str(password_file)) if auth else None,
    )
    return ProxyConfig(
        (vs,),
        global_=GlobalSettings(state_dir=str(tmp_path / "state"), access_log=False, stats=stats),
    )


async def start(
    nursery: trio.Nursery, tmp_path: pathlib.Path, ca: trustme.CA, *, auth: bool = True
) -> tuple[app.ProxyHandle, int, int]:
    web1, web2 = Backend("web1"), Backend("web2")
    await nursery.start(web1.serve)
    await nursery.start(web2.serve)
    handle = await start_proxy(nursery, make_config(web1, web2, tmp_path, ca, auth=auth))
    stats_port = next(b for b in handle.bound if b.served is None).address[1]
    return handle, handle.address("www")[1], stats_port


@asynccontextmanager
async def running(
    tmp_path: pathlib.Path, ca: trustme.CA, *, auth: bool = True
) -> AsyncIterator[tuple[app.ProxyHandle, int, int]]:
    """A proxy with two real servers for the block: (handle, proxy port, stats port)."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            yield await start(nursery, tmp_path, ca, auth=auth)
            nursery.cancel_scope.cancel()


async def post(port: int, body: bytes, headers: dict[str, str]) -> Response:
    form = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    return await request(port, "POST", "/stats", body=body, headers=form)


def csv_table(body: bytes) -> dict[tuple[str, str], dict[str, str]]:
    lines = body.decode().splitlines()
    header = lines[0].removeprefix("# ").split(",")
    return {
        (v[0], v[1]): dict(zip(header, v, strict=True))
        for v in csv.reader(io.StringIO("\n".join(lines[1:])))
    }


async def test_a_200_kb_post_shows_in_bytes_in_of_frontend_and_server(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca) as (_, port, stats_port):
        body = b"x" * 200 * 1024
        response = await request(port, "POST", "/upload", body=body)
        served_by = response.header("x-served-by")
        assert response.status == 200
        assert served_by in ("web1", "web2")
        got = await request(stats_port, "GET", "/stats;csv", headers=auth_header())
        table = csv_table(got.body)
        assert int(table["www", served_by]["bin"]) >= len(body)
        assert int(table["www", "FRONTEND"]["bin"]) >= len(body)
        assert int(table["www", "BACKEND"]["bin"]) >= len(body)
        assert table["www", "FRONTEND"]["req_tot"] == "1"
        got = await request(stats_port, "GET", "/stats?json", headers=auth_header())
        rows = {(r["pool"], r["label"]): r for r in json.loads(got.body)}
        assert rows["www", served_by]["bytes_in"] >= len(body)


async def test_status_lines_have_reason_phrases_and_auth_is_required(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca) as (_, _, stats_port):
        head = await raw_exchange(
            stats_port, b"GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b'\r\nwww-authenticate: Basic realm="lbproxy stats"' in head
        token = base64.b64encode(f"admin:{PASSWORD}".encode())
        head = await raw_exchange(
            stats_port,
            b"GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"authorization: Basic " + token + b"\r\n\r\n",
        )
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        wrong = await request(stats_port, "GET", "/metrics", headers=auth_header(password="no"))
        assert wrong.status == 401
        assert wrong.header("www-authenticate")


def admin_state(handle: app.ProxyHandle, label: str) -> AdminState:
    real = handle.runtime.pools["www"].server(label)
    assert real is not None
    return real.admin


def page_token(page: Response) -> str:
    found = re.search(rb'name="token" value="([^"]+)"', page.body)
    assert found is not None, page.body[:500]
    return found.group(1).decode()


async def test_drain_from_the_page_needs_token_and_same_origin_then_moves_traffic(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca) as (handle, port, stats_port):
        page = await request(stats_port, "GET", "/stats", headers=auth_header())
        token = page_token(page)
        drain = f"token={token}&b=www&one=web1%7Cdrain".encode()
        stale = await post(stats_port, b"token=nope&b=www&one=web1%7Cdrain", auth_header())
        assert stale.status == 403
        foreign = await post(stats_port, drain, {**auth_header(), "Origin": "http://evil.example"})
        assert foreign.status == 403
        anonymous = await post(stats_port, drain, {})
        assert anonymous.status == 401
        assert anonymous.header("www-authenticate")
        assert admin_state(handle, "web1") is AdminState.READY
        origin = f"http://127.0.0.1:{stats_port}"
        done = await post(stats_port, drain, {**auth_header(), "Origin": origin})
        assert done.status == 303
        assert done.header("location") == "/stats?st=done"
        assert admin_state(handle, "web1") is AdminState.DRAIN
        page = await request(stats_port, "GET", "/stats?st=done", headers=auth_header())
        assert b'data-row="www/web1"' in page.body
        assert b"<td>DRAIN</td>" in page.body
        for _ in range(4):
            assert (await request(port)).header("x-served-by") == "web2"


async def test_metrics_have_every_server_status_and_the_tls_certificate_expiry(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca) as (handle, port, stats_port):
        await request(port)
        got = await request(stats_port, "GET", "/metrics", headers=auth_header())
        assert got.status == 200
        assert got.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
        samples = [
            sample
            for family in text_string_to_metric_families(got.body.decode())
            for sample in family.samples
        ]
        status = {
            (s.labels["server"], s.labels["state"]): s.value
            for s in samples
            if s.name == "haproxy_server_status"
        }
        assert status["web1", "UP"] == 1
        assert status["web2", "UP"] == 1
        tls_port = handle.address("www", 1)[1]
        expiry = [s for s in samples if s.name == "lbproxy_certificate_expiry_seconds"]
        assert len(expiry) == 1
        assert expiry[0].labels["proxy"] == "www"
        assert expiry[0].labels["bind"] == f"127.0.0.1:{tls_port}"
        assert expiry[0].labels["subject"].startswith("OU=Testing cert")  # trustme's leaf
        assert expiry[0].value > 86400  # trustme's leaf is valid for years
        page = await request(stats_port, "GET", "/stats", headers=auth_header())
        assert b"<h2>Certificates</h2>" in page.body
        assert b" days<" in page.body


async def test_without_auth_the_page_is_open_and_read_only(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca, auth=False) as (handle, _, stats_port):
        page = await request(stats_port, "GET", "/stats")
        assert page.status == 200
        assert b"<form" not in page.body
        refused = await post(stats_port, b"b=www&one=web1%7Cmaint", {})
        assert refused.status == 403
        assert handle.runtime.pools["www"].servers[0].admin is AdminState.READY


async def test_an_unreadable_password_file_stops_the_start_with_its_name(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    config = make_config(Backend("web1"), Backend("web2"), tmp_path, ca)
    stats = config.global_.stats
    assert stats is not None
    assert stats.auth is not None
    missing = str(tmp_path / "missing.pass")
    bad = replace(
        config,
        global_=replace(
            config.global_, stats=replace(stats, auth=replace(stats.auth, password_file=missing))
        ),
    )
    with pytest.raises(
        app.StartupError, match=r"stats password file .*missing\.pass: No such file"
    ):
        await app.serve(bad)


async def test_a_refused_action_comes_back_with_its_reason_and_csv_answers_haproxys_urls(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    async with running(tmp_path, ca) as (_, _, stats_port):
        token = page_token(await request(stats_port, "GET", "/stats", headers=auth_header()))
        body = f"token={token}&b=www&s=web9%0d%0a&action=drain".encode()
        refused = await post(stats_port, body, auth_header())
        assert refused.status == 303
        location = refused.header("location")
        assert location is not None
        assert location.startswith("/stats?st=error:")
        page = await request(stats_port, "GET", location, headers=auth_header())
        assert b"Refused: no server &#x27;web9\\r\\n&#x27; in pool &#x27;www&#x27;" in page.body
        for url in ("/stats?csv", "/stats;csv", "/stats?stats;csv", "/stats;csv;norefresh"):
            got = await request(stats_port, "GET", url, headers=auth_header())
            assert got.body.startswith(b"# pxname,svname,qcur,"), url


async def test_kill_sessions_from_the_page_closes_what_that_server_serves(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    """HAProxy's "Kill Sessions": a request being served by web1 is closed at once; the
    server stays in its state and new requests are served."""
    async with running(tmp_path, ca) as (handle, port, stats_port):
        web1 = handle.runtime.pools["www"].server("web1")
        assert web1 is not None
        client = await trio.open_tcp_stream("127.0.0.1", port)
        # A request that web1 holds: the Backend of the fixture answers at once, so hold it by
        # sending a body that never completes.
        await client.send_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nCookie: SERVERID=web1\r\nContent-Length: 100\r\n\r\n"
        )
        while not any(  # noqa: ASYNC110
            s.served_by() == ("www", "web1") for s in handle.runtime.sessions.values()
        ):
            await trio.sleep(0.01)  # nothing announces that the request reached web1
        page = await request(stats_port, "GET", "/stats", headers=auth_header())
        kill = f"token={page_token(page)}&b=www&one=web1%7Ckill".encode()
        done = await post(stats_port, kill, auth_header())
        assert done.status == 303
        assert await client.receive_some(65536) == b""  # closed, nothing answered
        await client.aclose()
        assert admin_state(handle, "web1") is AdminState.READY
        assert (await request(port)).status == 200
