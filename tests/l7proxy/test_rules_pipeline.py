"""The request policy end to end: a config file's conditions, header rules, redirects, deny
rules, method filter, body limit and error pages, through a real proxy between a real client
and real servers on loopback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from config.loader import load_text
from config.model import Address, Bind, GlobalSettings, ProxyConfig
from l7proxy.cli import main
from tests.helpers import Backend, Seen, free_port, raw_exchange, request, serve_raw, start_proxy

VS_HEAD = (
    "virtual_servers:\n"
    "  - label: www\n"
    "    bind: 127.0.0.1:8080\n"
    "    health_check: {enabled: false}\n"
    "    real_servers: [{label: a, address: '127.0.0.1:{port}'}]\n"
)


def configured(text: str, port: int, source: str = "/lb.yaml") -> ProxyConfig:
    """``text`` (after VS_HEAD) loaded as a file is, then bound to a free port."""
    config = load_text((VS_HEAD + text).replace("{port}", str(port)), source)
    vs = dataclasses.replace(config.virtual_servers[0], binds=(Bind(Address("127.0.0.1", 0)),))
    return dataclasses.replace(
        config, virtual_servers=(vs,), global_=GlobalSettings(grace=2.0, access_log=False)
    )


def pools(names: list[str], port: int) -> str:
    lines = ["pools:\n"]
    for name in names:
        lines.append(
            f"  {name}: {{health_check: {{enabled: false}}, "
            f"real_servers: [{{label: {name}, address: '127.0.0.1:{port}'}}]}}\n"
        )
    return "".join(lines)


ROUTED = {
    # pool: (rule, request that only it matches: method, path, headers)
    "p_path": ("{if: {path: /exact}, pool: p_path}", ("GET", "/exact", {})),
    "p_prefix": ("{path_prefix: /api/, pool: p_prefix}", ("GET", "/api/x", {})),
    "p_suffix": ("{if: {path_suffix: .jpg}, pool: p_suffix}", ("GET", "/i/a.jpg?x=1", {})),
    "p_regex": ("{if: {path_regex: '^/v[0-9]+/'}, pool: p_regex}", ("GET", "/v2/x", {})),
    "p_host": (
        "{if: {host: shop.example.com}, pool: p_host}",
        ("GET", "/", {"Host": "Shop.example.com:80"}),
    ),
    "p_hsuffix": (
        "{if: {host_suffix: .example.org}, pool: p_hsuffix}",
        ("GET", "/", {"Host": "a.example.org"}),
    ),
    "p_hprefix": (
        "{if: {host_prefix: www.}, pool: p_hprefix}",
        ("GET", "/", {"Host": "www.example.net"}),
    ),
    "p_hregex": (
        "{if: {host_regex: '^api[0-9]\\.'}, pool: p_hregex}",
        ("GET", "/", {"Host": "api7.example.net"}),
    ),
    "p_hdr": (
        "{if: {header: {name: X-Env, value: prod}}, pool: p_hdr}",
        ("GET", "/", {"X-Env": "prod"}),
    ),
    "p_hdrre": (
        "{if: {header: {name: User-Agent, regex: bot}}, pool: p_hdrre}",
        ("GET", "/", {"User-Agent": "a bot"}),
    ),
    "p_hdrany": (
        "{if: {header: {name: X-Canary}}, pool: p_hdrany}",
        ("GET", "/", {"X-Canary": ""}),
    ),
    "p_query": ("{if: {query: {name: lang, value: en}}, pool: p_query}", ("GET", "/?lang=en", {})),
    "p_method": ("{if: {method: [DELETE]}, pool: p_method}", ("DELETE", "/", {})),
    "p_and": (
        "{if: {and: [{path_prefix: /both/}, {header: {name: X-A}}]}, pool: p_and}",
        ("GET", "/both/", {"X-A": "1"}),
    ),
    "p_or": (
        "{if: {or: [{path_prefix: /o1/}, {path_prefix: /o2/}]}, pool: p_or}",
        ("GET", "/o2/", {}),
    ),
    "p_not": ("{if: {and: [{path_prefix: /src/}, '!local']}, pool: p_not}", ("GET", "/never", {})),
    "p_src": ("{if: {and: [{path_prefix: /src/}, local]}, pool: p_src}", ("GET", "/src/", {})),
}


async def test_routing_on_every_primitive_and_combinator() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web")
            await nursery.start(web.serve)
            rules = "".join(f"      - {rule}\n" for rule, _ in ROUTED.values())
            text = (
                "    acls: {local: {src: ['127.0.0.0/8', '::1']}}\n"
                "    response_headers: [{set: {X-Srv: '%[srv_name]'}}]\n"
                f"    rules:\n{rules}" + pools(list(ROUTED), web.port)
            )
            proxy = await start_proxy(nursery, configured(text, web.port))
            _, port = proxy.address("www")
            for pool, (_, (method, path, headers)) in ROUTED.items():
                if pool == "p_not":
                    continue  # loopback is always local: the negation never matches
                response = await request(port, method, path, headers=headers)
                assert response.status == 200, pool
                assert response.header("x-srv") == pool, (pool, path, headers)
            response = await request(port, "GET", "/elsewhere", headers={"Host": "x.example"})
            assert response.header("x-srv") == "a"  # no rule matched: the virtual server's pool
            nursery.cancel_scope.cancel()


def backend_reply(seen: Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"server", b"secret/1.0"), (b"x-backend-path", b"/internal/x")]
    return 200, headers, b"ok"


HEADER_RULES = """\
    request_headers:
      - {set: {X-Client: '%[src]:%[src_port]', X-Dst-Port: '%[dst_port]', X-Tls: '%[ssl_fc]'}}
      - {set: {X-Server: '%[srv_name]', X-Url: '%[method] %[url]'}}
      - {add: {X-Added: one}}
      - {add: {X-Added: two}, if: {path_prefix: /two}}
      - {delete: X-Secret}
      - {delete: X-Forwarded-For, if: {header: {name: X-Drop-Xff}}}
      - {replace: {name: Referer, match: '^http://([^/]*)/', with: 'https://\\1/'}}
      - {set: {X-Only-Post: 'yes'}, if: {method: POST}}
    response_headers:
      - {delete: Server}
      - {set: {X-Served: '%[srv_name]'}}
      - {add: {X-Cond: hit}, if: {path_prefix: /two}}
      - {replace: {name: X-Backend-Path, match: internal, with: public}}
