"""Balancing, fallback and URL switching through the running proxy."""

from __future__ import annotations

import re
from collections import Counter

import trio

from config.conditions import AllOf, Header, HostIs, HostSuffix, PathPrefix, PathRegex
from config.model import (
    Address,
    Balance,
    Bind,
    CookiePersistence,
    GlobalSettings,
    HealthCheck,
    Pool,
    ProxyConfig,
    RealServer,
    Rule,
    VirtualService,
)
from tests.helpers import (
    Backend,
    Changes,
    Seen,
    dead_server,
    request,
    server,
    simple_config,
    start_farm,
    start_proxy,
)


async def served_by(port: int, count: int, path: str = "/") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        resp = await request(port, "GET", path)
        assert resp.status == 200
        seen[resp.body.split()[0].decode()] += 1
    return seen


async def test_weighted_round_robin_and_weight_zero() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            backends = [Backend(name) for name in ("a", "b", "c")]
            for b in backends:
                await nursery.start(b.serve)
            config = simple_config(
                [
                    server("a", backends[0], weight=2),
                    server("b", backends[1], weight=1),
                    server("c", backends[2], weight=0),  # drain: no new clients
                ]
            )
            proxy = await start_proxy(nursery, config)
            _, port = proxy.address("www")
            assert await served_by(port, 9) == Counter({"a": 6, "b": 3})
            nursery.cancel_scope.cancel()


async def test_leastconn_avoids_the_busy_server() -> None:
    release = trio.Event()

    async def slow(seen: Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await release.wait()
        return 200, [], b"slow"

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            either = Changes()  # shared: a request reaching either backend wakes the test
            busy = Backend("busy", slow, changes=either)
            free = Backend("free", changes=either)
            _, port = await start_farm(nursery, busy, free, balance=Balance.LEASTCONN)
            results: list[bytes] = []

            async def one() -> None:
                results.append((await request(port, "GET", "/")).body)

            async with trio.open_nursery() as clients:
                clients.start_soon(one)
                await either.wait_until(lambda: bool(busy.seen or free.seen))
                if free.seen:  # the first request went to "free": make "busy" hold one
                    clients.start_soon(one)
                    await busy.wait_until(lambda: bool(busy.seen))
                # "busy" now holds one request: the next ones all go to "free".
                for _ in range(4):
                    assert (await request(port, "GET", "/")).body.startswith(b"free")
                release.set()
            nursery.cancel_scope.cancel()


async def test_fallback_only_when_no_real_server_can() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            web = Backend("web")
            sorry = Backend("sorry")
            await nursery.start(sorry.serve)
            fallback = RealServer("fallback", sorry.address, backup=True)
            cookie = CookiePersistence("SERVERID")
            # Live real server: the fallback never answers.
            _, port = await start_farm(nursery, web, fallback=fallback, persistence=cookie)
            assert await served_by(port, 4) == Counter({"web": 4})
            # Every real server down: the fallback answers and clears the cookie.
            dead = dead_server("dead")
            _, port2 = await start_farm(nursery, dead, fallback=fallback, persistence=cookie)
            resp = await request(port2, "GET", "/", headers={"Cookie": "SERVERID=dead"})
            assert resp.body.startswith(b"sorry")
            assert resp.header("set-cookie") == (
                "SERVERID=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/"
            )
            assert sorry.seen[-1].header(b"cookie") is None  # our cookie never reaches servers
            nursery.cancel_scope.cancel()


def routed_config(
    default: Backend, pools: dict[str, Backend], rules: tuple[Rule, ...]
) -> ProxyConfig:
    no_checks = HealthCheck(enabled=False)
    named = {
        name: Pool(name, (RealServer(name, b.address),), health_check=no_checks)
        for name, b in pools.items()
    }
    vs = VirtualService(
        label="www",
        binds=(Bind(Address("127.0.0.1", 0)),),
        pool=Pool("www", (RealServer("default", default.address),), health_check=no_checks),
        rules=rules,
    )
    return ProxyConfig((vs,), named, GlobalSettings(access_log=False, grace=1.0))


async def test_rules_first_match_wins() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            names = ("default", "api", "img", "canary", "admin")
            backends = {n: Backend(n) for n in names}
            for b in backends.values():
                await nursery.start(b.serve)
            rules = (
                Rule(pool="canary", condition=Header(b"x-canary", b"1")),
                Rule(pool="api", condition=PathPrefix("/api/")),
                Rule(
                    pool="img",
                    condition=AllOf((HostSuffix(".example.com"), PathRegex(re.compile(r"\.png$")))),
                ),
                Rule(pool="admin", condition=HostIs("admin.example.com")),
            )
            others = {n: b for n, b in backends.items() if n != "default"}
            proxy = await start_proxy(nursery, routed_config(backends["default"], others, rules))
            _, port = proxy.address("www")
            cases = [
                ("/", {}, "default"),
                ("/api/v1", {}, "api"),
                ("/api/v1", {"X-Canary": "1"}, "canary"),
                ("/x.png", {"Host": "cdn.Example.com:8080"}, "img"),
                ("/x.png", {"Host": "example.com"}, "default"),  # the wildcard needs a label
                ("/x.gif", {"Host": "cdn.example.com"}, "default"),
                ("/", {"Host": "ADMIN.example.com"}, "admin"),
                ("/API/v1", {}, "default"),  # paths are case-sensitive
            ]
            for path, headers, expected in cases:
                resp = await request(port, "GET", path, headers=headers)
                assert resp.body.split()[0].decode() == expected, (path, headers)
            nursery.cancel_scope.cancel()
