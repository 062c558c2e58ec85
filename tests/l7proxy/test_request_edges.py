"""Requests at the edges of the protocol and of the configuration, through real sockets: what
the client gets, and what the real server received (or that it received nothing)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest
import trio

from config.model import HttpsRedirect, ProxyConfig
from tests.helpers import (
    Backend,
    dead_server,
    raw_exchange,
    request,
    server,
    simple_config,
    start_farm,
    start_proxy,
)


def with_vs(config: ProxyConfig, **changes: Any) -> ProxyConfig:
    vs = replace(config.virtual_servers[0], **changes)
    return replace(config, virtual_servers=(vs,))


async def serve_one(nursery: trio.Nursery, backend: Backend, **vs_changes: Any) -> int:
    await nursery.start(backend.serve)
    config = with_vs(simple_config([server("web1", backend)]), **vs_changes)
    proxy = await start_proxy(nursery, config)
    return proxy.address("www")[1]


@pytest.mark.parametrize(
    ("method", "redirect", "status", "location"),
    [
        ("GET", HttpsRedirect(), 301, "https://shop.example/a?b=c"),
        ("HEAD", HttpsRedirect(), 301, "https://shop.example/a?b=c"),
        ("POST", HttpsRedirect(), 308, "https://shop.example/a?b=c"),  # keeps method and body
        ("PUT", HttpsRedirect(), 308, "https://shop.example/a?b=c"),
        ("POST", HttpsRedirect(code=302), 302, "https://shop.example/a?b=c"),
        ("GET", HttpsRedirect(port=8443), 301, "https://shop.example:8443/a?b=c"),
    ],
)
async def test_redirect_to_https_without_a_tls_bind(
    method: str, redirect: HttpsRedirect, status: int, location: str
) -> None:
    """The virtual server has no TLS bind of its own (TLS ends in front of it, or on another
    virtual server): the redirect goes to port 443 or the configured one, never a 500."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web, redirect_to_https=redirect)
            body = b"a=1" if method in ("POST", "PUT") else None
            resp = await request(
                port, method, "/a?b=c", body=body, headers={"Host": "shop.example"}
            )
            assert resp.status == status
            assert resp.header("location") == location
            assert web.seen == []
            nursery.cancel_scope.cancel()


async def test_http10_request_without_host_is_proxied_with_one() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web)
            reply = await raw_exchange(port, b"GET /old HTTP/1.0\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert reply.endswith(b"web1 GET /old 0")
            (seen,) = web.seen
            assert seen.header(b"host") == f"127.0.0.1:{port}".encode()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "data",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 connection preface
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    ],
    ids=["h2-preface", "h2-request-line", "h3", "1.2"],
)
async def test_other_http_versions_get_505_and_reach_no_server(data: bytes) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web)
            reply = await raw_exchange(port, data)
            assert reply.startswith(b"HTTP/1.1 505 ")
            assert b"connection: close" in reply.lower()
            assert web.seen == []
            assert web.connections == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n", 400),
        (b"GET http://other.example/ HTTP/1.1\r\nHost: shop.example\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456\r\n\r\n", 400),
    ],
    ids=["host-space", "host-slash", "host-two-ports", "absolute-form-other-host", "cl-digits"],
)
async def test_heads_a_proxy_must_refuse(head: bytes, status: int) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web)
            reply = await raw_exchange(port, head)
            assert reply.startswith(b"HTTP/1.1 %d " % status)
            assert web.seen == []
            nursery.cancel_scope.cancel()


async def test_absolute_form_naming_host_is_served() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web)
            head = b"GET http://shop.example/p HTTP/1.1\r\nHost: shop.example\r\n\r\n"
            reply = await raw_exchange(port, head, until_close=False)
            assert reply.startswith(b"HTTP/1.1 200 ")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [
        (None, b"203.0.113.9, 127.0.0.1"),  # the default: append (HAProxy, Pound)
        ((ipaddress.ip_network("127.0.0.0/8"),), b"203.0.113.9, 127.0.0.1"),  # trusted peer
        ((ipaddress.ip_network("10.0.0.0/8"),), b"127.0.0.1"),  # untrusted: replaced
    ],
)
async def test_client_x_forwarded_for_is_kept_only_from_trusted_peers(
    trusted: tuple[ipaddress.IPv4Network, ...] | None, expected: bytes
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web, forwardfor_trusted=trusted)
            resp = await request(port, headers={"X-Forwarded-For": "203.0.113.9"})
            assert resp.status == 200
            assert web.seen[0].all(b"x-forwarded-for") == [expected]
            nursery.cancel_scope.cancel()


async def test_x_forwarded_host_comes_from_host_never_from_the_client() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web, forwardfor=False)
            await request(port, headers={"Host": "shop.example", "X-Forwarded-Host": "evil"})
            seen = web.seen[0]
            assert seen.all(b"x-forwarded-host") == [b"shop.example"]
            # forwardfor governs X-Forwarded-For only; Proto/Port/Host are always set.
            assert seen.all(b"x-forwarded-for") == []
            assert seen.all(b"x-forwarded-proto") == [b"http"]
            assert seen.all(b"x-forwarded-port") == [str(port).encode()]
            nursery.cancel_scope.cancel()


async def test_head_request_gets_its_error_page_head_without_a_body() -> None:
    """lbproxy's own answers to HEAD carry the page's headers and no body (h11 refuses one)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, port = await start_farm(nursery, dead_server("web1"))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += await stream.receive_some(65536)
            assert reply.startswith(b"HTTP/1.1 503 ")
            assert reply.endswith(b"\r\n\r\n")  # the head only
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # still usable
            more = await stream.receive_some(65536)
            assert more.startswith(b"HTTP/1.1 503 ")
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_error_answer_closes_lingering() -> None:
    """After an error answer the proxy stops sending but reads and drops what the client still
    sends, for a moment (HAProxy's lingering close), instead of resetting a connection whose
    answer may still be on its way (curl --http2-prior-knowledge sends more right after the
    preface)."""
    settings = b"\x00\x00\x0c\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64" * 2
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await serve_one(nursery, web)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(65536):  # up to the proxy's FIN
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 505 ")
            assert reply.endswith(b"</html>\n")
            for _ in range(3):  # still read by the proxy: no reset, so no broken pipe
                await stream.send_all(settings)
                await trio.sleep(0.05)
            assert web.connections == 0
            await stream.aclose()
            nursery.cancel_scope.cancel()