"""


async def test_header_rules_on_requests_and_responses() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web", backend_reply)
            await nursery.start(web.serve)
            proxy = await start_proxy(nursery, configured(HEADER_RULES, web.port))
            _, port = proxy.address("www")
            sent = {"X-Secret": "s", "Referer": "http://shop.example/cart", "X-Drop-Xff": "1"}
            first = await request(port, "GET", "/one?q=1", headers=sent)
            second = await request(port, "POST", "/two", body=b"x")

            one, two = web.seen
            client = one.header(b"x-client")
            assert client is not None
            assert client.startswith(b"127.0.0.1:")
            assert one.header(b"x-dst-port") == str(port).encode()
            assert one.header(b"x-tls") == b"0"
            assert one.header(b"x-server") == b"a"
            assert one.header(b"x-url") == b"GET /one?q=1"
            assert one.all(b"x-added") == [b"one"]
            assert one.header(b"x-secret") is None
            assert one.header(b"x-forwarded-for") is None  # deleted under its condition
            assert one.header(b"referer") == b"https://shop.example/cart"
            assert one.header(b"x-only-post") is None
            assert two.all(b"x-added") == [b"one", b"two"]
            assert two.header(b"x-forwarded-for") == b"127.0.0.1"
            assert two.header(b"x-only-post") == b"yes"
            assert two.header(b"content-length") == b"1"
            assert two.body == b"x"

            for response in (first, second):
                assert response.status == 200
                assert response.body == b"ok"
                assert response.header("server") is None
                assert response.header("x-served") == "a"
                assert response.header("x-backend-path") == "/public/x"
            assert first.header("x-cond") is None
            assert second.header("x-cond") == "hit"
            nursery.cancel_scope.cancel()


REDIRECTS = """\
    redirects:
      - {if: {path: /loc}, location: 'https://example.net/new?from=%[path]', code: 301}
      - {if: {path_prefix: /old/}, prefix: 'https://new.example.com', code: 302}
      - {if: {path_prefix: /sec/}, scheme: https, code: 303}
      - {if: {path_prefix: /tmp/}, prefix: /moved, code: 307, drop_query: true}
      - {if: {and: [{path_prefix: /perm/}, {method: POST}]}, location: /p, code: 308}
