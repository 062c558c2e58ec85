"""Exchanges against scripted real servers over memory streams: the exact interleavings that
loopback tests only hit by luck (tests/l7proxy/scripted.py)."""

from __future__ import annotations

import contextlib

import trio
import trio.testing

from balancing.state import Health
from config.model import Address, Timeouts
from tests.helpers import server, simple_config
from tests.l7proxy.scripted import Farm, ServerEnd, open_client

WEB1 = Address("192.0.2.11", 80)
WEB2 = Address("192.0.2.12", 80)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_response(end: ServerEnd) -> bytes:
    head = await end.read_head()
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(end.received) < length:
        end.received += await end.receive_some(65536)
    body, end.received = end.received[:length], end.received[length:]
    return head + body


async def eof(end: ServerEnd) -> bool:
    """True when the other side closed without sending anything more."""
    try:
        return await end.receive_some(65536) == b""
    except trio.ClosedResourceError:
        return True


async def test_final_status_to_expect_100_continue_is_not_reused() -> None:
    """A server that answers 417 before reading the announced body: the late body must not
    reach that server connection (it would be read as a request), the answer says the client
    connection closes, and the next client gets a fresh server connection."""
    early_answered = trio.Event()
    first_conn_closed = trio.Event()

    async def refuses_expect(end: ServerEnd) -> None:
        await end.read_head()
        await end.send_all(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        early_answered.set()
        assert await eof(end)  # closed by the proxy, with no body byte sent to it
        assert end.received == b""
        first_conn_closed.set()

    async def serves(end: ServerEnd) -> None:
        head = await end.read_head()
        assert head.startswith(b"GET /next ")
        await end.send_all(OK)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            farm = Farm({WEB1: [refuses_expect, serves]}, nursery)
            config = simple_config([server("web1", WEB1)])
            client, _ = await open_client(nursery, config, farm)
            await client.send_all(
                b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = await read_response(client)
            assert answer.startswith(b"HTTP/1.1 417 ")
            assert b"\r\nconnection: close\r\n" in answer.lower()
            await early_answered.wait()
            with contextlib.suppress(trio.BrokenResourceError):
                await client.send_all(b"hello")  # the late body: the proxy may have closed
            await first_conn_closed.wait()
            assert await eof(client)
            again, _ = await open_client(nursery, config, farm)
            await again.send_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(again)).endswith(b"\r\n\r\nok")
            assert len(farm.connections) == 2
            nursery.cancel_scope.cancel()


async def test_server_marked_down_while_waiting_get_is_resent_post_gets_502() -> None:
    waiting = trio.Event()

    async def silent(end: ServerEnd) -> None:
        await end.read_head()
        waiting.set()
        await trio.sleep_forever()

    async def serves(end: ServerEnd) -> None:
        await end.read_head()
        await end.send_all(OK)

    for method, expected, scripts2 in (
        (b"GET", b"HTTP/1.1 200 ", [serves]),
        (b"POST", b"HTTP/1.1 502 ", []),
    ):
        waiting = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                farm = Farm({WEB1: [silent], WEB2: list(scripts2)}, nursery)
                config = simple_config([server("web1", WEB1), server("web2", WEB2)])
                client, runtime = await open_client(nursery, config, farm)
                body = b"a=1" if method == b"POST" else b""
                await client.send_all(
                    method
                    + b" / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                await waiting.wait()
                web1 = runtime.pools["www"].server("web1")
                assert web1 is not None
                web1.health = Health.DOWN
                runtime.server_changed(web1)
                assert (await read_response(client)).startswith(expected)
                assert [address for address, _ in farm.connections] == [WEB1] + (
                    [WEB2] if scripts2 else []
                )
                nursery.cancel_scope.cancel()


def test_silent_server_is_504_after_the_server_timeout_exactly() -> None:
    """With a mock clock: the 504 comes at the server timeout (within the lazy-timer slack)."""

    async def silent(end: ServerEnd) -> None:
        await end.read_head()
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            farm = Farm({WEB1: [silent]}, nursery)
            config = simple_config([server("web1", WEB1)], timeouts=Timeouts(server=30.0))
            client, runtime = await open_client(nursery, config, farm)
            started = trio.current_time()
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(client)).startswith(b"HTTP/1.1 504 ")
            assert 30.0 - 0.3 <= trio.current_time() - started <= 30.0 + 0.3
            web1 = runtime.pools["www"].server("web1")
            assert web1 is not None
            assert web1.counters.failures_response == 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
