"""Each phase of a kept-alive connection keeps its own timeout: idle, head, server, body, tunnel.

Real sockets on loopback; what the client receives is checked byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable

import trio

from config.model import Timeouts
from tests.helpers import (
    Backend,
    Responder,
    Seen,
    proxy_one,
    raw_server,
    read_request_head,
    start_farm,
)

GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One response with a Content-Length body (what Backend sends), from ``buffer`` on."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a response head: {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(buffer) < end + length:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed mid-body"
        buffer += chunk
    response = bytes(buffer[: end + length])
    del buffer[: end + length]
    return response


async def read_to_close(stream: trio.SocketStream) -> bytes:
    received = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return received
        if not chunk:
            return received
        received += chunk


def slow_on(path: bytes) -> Responder:
    """A responder that never answers ``path`` and answers everything else at once."""

    def respond(seen: Seen) -> Reply | Awaitable[Reply]:
        if seen.target == path:

            async def never() -> Reply:
                await trio.sleep_forever()
                raise AssertionError("unreachable")

            return never()
        return 200, [], b"ok:" + seen.target

    return respond


async def after_one_exchange(
    nursery: trio.Nursery, slow_path: bytes, timeouts: Timeouts
) -> tuple[Backend, trio.SocketStream, bytearray]:
    """A proxy before a server that never answers ``slow_path``, and a client connection that
    has had one answered request (/a) and is kept alive: the server, the stream, what is left
    in its buffer."""
    web = Backend("w", responder=slow_on(slow_path))
    port = await proxy_one(nursery, web, timeouts=timeouts)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    await stream.send_all(GET % b"a")
    assert (await read_response(stream, buffer)).endswith(b"ok:/a")
    return web, stream, buffer


async def test_idle_wait_uses_client_idle_not_the_server_timeout() -> None:
    """A pause between requests longer than the server timeout but shorter than client_idle
    keeps the connection; a pause longer than client_idle closes it without a byte."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            timeouts = Timeouts(server=0.2, client_idle=1.0, header=0.2)
            _, stream, buffer = await after_one_exchange(nursery, b"/never", timeouts)
            await trio.sleep(0.5)
            await stream.send_all(GET % b"b")
            assert (await read_response(stream, buffer)).endswith(b"ok:/b")
            started = trio.current_time()
            assert await read_to_close(stream) == b""
            assert trio.current_time() - started >= 0.9
            nursery.cancel_scope.cancel()


async def test_server_timeout_after_a_kept_alive_exchange_is_504() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            timeouts = Timeouts(server=0.3, client_idle=5.0)
            _, stream, buffer = await after_one_exchange(nursery, b"/slow", timeouts)
            await stream.send_all(GET % b"slow")
            rest = bytes(buffer) + await read_to_close(stream)
            assert rest.startswith(b"HTTP/1.1 504 ")
            nursery.cancel_scope.cancel()


async def test_partial_head_after_a_kept_alive_exchange_is_408() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            timeouts = Timeouts(header=0.3, client_idle=5.0)
            web, stream, buffer = await after_one_exchange(nursery, b"/never", timeouts)
            await stream.send_all(b"GET /b HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert (bytes(buffer) + await read_to_close(stream)).startswith(b"HTTP/1.1 408 ")
            assert [seen.target for seen in web.seen] == [b"/a"]
            nursery.cancel_scope.cancel()


async def test_server_stalling_mid_body_truncates_the_response() -> None:
    async def stalls(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "s", stalls)
            _, pport = await start_farm(nursery, upstream, timeouts=Timeouts(server=0.3))
            stream = await trio.open_tcp_stream("127.0.0.1", pport)
            await stream.send_all(GET % b"a")
            received = await read_to_close(stream)
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.endswith(b"\r\n\r\n" + b"a" * 10)  # 10 of 100: truncated, no 504
            nursery.cancel_scope.cancel()


async def test_request_body_stall_is_408_and_reaches_no_further() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("w")
            timeouts = Timeouts(server=5.0, client_idle=0.3)
            port = await proxy_one(nursery, web, timeouts=timeouts)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            assert (await read_to_close(stream)).startswith(b"HTTP/1.1 408 ")
            assert web.seen == []
            nursery.cancel_scope.cancel()


async def test_stop_closes_an_idle_connection_and_finishes_a_busy_one() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("w", responder=slow_on(b"/never"))
            timeouts = Timeouts(server=0.5, client_idle=30.0)
            proxy, port = await start_farm(nursery, web, timeouts=timeouts)
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            buffer = bytearray()
            await idle.send_all(GET % b"a")
            assert (await read_response(idle, buffer)).endswith(b"ok:/a")
            busy = await trio.open_tcp_stream("127.0.0.1", port)
            await busy.send_all(GET % b"never")
            await web.wait_until(lambda: len(web.seen) >= 2)
            proxy.stop()
            assert await read_to_close(idle) == b""  # long before client_idle
            assert (await read_to_close(busy)).startswith(b"HTTP/1.1 504 ")
            nursery.cancel_scope.cancel()


async def test_client_stalling_mid_upload_is_408_and_not_the_servers_fault() -> None:
    """A client that stops in the middle of its body is the client's fault, even when the
    server timeout is the shorter one: 408, and the server's counters stay clean."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("w")
            timeouts = Timeouts(server=0.2, client_idle=0.6)
            proxy, port = await start_farm(nursery, web, timeouts=timeouts)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            assert (await read_to_close(stream)).startswith(b"HTTP/1.1 408 ")
            assert web.seen == []
            real = proxy.runtime.pools["www"].server("w")
            assert real is not None
            assert real.counters.failures_response == 0
            assert proxy.runtime.frontend("www").request_errors == 1
            nursery.cancel_scope.cancel()
