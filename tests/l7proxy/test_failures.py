"""Failure mapping (docs/architecture.md, "Where decisions live"): every row through real
sockets, checking bytes on both sides."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace

import pytest
import trio

from config.model import Address, Timeouts
from tests.helpers import (
    Backend,
    Changes,
    dead_server,
    free_port,
    proxy_one,
    raw_exchange,
    raw_server,
    read_request_head,
    request,
    serve_raw,
    server,
    simple_config,
    start_farm,
    start_proxy,
)


async def test_refused_connect_goes_to_next_server_even_for_post() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web2")
            _, port = await start_farm(nursery, dead_server("web1"), web)
            for _ in range(4):
                resp = await request(port, "POST", "/form", body=b"a=1")
                assert resp.status == 200
                assert resp.body == b"web2 POST /form 3"
            # Each POST reached the live server exactly once.
            assert [s.body for s in web.seen] == [b"a=1"] * 4
            nursery.cancel_scope.cancel()


async def test_no_server_at_all_is_503_with_html() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, port = await start_farm(nursery, dead_server("web1"))
            resp = await request(port, "GET", "/")
            assert resp.status == 503
            assert (
                resp.header(
                    "content-type",
                )
                == "text/html; charset=utf-8"
            )
            assert b"503 Service Unavailable" in resp.body
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"",  # closed without a response byte
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\x00\r\n\r\nhello",
    ],
    ids=["duplicate-cl", "bad-status", "garbage", "bad-header", "empty", "te-and-cl", "nul"],
)
async def test_bad_or_missing_response_head_is_502(reply: bytes) -> None:
    async def broken(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        if reply:
            await stream.send_all(reply)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "bad", broken)
            _, pport = await start_farm(nursery, upstream)
            resp = await request(pport, "POST", "/", body=b"x")
            assert resp.status == 502
            nursery.cancel_scope.cancel()


async def test_silent_server_is_504_after_server_timeout() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "slow", silent)
            _, pport = await start_farm(nursery, upstream, timeouts=Timeouts(server=0.5))
            resp = await request(pport, "GET", "/")
            assert resp.status == 504
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\npartial",
    ],
)
async def test_mid_body_death_truncates_the_client_response(
    response: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client sees what arrived, then the end; the log says the server closed in the
    data phase (HAProxy's SD), counted against the server."""

    async def dies(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(response)
        await trio.sleep(0.1)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "dies", dies)
            config = simple_config([upstream])
            config = replace(config, global_=replace(config.global_, access_log=True))
            proxy = await start_proxy(nursery, config)
            pport = proxy.address("www")[1]
            raw = await raw_exchange(pport, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"partial" in body  # what arrived, then the connection ends short
            assert not body.endswith(b"0\r\n\r\n")  # a chunked body is not ended for it
            proxy.sink.flush()
            counters = proxy.runtime.pools["www"].server("dies")
            assert counters is not None
            assert counters.counters.failures_response == 1
            nursery.cancel_scope.cancel()
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.search(r" 200 \d+ - - SD", line), line


async def test_idempotent_request_is_resent_when_server_closes_before_responding() -> None:
    calls = {"n": 0}

    async def flaky(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        calls["n"] += 1
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "flaky", flaky)
            _, pport = await start_farm(nursery, upstream, Backend("good"))
            for _ in range(2):
                assert (await request(pport, "GET", "/")).status == 200
            assert calls["n"] == 1  # the GET that hit "flaky" was resent to "good"
            # A POST that reached a server is never sent twice.
            calls["n"] = 0
            statuses = [(await request(pport, "POST", "/", body=b"x")).status for _ in range(2)]
            assert sorted(statuses) == [200, 502]
            assert calls["n"] == 1
            nursery.cancel_scope.cancel()


async def test_header_timeout_is_408_and_close() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            _, port = await start_farm(nursery, web, timeouts=Timeouts(header=0.3))
            raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert raw.startswith(b"HTTP/1.1 408")
            assert web.seen == []
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", b"400"),  # space before colon
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n", b"400"),  # obs-fold
        (b"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", b"400"),
    ],
    ids=[
        "no-host",
        "two-hosts",
        "space-colon",
        "obs-fold",
        "fragment",
        "te-and-cl",
        "unknown-te",
        "negative-cl",
        "cl-list",
        "long-uri",
        "many-headers",
        "big-header",
        "nul",
    ],
)
async def test_bad_requests_get_their_status_and_close(data: bytes, status: bytes) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web = Backend("web1")
            port = await proxy_one(nursery, web)
            raw = await raw_exchange(port, data)  # returns only once the proxy closed
            assert raw.startswith(b"HTTP/1.1 " + status), raw[:80]
            assert b"connection: close" in raw.lower()
            assert web.seen == []  # nothing reached the real server
            nursery.cancel_scope.cancel()


