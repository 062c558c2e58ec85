"""Which server connections the keep-alive pool may hand out again (real sockets)."""

from __future__ import annotations

import trio

from tests.helpers import raw_server, read_request_head, request, start_farm


async def test_bytes_after_a_response_keep_the_connection_out_of_the_pool() -> None:
    """A server that sends more than the framed response: those bytes must never be taken for
    the start of the next response, so the next request goes over a new connection."""
    connections: list[int] = []

    async def overshoots(stream: trio.SocketStream) -> None:
        connections.append(len(connections))
        number = len(connections)
        while await read_request_head(stream):
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n%d" % number
            await stream.send_all(reply + b"X" * 1 + b"HTTP/1.1 500 Junk\r\n\r\n")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "s", overshoots)
            _, pport = await start_farm(nursery, upstream)
            first = await request(pport, "GET", "/a")
            second = await request(pport, "GET", "/b")
            assert (first.status, second.status) == (200, 200)
            assert (first.body, second.body) == (b"1X", b"2X")
            assert len(connections) == 2
            nursery.cancel_scope.cancel()
