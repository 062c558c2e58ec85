"""Request bodies reach the server whole, however they are cut on the way in (real sockets)."""

from __future__ import annotations

import pytest
import trio

from tests.helpers import Backend, start_farm


async def read_to_close(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


HEAD_CL = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 11\r\n\r\n"
HEAD_TE = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "pieces",
    [
        [HEAD_CL + b"hello world"],  # with the head: one write to the server, no pump
        [HEAD_CL + b"hello", b" world"],  # half with the head, the rest later
        [HEAD_CL, b"hello world"],  # the body after the head
        [HEAD_TE + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
        [HEAD_TE + b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"],
    ],
    ids=["whole", "split", "after", "chunked-whole", "chunked-split"],
)
async def test_body_reaches_the_server_whole(pieces: list[bytes]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            _, port = await start_farm(nursery, web)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            for piece in pieces:
                await stream.send_all(piece)
                # The proxy has read the head (it connected to the server) before the next
                # piece leaves, so the pieces reach it in separate reads.
                await web.wait_until(lambda: web.connections > 0)
            assert (await read_to_close(stream)).startswith(b"HTTP/1.1 200 ")
            assert [(seen.target, seen.body) for seen in web.seen] == [(b"/p", b"hello world")]
            nursery.cancel_scope.cancel()


async def test_bad_chunk_with_the_head_is_400_and_nothing_reaches_the_server() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            _, port = await start_farm(nursery, web)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HEAD_TE + b"zz\r\nhello\r\n0\r\n\r\n")
            assert (await read_to_close(stream)).startswith(b"HTTP/1.1 400 ")
            assert web.seen == []
            nursery.cancel_scope.cancel()