"""


async def test_redirects_under_conditions() -> None:
    cases = [
        ("GET", "/loc", 301, "https://example.net/new?from=/loc"),
        ("GET", "/old/a?b=1", 302, "https://new.example.com/old/a?b=1"),
        ("GET", "/sec/x?y", 303, "https://shop.example:8080/sec/x?y"),
        ("GET", "/tmp/a?drop=1", 307, "/moved/tmp/a"),
        ("POST", "/perm/a", 308, "/p"),
    ]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web")
            await nursery.start(web.serve)
            proxy = await start_proxy(nursery, configured(REDIRECTS, web.port))
            _, port = proxy.address("www")
            for method, path, status, location in cases:
                response = await request(
                    port, method, path, headers={"Host": "shop.example:8080"}, body=b""
                )
                assert (response.status, response.header("location")) == (status, location)
                assert location.encode() in response.body
            assert web.seen == []
            response = await request(port, "GET", "/perm/a")  # the condition wants a POST
            assert response.status == 200
            assert [seen.target for seen in web.seen] == [b"/perm/a"]
            counters = proxy.runtime.frontend("www")
            assert counters.denied == 0  # a redirect is no refusal
            nursery.cancel_scope.cancel()


def policy_text(tmp_path: Path, down_port: int) -> str:
    (tmp_path / "403.html").write_bytes(b"<h1>go away</h1>\n")
    (tmp_path / "503.http").write_bytes(
        b"HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\n"
        b"Connection: close\r\nContent-Type: text/html\r\nX-Page: custom\r\n\r\n"
        b"<h1>all down</h1>\n"
    )
    return (
        "    methods: [GET, HEAD, POST]\n"
        "    deny:\n"
        "      - {if: {path_prefix: /admin}}\n"
        "      - {if: {header: {name: User-Agent, regex: evil}}, status: 429}\n"
        "    limits: {max_body: 100}\n"
        "    error_pages: {403: 403.html, 503: 503.http}\n"
        "    rules: [{if: {path_prefix: /down}, pool: down}]\n"
        "pools:\n"
        "  down: {health_check: {enabled: false}, "
        f"real_servers: [{{label: d, address: '127.0.0.1:{down_port}'}}], retries: 0}}\n"
    )


async def test_deny_methods_body_limit_and_error_pages(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web")
            await nursery.start(web.serve)
            text = policy_text(tmp_path, free_port())
            config = configured(text, web.port, str(tmp_path / "lb.yaml"))
            proxy = await start_proxy(nursery, config)
            _, port = proxy.address("www")

            denied = await request(port, "GET", "/admin/x")
            assert denied.status == 403
            assert denied.body == b"<h1>go away</h1>\n"
            assert denied.header("content-type") == "text/html; charset=utf-8"
            head = await request(port, "HEAD", "/admin/x")
            assert head.status == 403
            assert head.body == b""
            limited = await request(port, "GET", "/", headers={"User-Agent": "evil/1"})
            assert limited.status == 429
            assert b"429 Too Many Requests" in limited.body
            put = await request(port, "PUT", "/", body=b"x")
            assert put.status == 405
            assert put.header("allow") == "GET, HEAD, POST"
            unknown = await raw_exchange(
                port, b"BREW / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert unknown.startswith(b"HTTP/1.1 501 ")
            large = await request(port, "POST", "/", body=b"x" * 101)
            assert large.status == 413
            assert web.seen == []  # none of these reached a server
            small = await request(port, "POST", "/", body=b"x" * 100)
            assert small.status == 200
            assert web.seen[0].body == b"x" * 100

            down = await request(port, "GET", "/down")
            assert down.status == 503
            assert down.body == b"<h1>all down</h1>\n"
            assert down.header("x-page") == "custom"
            assert down.header("content-length") == str(len(down.body))

            counters = proxy.runtime.frontend("www")
            assert counters.denied == 6  # 403 twice, 429, 405, 501, 413
            assert counters.request_errors == 0
            nursery.cancel_scope.cancel()


async def test_a_chunked_body_past_the_limit_is_413_and_the_server_connection_closes() -> None:
    head_seen = trio.Event()
    server_closed = trio.Event()
    received = bytearray()

    async def server(stream: trio.SocketStream) -> None:
        # Reads the request, never answers: the client's 413 comes from lbproxy.
        while data := await stream.receive_some(65536):
            received.extend(data)
            if b"\r\n\r\n" in received:
                head_seen.set()
        server_closed.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server_port = await nursery.start(serve_raw, server)
            text = "    limits: {max_body: 100}\n"
            proxy = await start_proxy(nursery, configured(text, server_port))
            _, port = proxy.address("www")
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(
                b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"32\r\n" + b"a" * 50 + b"\r\n"
            )
            await head_seen.wait()
            await client.send_all(b"64\r\n" + b"b" * 100 + b"\r\n")
            answer = b""
            while chunk := await client.receive_some(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert b"connection: close" in answer.lower()
            await server_closed.wait()
            assert b"b" not in received  # the chunk past the limit never went up
            assert proxy.runtime.frontend("www").denied == 1
            nursery.cancel_scope.cancel()


def test_no_policy_means_no_hooks() -> None:
    """Nothing configured: the connection's guards are off, so no request pays for rules."""
    from balancing.state import new_states
    from l7proxy.connection import ClientConnection
    from l7proxy.runtime import ClientInfo, Runtime, ServedBind
    from l7proxy.upstream import UpstreamPool

    config = configured("", 1)
    vs = config.virtual_servers[0]
    served = ServedBind(vs, vs.binds[0], 80)
    runtime = Runtime(config, new_states(config.all_pools()), UpstreamPool())
    conn = ClientConnection(
        runtime,
        served,
        None,  # type: ignore[arg-type]  # the stream is not reached by the constructor
        ClientInfo("127.0.0.1", 1, "127.0.0.1", 80),
    )
    assert (conn.needs_view, conn.screens, conn.max_body) == (False, False, None)


