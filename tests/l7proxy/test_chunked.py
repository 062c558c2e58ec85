"""Strict chunked framing of request bodies: the pure reader as a table, then through the proxy
(400 at once, nothing of the body reaches the server)."""

from __future__ import annotations

import pytest
import trio

from l7proxy.chunked import ChunkedBody, ChunkError
from tests.helpers import Backend, proxy_one, raw_exchange

GOOD = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;name=value\r\nhello\r\n0\r\n\r\n",
    b'5;name = "quoted; value" ; flag\r\nhello\r\n0\r\n\r\n',
    b"000005\r\nhello\r\n0\r\nX-Sum: abc def\r\n\r\n",
    b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n",
]
BAD = {
    "absurd-size": b"FFFFFFFFFFFFFFFFFFFF\r\n",
    "overflow": b"10000000000000000\r\n",
    "past-1TiB": b"20000000000\r\n",
    "bare-cr-in-ext": b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
    "nul-in-ext": b"5;a=\x00\r\nhello\r\n0\r\n\r\n",
    "ctl-in-ext": b"5;a\x01\r\nhello\r\n0\r\n\r\n",
    "bare-lf-size": b"5\nhello\r\n0\r\n\r\n",
    "bare-lf-trailer": b"0\r\nX-A: 1\n\r\n",
    "nul-in-trailer": b"0\r\nX-A: a\x00b\r\n\r\n",
    "bare-cr-in-trailer": b"0\r\nX-A: a\rb\r\n\r\n",
    "no-hex": b"g\r\n",
    "sign": b"-5\r\n",
    "data-too-long": b"2\r\nabc\r\n0\r\n\r\n",
    "long-ext": b"1;" + b"a" * 5000 + b"\r\n",
}


@pytest.mark.parametrize("body", GOOD)
@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_valid_framing_read_in_any_pieces(body: bytes, piece: int) -> None:
    reader = ChunkedBody()
    for start in range(0, len(body), piece):
        reader.feed(body[start : start + piece])
    assert reader.done


def test_bytes_after_the_end_are_not_read() -> None:
    reader = ChunkedBody()
    reader.feed(b"0\r\n\r\nGARBAGE \x00 that is the next request's business")
    assert reader.done


def feed_bytewise(reader: ChunkedBody, body: bytes) -> None:
    for byte in range(len(body)):  # byte by byte: no split hides a problem
        reader.feed(body[byte : byte + 1])


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_invalid_framing_is_refused(body: bytes) -> None:
    reader = ChunkedBody()
    with pytest.raises(ChunkError):
        feed_bytewise(reader, body)


HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
async def test_proxy_answers_400_at_once_and_forwards_no_body(body: bytes) -> None:
    with trio.fail_after(5):  # an absurd size must not wait for a body that never comes
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            reply = await raw_exchange(port, HEAD + body)
            assert reply.startswith(b"HTTP/1.1 400 ")
            assert web.seen == []
            nursery.cancel_scope.cancel()


async def test_bad_chunk_after_the_head_was_forwarded_closes_the_server_side() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HEAD + b"5\r\nhello\r\n")
            await web.wait_until(lambda: web.connections > 0)
            await stream.send_all(b"3;x=\x00\r\nabc\r\n0\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 400 ")
            assert web.seen == []  # the server never saw a complete request
            await stream.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("body", GOOD)
async def test_valid_chunked_bodies_reach_the_server(body: bytes) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            reply = await raw_exchange(port, HEAD + body, until_close=False)
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert web.seen[0].body in (b"hello", b"0123456789x")
            nursery.cancel_scope.cancel()
