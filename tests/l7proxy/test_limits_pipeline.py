"""Several fallbacks, per-server maxconn with its queue and queue timeout, and a virtual
server's connection limit, through the running proxy: real backends, real clients, loopback."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest
import trio

from balancing.state import Health, PoolState
from config.model import (
    Address,
    AdminState,
    CookiePersistence,
    Fallback,
    FallbackMode,
    GlobalSettings,
    HealthCheck,
    HttpCheck,
    ProxyConfig,
    StatsSettings,
    Timeouts,
)
from l7proxy import app
from tests.helpers import (
    Backend,
    Reply,
    Response,
    Seen,
    free_port,
    read_request_head,
    request,
    server,
    simple_config,
    start_proxy,
)
from tests.l7proxy.test_stats_listener import csv_table

# Every wait of these tests polls the proxy's state at this pace, bounded by fail_after.
POLL = 0.01


@dataclass
class Gate:
    """A real server's responder that holds each request until the test lets it go, and
    records how many it held at once and in which order they arrived."""

    label: str
    now: int = 0
    most: int = 0
    order: list[str] = field(default_factory=list)
    releases: list[trio.Event] = field(default_factory=list)

    async def __call__(self, seen: Seen) -> Reply:
        self.now += 1
        self.most = max(self.most, self.now)
        self.order.append(seen.target.decode())
        release = trio.Event()
        self.releases.append(release)
        try:
            await release.wait()
        finally:
            self.now -= 1
        return 200, [(b"x-served-by", self.label.encode())], seen.target

    async def holding(self, count: int) -> None:
        # Bounded by the test's fail_after; requests arrive from the proxy's tasks, which signal
        # nothing a test could await.
        while len(self.order) < count:  # noqa: ASYNC110
            await trio.sleep(POLL)


async def until(condition: object) -> None:
    """Wait for a state inside the proxy (health, queues) that no event announces; bounded by
    the test's fail_after."""
    assert callable(condition)
    while not condition():  # noqa: ASYNC110
        await trio.sleep(POLL)


def stats_port(proxy: app.ProxyHandle) -> int:
    return next(b for b in proxy.bound if b.served is None).address[1]


async def stats_csv(proxy: app.ProxyHandle) -> dict[tuple[str, str], dict[str, str]]:
    resp = await request(stats_port(proxy), "GET", "/;csv")
    assert resp.status == 200
    return csv_table(resp.body)


def with_stats(config: ProxyConfig, *, access_log: bool = False) -> ProxyConfig:
    stats = StatsSettings(Address("127.0.0.1", 0))
    return replace(config, global_=GlobalSettings(grace=2.0, access_log=access_log, stats=stats))


