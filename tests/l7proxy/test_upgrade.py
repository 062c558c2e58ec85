"""WebSocket-style upgrades: tunnelled only after the server answered 101 (docs/architecture.md,
"Bad input")."""

from __future__ import annotations

import trio

from tests.helpers import (
    raw_server,
    read_request_head,
    start_farm,
)

HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_websocket_upgrade_becomes_a_byte_tunnel() -> None:
    heads: list[bytes] = []

    async def ws_server(stream: trio.SocketStream) -> None:
        head = await read_request_head(stream)
        heads.append(head)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello-from-server"
        )
        while data := await stream.receive_some(1024):
            await stream.send_all(b"echo:" + data)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "ws", ws_server)
            _, pport = await start_farm(nursery, upstream)
            client = await trio.open_tcp_stream("127.0.0.1", pport)
            async with client:
                await client.send_all(HANDSHAKE)
                received = b""
                while b"hello-from-server" not in received:
                    received += await client.receive_some(1024)
                assert received.startswith(b"HTTP/1.1 101 ")
                head = received.split(b"\r\n\r\n")[0].lower()
                assert b"upgrade: websocket" in head
                assert b"connection: upgrade" in head
                await client.send_all(b"ping")
                reply = b""
                while reply != b"echo:ping":
                    reply += await client.receive_some(1024)
            seen = heads[0].lower()
            assert b"upgrade: websocket" in seen
            assert b"connection: upgrade" in seen
            assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in seen
            nursery.cancel_scope.cancel()


async def test_h2c_upgrade_is_stripped_and_a_stray_101_is_a_502() -> None:
    heads: list[bytes] = []

    async def rogue(stream: trio.SocketStream) -> None:
        heads.append(await read_request_head(stream))
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        await trio.sleep(1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "rogue", rogue)
            _, pport = await start_farm(nursery, upstream)
            client = await trio.open_tcp_stream("127.0.0.1", pport)
            async with client:
                await client.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, "
                    b"HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                )
                reply = b""
                while b"\r\n\r\n" not in reply:
                    reply += await client.receive_some(1024)
                assert reply.startswith(b"HTTP/1.1 502")
            seen = heads[0].lower()
            assert b"upgrade" not in seen
            assert b"http2-settings" not in seen
            nursery.cancel_scope.cancel()
