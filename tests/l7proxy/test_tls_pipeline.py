"""TLS binds through the running proxy: same pool and persistence as plain HTTP, Pound's headers,
redirects, HSTS and Location rewriting. Real TLS 1.2 and 1.3 with a trustme CA."""

from __future__ import annotations

import http.client
import pathlib
import ssl
from dataclasses import replace
from typing import Any

import pytest
import trio
import trustme

from config.model import (
    Address,
    Bind,
    CertificateSpec,
    CookiePersistence,
    GlobalSettings,
    HealthCheck,
    HttpsRedirect,
    Pool,
    ProxyConfig,
    RealServer,
    TlsSettings,
    Verify,
    VirtualService,
)
from tests.helpers import Backend, Response, Seen, request, start_proxy


def bundle(ca: trustme.CA, tmp_path: pathlib.Path, *names: str) -> str:
    cert = ca.issue_cert(*names)
    path = tmp_path / f"{names[0]}.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


def tls_config(
    backend: Backend, cert_path: str, tmp_path: pathlib.Path, **vs_kwargs: Any
) -> ProxyConfig:
    tls = vs_kwargs.pop("tls", TlsSettings(certificates=(CertificateSpec(cert_path),)))
    vs = VirtualService(
        label="www",
        binds=(Bind(Address("127.0.0.1", 0)), Bind(Address("127.0.0.1", 0), tls)),
        pool=Pool(
            "www",
            (RealServer("web1", backend.address),),
            persistence=CookiePersistence("SERVERID"),
            health_check=HealthCheck(enabled=False),
        ),
        **vs_kwargs,
    )
    return ProxyConfig(
        (vs,), global_=GlobalSettings(state_dir=str(tmp_path / "state"), access_log=False)
    )


def https_request(
    port: int,
    ca: trustme.CA,
    path: str = "/",
    *,
    version: ssl.TLSVersion | None = None,
    headers: dict[str, str] | None = None,
    client_cert: trustme.LeafCert | None = None,
) -> Response:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if client_cert is not None:
        client_cert.configure_cert(context)
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_bind_serves_the_same_pool_with_https_facts(
    ca: trustme.CA, tmp_path: pathlib.Path, version: ssl.TLSVersion
) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            await nursery.start(web.serve)
            config = tls_config(web, bundle(ca, tmp_path, "localhost"), tmp_path)
            proxy = await start_proxy(nursery, config)
            _, tls_port = proxy.address("www", 1)
            forged = {"X-SSL-Subject": "CN=admin", "X-SSL-certificate": "forged"}
            resp = await trio.to_thread.run_sync(
                lambda: https_request(tls_port, ca, version=version, headers=forged)
            )
            assert resp.status == 200
            assert resp.header("set-cookie") == "SERVERID=web1; path=/; Secure"
            seen = web.seen[-1]
            assert seen.header(b"x-forwarded-proto") == b"https"
            assert seen.header(b"x-forwarded-port") == str(tls_port).encode()
            assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
            expected = b"TLSv1.3" if version is ssl.TLSVersion.TLSv1_3 else b"TLSv1.2"
            assert (seen.header(b"x-ssl-cipher") or b"").startswith(expected)
            # No client certificate: the forged certificate headers are gone, none added.
            assert seen.header(b"x-ssl-subject") is None
            assert seen.header(b"x-ssl-certificate") is None
            # The plain bind of the same virtual server: no Secure flag, proto http.
            _, plain_port = proxy.address("www", 0)
            plain = await request(plain_port, "GET", "/", headers=forged)
            assert plain.header("set-cookie") == "SERVERID=web1; path=/"
            assert web.seen[-1].header(b"x-ssl-subject") is None
            assert web.seen[-1].header(b"x-forwarded-proto") == b"http"
            nursery.cancel_scope.cancel()


