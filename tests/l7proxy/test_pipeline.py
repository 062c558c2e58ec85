"""The proxy end to end in-process: real sockets on loopback, real h11 backends, real clients."""

from __future__ import annotations

import trio

from tests.helpers import (
    Backend,
    Seen,
    proxy_one,
    raw_exchange,
    raw_server,
    request,
    start_farm,
)


async def test_get_is_proxied_with_forwarding_headers() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            resp = await request(
                port,
                "GET",
                "/a?b=c",
                headers={
                    "X-Forwarded-For": "203.0.113.7",
                    "X-Forwarded-Proto": "https",
                    "Connection": "X-Secret, keep-alive",
                    "X-Secret": "hop",
                    "Keep-Alive": "timeout=5",
                    "Upgrade": "h2c",
                    "HTTP2-Settings": "AAMAAABkAAQAAP__",
                    "Proxy-Connection": "keep-alive",
                },
            )
            assert resp.status == 200
            assert resp.body == b"web1 GET /a?b=c 0"
            seen = web.seen[0]
            assert seen.header(b"host") == f"127.0.0.1:{port}".encode()
            # The client's hop is kept, ours is appended last, in one field.
            assert seen.all(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]
            assert seen.all(b"x-forwarded-proto") == [b"http"]  # never the client's
            assert seen.all(b"x-forwarded-port") == [str(port).encode()]
            for hop in (b"x-secret", b"keep-alive", b"upgrade", b"http2-settings"):
                assert seen.header(hop) is None, hop
            assert seen.header(b"proxy-connection") is None
            assert seen.header(b"connection") is None
            nursery.cancel_scope.cancel()


async def test_keep_alive_reuses_one_server_connection() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            for i in range(5):
                resp = await request(port, "GET", f"/{i}")
                assert resp.status == 200
            # Five client connections, one kept-alive server connection.
            assert [s.connection for s in web.seen] == [1, 1, 1, 1, 1]
            nursery.cancel_scope.cancel()


async def test_request_bodies_content_length_and_chunked() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            body = bytes(range(256)) * 4096  # 1 MiB
            resp = await request(port, "POST", "/upload", body=body)
            assert resp.body == f"web1 POST /upload {len(body)}".encode()
            assert web.seen[-1].body == body
            chunked = (
                b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            raw = await raw_exchange(port, chunked)
            assert raw.startswith(b"HTTP/1.1 200")
            assert web.seen[-1].body == b"hello world"
            assert web.seen[-1].header(b"transfer-encoding") == b"chunked"
            nursery.cancel_scope.cancel()


async def test_head_204_304_have_no_body_and_connection_stays_usable() -> None:
    def reply(seen: Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if seen.target == b"/204":
            return 204, [], b""
        if seen.target == b"/304":
            return 304, [(b"etag", b'"x"')], b""
        return 200, [(b"content-length", b"5")], b"hello"

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1", reply)
            port = await proxy_one(nursery, web)
            pipelined = (
                b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            raw = await raw_exchange(port, pipelined)
            parts = raw.split(b"HTTP/1.1 ")[1:]
            assert [p[:3] for p in parts] == [b"200", b"204", b"304", b"200"]
            assert parts[0].endswith(b"\r\n\r\n")  # HEAD: headers only
            assert b"content-length: 5" in parts[0].lower()
            assert parts[3].endswith(b"hello")
            assert [s.target for s in web.seen] == [b"/head", b"/204", b"/304", b"/last"]
            nursery.cancel_scope.cancel()


async def test_expect_100_continue_is_relayed() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                first = await stream.receive_some(1024)
                assert first.startswith(b"HTTP/1.1 100")
                await stream.send_all(b"data")
                rest = b""
                while b"web1 PUT /x 4" not in rest:
                    rest += await stream.receive_some(1024)
                assert rest.startswith(b"HTTP/1.1 200") or b"HTTP/1.1 200" in first + rest
            assert web.seen[0].body == b"data"
            nursery.cancel_scope.cancel()


async def test_response_framings_chunked_and_until_close() -> None:
    async def chunked_server(stream: trio.SocketStream) -> None:
        from tests.helpers import read_request_head

        head = await read_request_head(stream)
        if b"/close" in head:
            await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
        else:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "raw", chunked_server)
            _, pport = await start_farm(nursery, upstream)
            assert (await request(pport, "GET", "/chunked")).body == b"abcde"
            assert (await request(pport, "GET", "/close")).body == b"until-close"
            # The bytes on the wire (response_writer): an HTTP/1.1 client gets a body of
            # unknown length chunked and the connection stays open for it; an HTTP/1.0 client
            # gets it as it came, ended by the close it is told about.
            raw = await raw_exchange(
                pport,
                b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            first, second = raw.split(b"HTTP/1.1 200 ")[1:]
            assert b"transfer-encoding: chunked" in first.lower()
            assert first.endswith(b"\r\n\r\nb\r\nuntil-close\r\n0\r\n\r\n")
            assert b"connection: close" in second.lower()
            assert second.endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            old = await raw_exchange(pport, b"GET /chunked HTTP/1.0\r\n\r\n")
            head, _, body = old.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"connection: close" in head.lower()
            assert b"transfer-encoding" not in head.lower()
            assert body == b"abcde"
            nursery.cancel_scope.cancel()
