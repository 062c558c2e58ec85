"""Active checks against real loopback servers: each cause, and DOWN/UP over fall/rise checks."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import h11
import pytest
import trio
import trio.testing

from balancing.checker import CHECK_BODY_LIMIT, check_once, run_checks
from balancing.health import CheckResult
from balancing.state import Health, PoolState, ServerState, new_states
from config.model import Address, AdminState, HealthCheck, HttpCheck, Pool, RealServer
from tests.helpers import Changes

# Generous bound on every I/O test; it is a hang guard, not a speed assertion.
TEST_DEADLINE = 10.0

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def serving(handler: Handler, port: int = 0) -> AsyncIterator[int]:
    """A loopback TCP server running ``handler`` per connection; yields its port."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        try:
            yield bound
        finally:
            nursery.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()


async def just_close(stream: trio.SocketStream) -> None:
    await stream.aclose()


def http_handler(
    status: int, body: bytes = b"", requests: list[h11.Request] | None = None
) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(4096))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return  # a TCP check: connected and closed without a request
                if isinstance(event, h11.Request) and requests is not None:
                    requests.append(event)
                if isinstance(event, h11.EndOfMessage):
                    break
            headers = [("Content-Length", str(len(body)))]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)

    return handler


def raw_handler(reply: bytes) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(reply)

    return handler