async def test_bytes_after_a_complete_response_are_never_the_next_response() -> None:
    async def smuggler(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        # A 204 has no body: what follows is not part of it, and must not answer request two.
        await stream.send_all(
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
        )
        while await stream.receive_some(65536):
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "smuggler", smuggler)
            _, pport = await start_farm(nursery, upstream, Backend("web"))
            bodies = [(await request(pport, "GET", "/")).body for _ in range(4)]
            assert b"EVIL!" not in bodies
            assert bodies.count(b"") == 2  # the 204s
            nursery.cancel_scope.cancel()


async def test_requests_waiting_on_a_server_marked_down_are_cut_short() -> None:
    from dataclasses import replace

    from config.model import HealthCheck, RealServer

    arrived: list[bytes] = []
    arrivals = Changes()

    async def hangs(stream: trio.SocketStream) -> None:
        arrived.append(await read_request_head(stream))
        arrivals.notify()
        await trio.sleep_forever()  # an unplugged or frozen server: no answer, no close

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            sorry = Backend("sorry")
            await nursery.start(sorry.serve)
            port = await nursery.start(serve_raw, hangs)
            # The hung server's TCP checks go to a port this test controls.
            check_listener = trio.socket.socket()
            await check_listener.bind(("127.0.0.1", 0))
            check_listener.listen(16)
            check_port = check_listener.getsockname()[1]
            hung = server(
                "hung", Address("127.0.0.1", port), check_address=Address("127.0.0.1", check_port)
            )
            fallback = RealServer("fallback", sorry.address, backup=True)
            config = simple_config(
                [hung], fallback=fallback, timeouts=Timeouts(server=30.0), health_checks=True
            )
            vs = config.virtual_servers[0]
            check = HealthCheck(interval=0.3, rise=1, fall=1, timeout=0.2)
            config = replace(
                config, virtual_servers=(replace(vs, pool=replace(vs.pool, health_check=check)),)
            )
            proxy = await start_proxy(nursery, config)
            _, pport = proxy.address("www")
            results = {}

            async def one(method: str) -> None:
                body = b"x" if method == "POST" else None
                results[method] = await request(pport, method, "/", body=body)

            async with trio.open_nursery() as clients:
                clients.start_soon(one, "GET")
                clients.start_soon(one, "POST")
                await arrivals.wait_until(lambda: len(arrived) >= 2)  # both wait on "hung" now
                pulled = trio.current_time()
                check_listener.close()  # the next check is refused: "hung" goes DOWN
            # Long before the 30 s server timeout, and without waiting for it:
            assert trio.current_time() - pulled < 3
            assert results["GET"].status == 200  # resent: nothing of a response had arrived
            assert results["GET"].body.startswith(b"sorry GET")
            assert results["POST"].status == 502  # a POST that reached a server is never resent
            assert [s.method for s in sorry.seen] == [b"GET"]
            nursery.cancel_scope.cancel()


async def test_single_server_refusing_for_a_moment_is_retried_not_503() -> None:
    """HAProxy ``retries``: with no other server to go to, a refused connect is tried again on
    the same server after a short pause (a server restarting), even for a POST: nothing was
    sent."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = free_port()
            web = Backend("web1", port=port)
            proxy = await start_proxy(nursery, simple_config([server("web1", web)]))
            _, pport = proxy.address("www")

            async def restart_later() -> None:
                await trio.sleep(0.15)
                await nursery.start(web.serve)

            nursery.start_soon(restart_later)
            resp = await request(pport, "POST", "/form", body=b"a=1")
            assert resp.status == 200
            assert [s.body for s in web.seen] == [b"a=1"]
            counters = proxy.runtime.pools["www"].servers[0].counters
            assert counters.failures_connect >= 1
            nursery.cancel_scope.cancel()


async def test_retries_are_bounded_then_503() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy, pport = await start_farm(nursery, dead_server("web1"))
            assert (await request(pport, "GET", "/")).status == 503
            counters = proxy.runtime.pools["www"].servers[0].counters
            assert counters.failures_connect == 4  # the first try and 3 retries
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("size", "status"), [(60_000, 200), (70_000, 502), (300_000, 502)])
async def test_response_head_beyond_the_limit_is_502(size: int, status: int) -> None:
    """h11 bounds only heads that arrive in pieces; a large head sent in one go is measured."""
    filler = b"x-filler: " + b"a" * 990 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + filler * (size // len(filler))

    async def big_head(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(head + b"\r\nok")
            await trio.sleep(1)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await raw_server(nursery, "s", big_head)
            _, pport = await start_farm(nursery, upstream)
            resp = await request(pport, "GET", "/")
            assert resp.status == status
            if status == 502:
                assert resp.header("x-filler") is None
            nursery.cancel_scope.cancel()