@asynccontextmanager
async def running(
    backends: list[Backend], make_config: Callable[[], ProxyConfig]
) -> AsyncIterator[tuple[trio.Nursery, app.ProxyHandle]]:
    """The backends serving (their ports known), then a proxy with the config made for them."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for backend in backends:
                await nursery.start(backend.serve)
            yield nursery, await start_proxy(nursery, make_config())
            nursery.cancel_scope.cancel()


def pool_of(proxy: app.ProxyHandle) -> PoolState:
    return proxy.runtime.pools["www"]


async def test_maxconn_one_serves_three_clients_one_at_a_time_in_order() -> None:
    gate = Gate("a")
    backend = Backend("a", gate)

    def make() -> ProxyConfig:
        config = with_stats(simple_config([server("a", backend, maxconn=1)]))
        return config

    async with running([backend], make) as (nursery, proxy):
        port = proxy.address("www")[1]
        pool = pool_of(proxy)
        answers: dict[str, Response] = {}

        async def client(path: str) -> None:
            answers[path] = await request(port, "GET", path)

        nursery.start_soon(client, "/1")
        await gate.holding(1)
        nursery.start_soon(client, "/2")
        await until(lambda: len(pool.queue) == 1)
        nursery.start_soon(client, "/3")
        await until(lambda: len(pool.queue) == 2)

        table = await stats_csv(proxy)
        assert table[("www", "BACKEND")]["qcur"] == "2"  # waiting for any server
        assert table[("www", "a")]["slim"] == "1"
        assert table[("www", "a")]["scur"] == "1"
        assert gate.order == ["/1"]  # the server never saw the waiting ones
        metrics = (await request(stats_port(proxy), "GET", "/metrics")).body.decode()
        assert 'haproxy_backend_current_queue{proxy="www"} 2\n' in metrics
        assert 'haproxy_server_current_queue{proxy="www",server="a"} 0\n' in metrics
        assert 'haproxy_server_limit_sessions{proxy="www",server="a"} 1\n' in metrics

        for served in range(1, 4):
            await gate.holding(served)
            assert len(gate.releases) == served
            gate.releases[-1].set()
        await until(lambda: len(answers) == 3)
        assert gate.order == ["/1", "/2", "/3"]
        assert gate.most == 1
        assert all(answers[p].status == 200 for p in answers)
        table = await stats_csv(proxy)
        assert table[("www", "BACKEND")]["qcur"] == "0"
        assert table[("www", "BACKEND")]["qmax"] == "2"


async def test_queue_timeout_is_503_with_sQ_in_the_access_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gate = Gate("a")
    backend = Backend("a", gate)

    def make() -> ProxyConfig:
        config = simple_config([server("a", backend, maxconn=1)], timeouts=Timeouts(queue=0.2))
        config = with_stats(config, access_log=True)
        return config

    async with running([backend], make) as (nursery, proxy):
        port = proxy.address("www")[1]
        held: list[Response] = []

        async def hold() -> None:
            held.append(await request(port, "GET", "/held"))

        nursery.start_soon(hold)
        await gate.holding(1)
        late = await request(port, "GET", "/late")
        assert late.status == 503
        assert gate.order == ["/held"]
        gate.releases[0].set()
        await until(lambda: bool(held))
        assert held[0].status == 200
        proxy.sink.flush()
    lines = capsys.readouterr().out.splitlines()
    late_line = next(line for line in lines if "/late" in line)
    assert re.search(r" 503 \d+ - - sQ", late_line), late_line
    # %TR/%Tw/%Tc: it waited the queue timeout (200 ms or more) and never connected
    timers = re.search(r" (\d+)/(\d+)/(-?\d+)/(-?\d+)/(\d+) 503 ", late_line)
    assert timers is not None, late_line
    assert int(timers.group(2)) >= 200, late_line
    assert timers.group(3) == "-1", late_line
    held_line = next(line for line in lines if "/held" in line)
    assert re.search(r" \d+/0/\d+/\d+/\d+ 200 ", held_line), held_line


def sticky_pair(
    queue: float,
) -> tuple[dict[str, Gate], list[Backend], Callable[[], ProxyConfig]]:
    """Two held real servers a and b with maxconn 1 and cookie persistence."""
    gates = {"a": Gate("a"), "b": Gate("b")}
    backends = {name: Backend(name, gate) for name, gate in gates.items()}

    def make() -> ProxyConfig:
        config = simple_config(
            [server(name, b, maxconn=1) for name, b in backends.items()],
            persistence=CookiePersistence("SERVERID"),
            timeouts=Timeouts(queue=queue),
        )
        return with_stats(config)

    return gates, list(backends.values()), make


async def test_a_persistent_client_waits_for_its_own_server() -> None:
    gates, backends, make = sticky_pair(queue=5.0)
    async with running(backends, make) as (nursery, proxy):
        port = proxy.address("www")[1]
        pool = pool_of(proxy)
        answers: dict[str, Response] = {}
        sticky = {"Cookie": "SERVERID=a"}

        async def client(path: str) -> None:
            answers[path] = await request(port, "GET", path, headers=sticky)

        nursery.start_soon(client, "/first")
        await gates["a"].holding(1)
        nursery.start_soon(client, "/second")
        a = pool.server("a")
        assert a is not None
        await until(lambda: len(a.queue) == 1)
        table = await stats_csv(proxy)
        assert table[("www", "a")]["qcur"] == "1"  # on its own server's queue
        assert table[("www", "BACKEND")]["qcur"] == "0"
        assert gates["b"].order == []  # b is free, yet not used: no redispatch

        gates["a"].releases[0].set()
        await gates["a"].holding(2)
        gates["a"].releases[1].set()
        await until(lambda: len(answers) == 2)
        assert answers["/second"].header("x-served-by") == "a"
        assert gates["b"].order == []


async def test_a_persistent_client_gets_503_when_its_queue_times_out() -> None:
    gates, backends, make = sticky_pair(queue=0.2)
    async with running(backends, make) as (nursery, proxy):
        port = proxy.address("www")[1]
        sticky = {"Cookie": "SERVERID=a"}
        held: list[Response] = []

        async def hold() -> None:
            held.append(await request(port, "GET", "/first", headers=sticky))

        nursery.start_soon(hold)
        await gates["a"].holding(1)
        late = await request(port, "GET", "/second", headers=sticky)
        assert late.status == 503
        assert gates["b"].order == []
        gates["a"].releases[0].set()
        await until(lambda: bool(held))
        assert held[0].header("x-served-by") == "a"


async def test_fallbacks_are_used_in_order_each_with_its_own_check() -> None:
    second, third = Backend("second"), Backend("third")
    real = Backend("real")
    dead = free_port()
    fast = HealthCheck(interval=0.1, rise=1, fall=1, timeout=0.1)
    http = HealthCheck(interval=0.1, rise=1, fall=1, timeout=0.1, http=HttpCheck("/health"))

    def make() -> ProxyConfig:
        config = simple_config(
            [server("real", real, state=AdminState.MAINT)],
            fallback=server("dead", Address("127.0.0.1", dead), backup=True),
            fallback_check=fast,
            more_fallbacks=(
                Fallback(server("second", second, backup=True), http),
                Fallback(server("third", third, backup=True), HealthCheck(enabled=False)),
            ),
            health_checks=True,
        )
        return config

    async with running([second, third, real], make) as (_nursery, proxy):
        port = proxy.address("www")[1]
        pool = pool_of(proxy)
        await until(lambda: pool.fallbacks[0].health is Health.DOWN)
        await until(lambda: any(s.target == b"/health" for s in second.seen))
        assert third.seen == []  # its check is off: never probed
        bodies: Counter[str] = Counter()
        for _ in range(4):
            resp = await request(port, "GET", "/")
            assert resp.status == 200
            bodies[resp.body.split()[0].decode()] += 1
        assert bodies == Counter({"second": 4})  # the first is down, the third never needed
        assert pool.fallbacks[1].health is Health.UP
        assert [s.label for s in pool.fallbacks] == ["dead", "second", "third"]


def two_fallbacks(
    mode: FallbackMode,
) -> tuple[Backend, Backend, Backend, Callable[[], ProxyConfig]]:
    """A real server in maintenance and two fallbacks f1, f2 in ``mode``."""
    f1, f2, real = Backend("f1"), Backend("f2"), Backend("real")

    def make() -> ProxyConfig:
        return simple_config(
            [server("real", real, state=AdminState.MAINT)],
            fallback=server("f1", f1, backup=True),
            more_fallbacks=(Fallback(server("f2", f2, backup=True), HealthCheck(enabled=False)),),
            fallback_mode=mode,
        )

    return f1, f2, real, make


async def test_fallback_mode_all_spreads_over_every_fallback() -> None:
    f1, f2, real, make = two_fallbacks(FallbackMode.ALL)
    async with running([f1, f2, real], make) as (_nursery, proxy):
        port = proxy.address("www")[1]
        seen: Counter[str] = Counter()
        for _ in range(6):
            resp = await request(port, "GET", "/")
            assert resp.status == 200
            seen[resp.body.split()[0].decode()] += 1
        assert seen == Counter({"f1": 3, "f2": 3})
        assert real.seen == []


async def test_fallback_mode_first_uses_only_the_first_while_it_is_up() -> None:
    f1, f2, real, make = two_fallbacks(FallbackMode.FIRST)
    async with running([f1, f2, real], make) as (_nursery, proxy):
        port = proxy.address("www")[1]
        for _ in range(4):
            resp = await request(port, "GET", "/")
            assert resp.body.startswith(b"f1 ")
        assert f2.seen == []


async def open_and_ask(port: int, path: str) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return stream, await read_request_head(stream)


async def test_max_connections_holds_the_next_connection_until_one_closes() -> None:
    backend = Backend("a")

    def make() -> ProxyConfig:
        config = simple_config([server("a", backend)])
        vs = replace(config.virtual_servers[0], max_connections=2)
        config = with_stats(replace(config, virtual_servers=(vs,)))
        return config

    async with running([backend], make) as (_nursery, proxy):
        port = proxy.address("www")[1]
        first, head1 = await open_and_ask(port, "/1")
        second, head2 = await open_and_ask(port, "/2")
        assert head1.startswith(b"HTTP/1.1 200")
        assert head2.startswith(b"HTTP/1.1 200")

        # The third connects (the kernel's backlog takes it) but is not served while two are
        # open.
        third = await trio.open_tcp_stream("127.0.0.1", port)
        await third.send_all(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.move_on_after(0.5):
            await third.receive_some(65536)
            pytest.fail("the third connection was served beyond max_connections")
        assert [s.target for s in backend.seen] == [b"/1", b"/2"]
        table = await stats_csv(proxy)
        assert table[("www", "FRONTEND")]["scur"] == "2"
        assert table[("www", "FRONTEND")]["slim"] == "2"

        await first.aclose()
        head3 = await read_request_head(third)
        assert head3.startswith(b"HTTP/1.1 200")
        assert [s.target for s in backend.seen] == [b"/1", b"/2", b"/3"]
        await second.aclose()
        await third.aclose()