async def read_then_close(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.receive_some(4096)


async def silent(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def server_state(port: int, check: HealthCheck, check_port: int | None = None) -> ServerState:
    real = RealServer(
        label="web1",
        address=Address("127.0.0.1", port),
        check_address=Address("127.0.0.1", check_port) if check_port is not None else None,
    )
    pool = PoolState(Pool(name="www", real_servers=(real,), health_check=check))
    return pool.servers[0]


TCP = HealthCheck(timeout=1.0)


def http_check(**kw: object) -> HealthCheck:
    return HealthCheck(timeout=1.0, http=HttpCheck(**kw))  # type: ignore[arg-type]


async def probe(port: int, check: HealthCheck) -> CheckResult:
    with trio.fail_after(TEST_DEADLINE):
        return await check_once(server_state(port, check), check)


async def test_tcp_check_ok() -> None:
    async with serving(just_close) as port:
        result = await probe(port, TCP)
    assert (result.ok, result.status, result.desc) == (True, "L4OK", "connected")
    assert result.duration is not None
    assert result.duration >= 0


async def test_tcp_check_refused() -> None:
    result = await probe(closed_port(), TCP)
    assert (result.ok, result.status, result.desc) == (False, "L4CON", "connection refused")


async def test_tcp_check_timeout() -> None:
    # A listener whose accept queue is full drops new SYNs, so connect() hangs (Linux).
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            # The first filler's handshake is done: it sits in (and fills) the accept queue.
            await trio.lowlevel.wait_writable(fillers[0])
            result = await probe(port, replace(TCP, timeout=0.3))
        finally:
            for filler in fillers:
                filler.close()
    assert (result.ok, result.status, result.desc) == (False, "L4TOUT", "timeout")


async def test_check_address_overrides_server_address() -> None:
    async with serving(just_close) as port:
        state = server_state(closed_port(), TCP, check_port=port)
        with trio.fail_after(TEST_DEADLINE):
            result = await check_once(state, TCP)
    assert result.ok


@pytest.mark.parametrize(
    ("handler", "check", "expected"),
    [
        (http_handler(200, b"all fine"), http_check(), (True, "L7OK", "status 200")),
        (
            http_handler(500),
            http_check(),
            (False, "L7STS", "status 500 (expected 200-399)"),
        ),
        (http_handler(302), http_check(), (True, "L7OK", "status 302")),
        (
            http_handler(400),
            http_check(),
            (False, "L7STS", "status 400 (expected 200-399)"),
        ),
        (http_handler(204), http_check(expect=((204, 204),)), (True, "L7OK", "status 204")),
        (
            http_handler(200),
            http_check(expect=((204, 204), (300, 302))),
            (False, "L7STS", "status 200 (expected 204, 300-302)"),
        ),
        (
            http_handler(301, b"moved here"),
            http_check(expect=((204, 204), (300, 302)), body="here"),
            (True, "L7OK", "status 301, body matched"),
        ),
        (
            http_handler(200, b"status: healthy\n"),
            http_check(body="healthy"),
            (True, "L7OK", "status 200, body matched"),
        ),
        (
            http_handler(200, b"status: starting\n"),
            http_check(body="healthy"),
            (False, "L7RSP", "body does not contain 'healthy'"),
        ),
        (
            http_handler(200, b"x" * (CHECK_BODY_LIMIT * 2) + b"healthy"),
            http_check(body="healthy"),
            (
                False,
                "L7RSP",
                f"body does not contain 'healthy' in its first {CHECK_BODY_LIMIT} bytes",
            ),
        ),
        (
            raw_handler(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            ),
            http_check(),
            (True, "L7OK", "status 200"),
        ),
        (read_then_close, http_check(), (False, "L7RSP", "connection closed without a response")),
        (silent, replace(http_check(), timeout=0.3), (False, "L7TOUT", "timeout")),
    ],
)
async def test_http_check(
    handler: Handler, check: HealthCheck, expected: tuple[bool, str, str]
) -> None:
    async with serving(handler) as port:
        result = await probe(port, check)
    assert (result.ok, result.status, result.desc) == expected


async def test_http_check_garbage_response() -> None:
    async with serving(raw_handler(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as port:
        result = await probe(port, http_check())
    assert (result.ok, result.status) == (False, "L7RSP")
    assert result.desc.startswith("invalid response: ")


async def test_http_check_request_bytes() -> None:
    seen: list[h11.Request] = []
    check = http_check(path="/health?full=1", method="HEAD", host="app.example")
    async with serving(http_handler(200, requests=seen)) as port:
        result = await probe(port, check)
    assert result.ok
    (request,) = seen
    assert (request.method, request.target) == (b"HEAD", b"/health?full=1")
    assert (b"host", b"app.example") in list(request.headers)


async def test_http_check_over_ipv6_loopback() -> None:
    seen: list[h11.Request] = []
    handler = http_handler(200, requests=seen)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="::1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        real = RealServer(label="v6", address=Address("::1", port))
        check = http_check()
        state = PoolState(Pool(name="www", real_servers=(real,), health_check=check)).servers[0]
        with trio.fail_after(TEST_DEADLINE):
            result = await check_once(state, check)
        nursery.cancel_scope.cancel()
    assert (result.ok, result.status) == (True, "L7OK")
    assert (b"host", f"[::1]:{port}".encode()) in list(seen[0].headers)


async def test_http_check_default_host_is_address() -> None:
    seen: list[h11.Request] = []
    async with serving(http_handler(200, requests=seen)) as port:
        await probe(port, http_check())
    assert (b"host", f"127.0.0.1:{port}".encode()) in list(seen[0].headers)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def make_logger() -> tuple[logging.Logger, Records]:
    log = logging.getLogger("lbproxy.test.checker")
    log.propagate = False
    records = Records()
    log.handlers = [records]
    return log, records


async def test_down_after_fall_and_up_after_rise(autojump_clock: trio.testing.MockClock) -> None:
    log, records = make_logger()
    check = HealthCheck(interval=2.0, rise=2, fall=3, timeout=1.0)
    async with serving(just_close) as port:
        pass  # only to learn a free port
    states = new_states(
        [Pool(name="www", real_servers=(RealServer("web1", Address("127.0.0.1", port)),),
              health_check=check)]
    )  # fmt: skip
    web1 = states["www"].servers[0]
    transitions = Changes()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            async with serving(just_close, port):
                await nursery.start(
                    partial(run_checks, states, log=log, on_change=transitions.notify)
                )
                await trio.sleep(7.0)
                assert web1.health is Health.UP
                assert web1.counters.check_status == "L4OK"
            stopped = trio.current_time()
            await transitions.wait_until(lambda: web1.health is Health.DOWN)
            went_down = trio.current_time()
            # Down on the third failed check (the first at most one interval after the stop, the
            # others at the quicker transition pace): well within fall * interval = 6 s.
            assert web1.consecutive_fail == check.fall
            assert check.interval < went_down - stopped <= check.fall * check.interval
            assert web1.counters.check_desc == "connection refused"
            async with serving(just_close, port):
                restarted = trio.current_time()
                await transitions.wait_until(lambda: web1.health is Health.UP)
                came_up = trio.current_time()
                assert web1.consecutive_ok == check.rise
                assert check.interval / 2 < came_up - restarted <= check.rise * check.interval
            nursery.cancel_scope.cancel()
    assert records.messages == [
        (logging.WARNING, "server www/web1 is DOWN: connection refused (L4CON), 0 active left"),
        (logging.WARNING, "server www/web1 is UP: connected (L4OK), 1 active up"),
    ]
    assert web1.counters.last_change == came_up  # woken by the transition itself


async def test_checks_are_spread_and_skip_maint(autojump_clock: trio.testing.MockClock) -> None:
    log, _ = make_logger()
    check = HealthCheck(interval=4.0, fall=1, timeout=1.0)
    times: dict[str, list[float]] = {}

    def counting(label: str) -> Handler:
        async def handler(stream: trio.SocketStream) -> None:
            times.setdefault(label, []).append(trio.current_time())
            await stream.aclose()

        return handler

    with trio.fail_after(60):
        async with (
            serving(counting("a")) as pa,
            serving(counting("b")) as pb,
            serving(counting("c")) as pc,
            serving(counting("fb")) as pf,
        ):
            pool = Pool(
                name="www",
                real_servers=(
                    RealServer("a", Address("127.0.0.1", pa)),
                    RealServer("b", Address("127.0.0.1", pb)),
                    RealServer("c", Address("127.0.0.1", pc), state=AdminState.MAINT),
                ),
                fallback=RealServer("fallback", Address("127.0.0.1", pf), backup=True),
                health_check=check,
                fallback_check=check,
            )
            states = new_states([pool])
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_checks, states, log=log))
                await trio.sleep(8.5)
                nursery.cancel_scope.cancel()
    offsets = {label: [round(t - start, 1) for t in ts] for label, ts in times.items()}
    # Four tasks over a 4 s interval start 1 s apart; the maintenance server is never probed.
    assert offsets == {"a": [0.0, 4.0, 8.0], "b": [1.0, 5.0], "fb": [3.0, 7.0]}


async def check_for(states: dict[str, PoolState], log: logging.Logger, seconds: float) -> None:
    """Run every check of ``states`` for ``seconds`` (of mock time), then stop them."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_checks, states, log=log))
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_run_checks_with_checks_disabled_idles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log, records = make_logger()
    pool = Pool(
        name="www",
        real_servers=(RealServer("a", Address("127.0.0.1", closed_port())),),
        health_check=HealthCheck(enabled=False, fall=1),
    )
    states = new_states([pool])
    with trio.fail_after(60):
        await check_for(states, log, 30)
    assert states["www"].servers[0].health is Health.UP
    assert records.messages == []


async def test_fallback_has_its_own_check(autojump_clock: trio.testing.MockClock) -> None:
    """A "sorry" server with no /health stays UP under its default TCP check while the pool's
    HTTP check takes a real server answering 404 DOWN."""
    log, records = make_logger()
    pool_check = HealthCheck(fall=1, timeout=1.0, http=HttpCheck(path="/health"))
    with trio.fail_after(60):
        async with serving(http_handler(404)) as web_port, serving(http_handler(404)) as sorry:
            pool = Pool(
                name="www",
                real_servers=(RealServer("web1", Address("127.0.0.1", web_port)),),
                fallback=RealServer("fallback", Address("127.0.0.1", sorry), backup=True),
                health_check=pool_check,
            )
            states = new_states([pool])
            web1, fallback = states["www"].all_states()
            await check_for(states, log, 10 * pool_check.interval)
    assert web1.health is Health.DOWN
    assert web1.counters.check_status == "L7STS"
    assert fallback.health is Health.UP
    assert fallback.counters.check_status == "L4OK"
    assert [m for _, m in records.messages if "fallback" in m] == []


async def test_fallback_check_can_be_disabled_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log, _ = make_logger()
    pool = Pool(
        name="www",
        real_servers=(RealServer("a", Address("127.0.0.1", closed_port())),),
        fallback=RealServer("fallback", Address("127.0.0.1", closed_port()), backup=True),
        health_check=HealthCheck(fall=1, timeout=1.0),
        fallback_check=HealthCheck(enabled=False),
    )
    states = new_states([pool])
    with trio.fail_after(60):
        await check_for(states, log, 30)
    assert states["www"].servers[0].health is Health.DOWN
    fallback = states["www"].fallback
    assert fallback is not None
    assert fallback.health is Health.UP
    assert fallback.counters.check_status == ""