async def test_client_certificate_details_reach_the_server(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("alice@example.com", common_name="alice")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            await nursery.start(web.serve)
            cert_path = bundle(ca, tmp_path, "localhost")
            tls = TlsSettings(
                certificates=(CertificateSpec(cert_path),),
                client_ca=str(ca_file),
                verify=Verify.OPTIONAL,
            )
            proxy = await start_proxy(nursery, tls_config(web, cert_path, tmp_path, tls=tls))
            _, port = proxy.address("www", 1)
            forged = {"X-SSL-Subject": "CN=admin"}
            await trio.to_thread.run_sync(
                lambda: https_request(port, ca, client_cert=client, headers=forged)
            )
            seen = web.seen[-1]
            subjects = seen.all(b"x-ssl-subject")  # the forged one is gone, ours is there
            assert len(subjects) == 1
            assert subjects[0].endswith(b"CN = alice")  # Pound's one-line format
            assert seen.header(b"x-ssl-issuer") is not None
            assert seen.header(b"x-ssl-serial") is not None
            assert (seen.header(b"x-ssl-certificate") or b"").startswith(b"-----BEGIN CERTIFICATE")
            nursery.cancel_scope.cancel()


async def test_redirect_to_https_and_hsts(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            await nursery.start(web.serve)
            cert_path = bundle(ca, tmp_path, "localhost")
            config = tls_config(
                web, cert_path, tmp_path, redirect_to_https=HttpsRedirect(), hsts=31536000.0
            )
            # The redirect names the configured TLS port; give the TLS bind a fixed free one.
            from tests.helpers import free_port

            tls_port = free_port()
            vs = config.virtual_servers[0]
            binds = (vs.binds[0], replace(vs.binds[1], address=Address("127.0.0.1", tls_port)))
            config = replace(config, virtual_servers=(replace(vs, binds=binds),))
            proxy = await start_proxy(nursery, config)
            _, plain_port = proxy.address("www", 0)
            resp = await request(plain_port, "GET", "/a/b?c=d", headers={"Host": "localhost:80"})
            assert resp.status == 301
            assert resp.header("location") == f"https://localhost:{tls_port}/a/b?c=d"
            assert resp.header("strict-transport-security") is None
            assert web.seen == []
            secure = await trio.to_thread.run_sync(lambda: https_request(tls_port, ca))
            assert secure.status == 200
            assert secure.header("strict-transport-security") == "max-age=31536000"
            nursery.cancel_scope.cancel()


async def test_location_pointing_at_the_real_server_is_rewritten(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    holder: dict[str, Backend] = {}

    def reply(seen: Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        address = holder["web"].address
        if seen.target == b"/own":
            location = f"http://{address}/login".encode()
        elif seen.target == b"/scheme":
            location = b"http://localhost/next"
        else:
            location = b"http://elsewhere.example/"
        return 302, [(b"location", location)], b""

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            web = holder["web"] = Backend("web1", reply)
            await nursery.start(web.serve)
            config = tls_config(web, bundle(ca, tmp_path, "localhost"), tmp_path)
            proxy = await start_proxy(nursery, config)
            _, port = proxy.address("www", 1)

            async def location(path: str) -> str | None:
                resp = await trio.to_thread.run_sync(
                    lambda: https_request(port, ca, path, headers={"Host": "localhost"})
                )
                return resp.header("location")

            assert await location("/own") == "https://localhost/login"
            assert await location("/scheme") == "https://localhost/next"
            assert await location("/other") == "http://elsewhere.example/"
            nursery.cancel_scope.cancel()


async def test_large_bodies_both_ways_over_tls(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    big = bytes(range(256)) * 32768  # 8 MiB: many TLS records, partial writes, back-pressure

    def reply(seen: Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert seen.body == big or seen.method == b"GET"
        return 200, [], big if seen.method == b"GET" else str(len(seen.body)).encode()

    def both_ways(port: int) -> tuple[bytes, bytes]:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
        try:
            conn.request("POST", "/up", body=big)
            up = conn.getresponse().read()
            conn.request("GET", "/down")  # same kept-alive TLS connection
            down = conn.getresponse().read()
            return up, down
        finally:
            conn.close()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            web = Backend("web1", reply)
            await nursery.start(web.serve)
            proxy = await start_proxy(
                nursery, tls_config(web, bundle(ca, tmp_path, "localhost"), tmp_path)
            )
            _, port = proxy.address("www", 1)
            up, down = await trio.to_thread.run_sync(lambda: both_ways(port))
            assert up == str(len(big)).encode()
            assert down == big
            nursery.cancel_scope.cancel()


async def test_tls_client_sees_truncation_when_the_server_dies_mid_body(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    from config.model import Address as Addr
    from tests.helpers import read_request_head, serve_raw

    async def dies(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await trio.sleep(0.1)
        await stream.aclose()

    def fetch(port: int) -> Exception | bytes:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            conn.request("GET", "/")
            return conn.getresponse().read()
        except Exception as error:  # the point: the read must fail, not end cleanly
            return error
        finally:
            conn.close()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_raw, dies)
            web = Backend("unused")
            config = tls_config(web, bundle(ca, tmp_path, "localhost"), tmp_path)
            vs = config.virtual_servers[0]
            from dataclasses import replace

            pool = replace(vs.pool, real_servers=(RealServer("dies", Addr("127.0.0.1", port)),))
            config = replace(config, virtual_servers=(replace(vs, pool=pool),))
            proxy = await start_proxy(nursery, config)
            _, tls_port = proxy.address("www", 1)
            result = await trio.to_thread.run_sync(lambda: fetch(tls_port))
            assert isinstance(result, http.client.IncompleteRead | ConnectionError | ssl.SSLError)
            nursery.cancel_scope.cancel()