async def test_a_config_with_every_rule_passes_check_and_serves(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web", backend_reply)
            await nursery.start(web.serve)
            text = (
                "    acls: {local: {src: 127.0.0.0/8}, api: {path_prefix: /api/}}\n"
                + HEADER_RULES
                + REDIRECTS
                + policy_text(tmp_path, free_port()).replace(
                    "    rules: [{if: {path_prefix: /down}, pool: down}]\n",
                    "    rules: [{if: {path_prefix: /down}, pool: down}, {if: api, pool: api}]\n",
                )
                + f"  api: {{real_servers: [{{label: api1, address: '127.0.0.1:{web.port}'}}]}}\n"
            )
            path = tmp_path / "lb.yaml"
            path.write_text((VS_HEAD + text).replace("{port}", str(web.port)))
            assert await trio.to_thread.run_sync(main, ["check", "-c", str(path)]) == 0

            proxy = await start_proxy(nursery, configured(text, web.port, str(path)))
            _, port = proxy.address("www")
            served = await request(port, "GET", "/api/x")
            assert (served.status, served.header("x-served")) == (200, "api1")
            assert web.seen[-1].header(b"x-server") == b"api1"
            assert (await request(port, "GET", "/loc")).status == 301
            assert (await request(port, "GET", "/admin")).body == b"<h1>go away</h1>\n"
            assert (await request(port, "PUT", "/", body=b"")).status == 405
            assert (await request(port, "GET", "/down")).body == b"<h1>all down</h1>\n"
            nursery.cancel_scope.cancel()


async def test_a_whole_chunked_body_past_the_limit_never_reaches_a_server() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            web = Backend("web")
            await nursery.start(web.serve)
            proxy = await start_proxy(nursery, configured("    limits: {max_body: 10}\n", web.port))
            _, port = proxy.address("www")
            body = b"b\r\nhello world\r\n0\r\n\r\n"  # 11 bytes, all with the head
            answer = await raw_exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
            )
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert web.seen == []
            assert web.connections == 0
            fits = b"a\r\nhello worl\r\n0\r\n\r\n"
            answer = await raw_exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + fits,
            )
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert [seen.body for seen in web.seen] == [b"hello worl"]
            nursery.cancel_scope.cancel()
