"""Clients that misbehave (docs/architecture.md, "Bad input"): slow heads, silent TLS clients,
idle keep-alive."""

from __future__ import annotations

import pathlib

import trio
import trustme

from config.model import Address, Bind, CertificateSpec, Timeouts, TlsSettings
from tests.helpers import Backend, request, server, simple_config, start_farm, start_proxy

HALF_OPEN_CLIENTS = 300  # "hundreds of half-open clients must not starve a normal request"


async def test_half_open_clients_do_not_starve_a_normal_request() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            proxy, port = await start_farm(nursery, web, timeouts=Timeouts(header=10.0))
            slow = []
            for _ in range(HALF_OPEN_CLIENTS):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
                slow.append(stream)
            started = trio.current_time()
            resp = await request(port, "GET", "/normal")
            assert resp.status == 200
            assert resp.body == b"web1 GET /normal 0"
            assert trio.current_time() - started < 5  # served now, not after the slow ones
            assert proxy.runtime.connections >= HALF_OPEN_CLIENTS
            for stream in slow:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            _, port = await start_farm(nursery, web, timeouts=Timeouts(client_idle=0.3))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"web1 GET / 0"):
                    data += await stream.receive_some(4096)
                # Idle now: after client_idle the proxy closes without a 408 (HAProxy's
                # `timeout http-keep-alive` behaviour).
                rest = b""
                while chunk := await stream.receive_some(4096):
                    rest += chunk
                assert rest == b""
            nursery.cancel_scope.cancel()


async def test_silent_tls_client_is_dropped_after_the_handshake_timeout(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    bundle = tmp_path / "www.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(bundle))
    tls = TlsSettings(certificates=(CertificateSpec(str(bundle)),), handshake_timeout=0.3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            await nursery.start(web.serve)
            config = simple_config([server("web1", web)])
            vs = config.virtual_servers[0]
            from dataclasses import replace

            config = replace(
                config,
                virtual_servers=(replace(vs, binds=(Bind(Address("127.0.0.1", 0), tls),)),),
            )
            proxy = await start_proxy(nursery, config)
            _, port = proxy.address("www")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            async with stream:
                try:
                    data = await stream.receive_some(4096)  # sends nothing: waits to be dropped
                except trio.BrokenResourceError:
                    data = b""
            assert data == b""
            assert trio.current_time() - started < 3
            nursery.cancel_scope.cancel()
