"""Conditions as a table: each primitive and combinator, read from YAML by the loader and matched
against requests (l7proxy/matching). Pure: no sockets."""

from __future__ import annotations

import pytest

from config.conditions import Condition
from config.loader import load_text
from l7proxy.header_rules import Values, expand
from l7proxy.matching import RequestView, matches
from l7proxy.runtime import ClientInfo

CLIENT = ClientInfo("10.1.2.3", 40000, "192.0.2.10", 8443, tls=True)
CLIENT6 = ClientInfo("::ffff:10.9.9.9", 40001, "::1", 80)


def condition(text: str, acls: str = "") -> Condition:
    """``text`` as a routing rule's ``if:``, loaded the way a config file is."""
    config = (
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
        f"    acls: {{{acls}}}\n"
        f"    rules: [{{if: {text}, pool: p}}]\n"
        "pools: {p: {real_servers: [{label: b, address: 127.0.0.1:2}]}}\n"
    )
    return load_text(config, "/lb.yaml").virtual_servers[0].rules[0].condition


def view(
    target: str = "/",
    *,
    method: str = "GET",
    host: str | None = "Shop.Example.com:8443",
    headers: dict[str, str] | None = None,
    client: ClientInfo = CLIENT,
) -> RequestView:
    fields = [(b"host", host.encode())] if host is not None else []
    fields += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return RequestView(method.encode(), target.encode(), fields, client)


TABLE: list[tuple[str, RequestView, bool]] = [
    # path: exact, prefix, suffix, regex (the query never counts)
    ("{path: /a/b}", view("/a/b?x=1"), True),
    ("{path: /a/b}", view("/a/b/"), False),
    ("{path_prefix: /api/}", view("/api/v1"), True),
    ("{path_prefix: /api/}", view("/apix"), False),
    ("{path_prefix: /api/}", view("http://shop.example.com/api/x"), True),
    ("{path_suffix: .jpg}", view("/img/a.jpg?s=1"), True),
    ("{path_suffix: .jpg}", view("/img/a.png"), False),
    ("{path_regex: '^/v[0-9]+/'}", view("/v2/items"), True),
    ("{path_regex: '^/v[0-9]+/'}", view("/vx/items"), False),
    # host: exact (port and case ignored), wildcard, suffix, prefix, regex
    ("{host: shop.example.com}", view(), True),
    ("{host: shop.example.com}", view(host="shop.example.com."), True),
    ("{host: shop.example.com}", view(host="www.example.com"), False),
    ("{host: shop.example.com}", view(host=None), False),
    ("{host: '*.example.com'}", view(), True),
    ("{host: '*.example.com'}", view(host="example.com"), False),
    ("{host_suffix: .example.com}", view(), True),
    ("{host_suffix: .example.org}", view(), False),
    ("{host_prefix: www.}", view(host="www.example.com"), True),
    ("{host_prefix: www.}", view(), False),
    ("{host_regex: '^(shop|cart)\\.'}", view(), True),
    ("{host_regex: '^cart\\.'}", view(), False),
    ("{host: '[::1]'}", view(host="[::1]:80"), True),
    # header: present, value (trimmed), regex
    ("{header: {name: X-Debug}}", view(headers={"X-Debug": ""}), True),
    ("{header: {name: X-Debug}}", view(), False),
    ("{header: {name: X-Env, value: prod}}", view(headers={"X-Env": "prod"}), True),
    ("{header: {name: X-Env, value: prod}}", view(headers={"X-Env": "production"}), False),
    ("{header: {name: User-Agent, regex: bot}}", view(headers={"User-Agent": "Googlebot/2"}), True),
    ("{header: {name: User-Agent, regex: bot}}", view(headers={"User-Agent": "Firefox"}), False),
    # source networks, IPv4-mapped IPv6 clients count as IPv4
    ("{src: [10.0.0.0/8, '::1']}", view(), True),
    ("{src: 192.168.0.0/16}", view(), False),
    ("{src: 10.9.9.9}", view(client=CLIENT6), True),
    ("{src: '::1'}", view(client=ClientInfo("::1", 1, "::1", 80)), True),
    # method
    ("{method: [GET, HEAD]}", view(), True),
    ("{method: POST}", view(), False),
    # query parameters: present, value (decoded)
    ("{query: {name: debug}}", view("/?debug"), True),
    ("{query: {name: debug}}", view("/?debugx=1"), False),
    ("{query: {name: lang, value: en}}", view("/?a=1&lang=en"), True),
    ("{query: {name: lang, value: en}}", view("/?lang=fr"), False),
    ("{query: {name: q, value: a b}}", view("/?q=a+b"), True),
    # combinators; several primitives in one mapping mean "and"
    ("{path_prefix: /api/, method: POST}", view("/api/x", method="POST"), True),
    ("{path_prefix: /api/, method: POST}", view("/api/x"), False),
    ("{and: [{path_prefix: /a}, {host: shop.example.com}]}", view("/a"), True),
    ("{and: [{path_prefix: /a}, {host: x.example.com}]}", view("/a"), False),
    ("{or: [{path_prefix: /b}, {host: shop.example.com}]}", view("/a"), True),
    ("{or: [{path_prefix: /b}, {host: x.example.com}]}", view("/a"), False),
    ("{not: {path_prefix: /a}}", view("/a"), False),
    ("{not: {path_prefix: /a}}", view("/b"), True),
    ("{not: {or: [{method: GET}, {path: /}]}}", view("/x", method="PUT"), True),
]


@pytest.mark.parametrize(("text", "request_view", "expected"), TABLE)
def test_condition_table(text: str, request_view: RequestView, expected: bool) -> None:
    assert matches(condition(text), request_view) is expected


ACLS = (
    "internal: {src: 10.0.0.0/8}, api: {path_prefix: /api/}, internal_api: {and: [internal, api]}"
)


@pytest.mark.parametrize(
    ("text", "request_view", "expected"),
    [
        ("internal", view(), True),
        ("'!internal'", view(), False),
        ("internal_api", view("/api/x"), True),
        ("internal_api", view("/web"), False),
        ("{or: ['!api', internal]}", view("/web", client=CLIENT6), True),
        ("{and: ['!api', internal]}", view("/api/", client=CLIENT), False),
    ],
)
def test_named_acls_and_their_negation(
    text: str, request_view: RequestView, expected: bool
) -> None:
    assert matches(condition(text, ACLS), request_view) is expected


def test_templates_expand_every_variable() -> None:
    config = load_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
        "    request_headers:\n"
        "      - set: {X-All: '%[src]:%[src_port] %[dst]:%[dst_port] tls=%[ssl_fc] "
        "%[srv_name] %[host] %[hdr(host)] %[method] %[path] %[query] %[url] 100%%'}\n",
        "/lb.yaml",
    )
    rule = config.virtual_servers[0].policy.request_headers[0]
    assert rule.value is not None
    values = Values(view("/p/q?a=1", method="PUT"), server="web1")
    assert expand(rule.value, values) == (
        b"10.1.2.3:40000 192.0.2.10:8443 tls=1 web1 Shop.Example.com:8443 "
        b"Shop.Example.com:8443 PUT /p/q a=1 /p/q?a=1 100%"
    )
