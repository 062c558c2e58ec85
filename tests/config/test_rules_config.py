"""The request policy keys in the config file: what they load to, and every refusal with its
FILE:LINE:COL and key path (acls, conditions, header rules, redirects, deny, methods, xhttp,
limits, error pages)."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from config.actions import HeaderAction, RedirectKind, xhttp_methods
from config.conditions import Not, PathPrefix, Source, Template, Var
from config.loader import ConfigError, load_text
from l7proxy.cli import main

HEAD = (
    "virtual_servers:\n"
    "  - label: www\n"
    "    bind: 127.0.0.1:8080\n"
    "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
)


def problems(extra: str, source: str = "/etc/lb.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(HEAD + extra, source)
    return caught.value.problems


def test_the_policy_loads() -> None:
    config = load_text(
        HEAD
        + "    acls: {office: {src: 10.0.0.0/8}, api: {path_prefix: /api/}}\n"
        + "    request_headers:\n"
        + "      - {set: {X-Client: '%[src]', X-Tls: '%[ssl_fc]'}, if: office}\n"
        + "      - {delete: X-Debug, if: '!office'}\n"
        + "      - {replace: {name: Referer, match: '^http://(.*)', with: 'https://\\1'}}\n"
        + "    response_headers: [{add: {Via: lbproxy}}]\n"
        + "    redirects: [{if: api, scheme: https, code: 308}, {prefix: 'https://x.example'}]\n"
        + "    deny: [{if: {method: TRACE}}, {if: {path: /admin}, status: 429}]\n"
        + "    xhttp: 1\n"
        + "    limits: {max_body: 10m}\n",
        "/lb.yaml",
    )
    policy = config.virtual_servers[0].policy
    assert [(r.action, r.name) for r in policy.request_headers] == [
        (HeaderAction.SET, b"x-client"),
        (HeaderAction.SET, b"x-tls"),
        (HeaderAction.DELETE, b"x-debug"),
        (HeaderAction.REPLACE, b"referer"),
    ]
    assert policy.request_headers[0].value == Template((Var.SRC,))
    assert policy.request_headers[0].condition == Source((ip_network("10.0.0.0/8"),))
    assert isinstance(policy.request_headers[2].condition, Not)
    assert policy.response_headers[0].value == Template(("lbproxy",))
    assert policy.redirects[0].kind is RedirectKind.SCHEME
    assert policy.redirects[0].code == 308
    assert policy.redirects[0].condition == PathPrefix("/api/")
    assert policy.redirects[1].code == 302  # HAProxy's default
    assert [d.status for d in policy.deny] == [403, 429]
    assert policy.methods == xhttp_methods(1)
    assert b"PATCH" in xhttp_methods(1)
    assert b"PROPFIND" not in xhttp_methods(1)
    assert policy.max_body == 10 * 1024 * 1024
    assert policy.screens


def test_nothing_configured_is_an_inactive_policy() -> None:
    policy = load_text(HEAD, "/lb.yaml").virtual_servers[0].policy
    assert not policy.screens
    assert not policy.request_headers
    assert not policy.response_headers
    assert not policy.error_pages


@pytest.mark.parametrize(
    ("extra", "where", "fragment"),
    [
        (
            "    request_headers: [{set: {Content-Length: '0'}}]\n",
            "5:30: virtual_servers[0].request_headers[0].set.Content-Length",
            "Content-Length may not be changed by a header rule",
        ),
        (
            "    response_headers: [{delete: Transfer-Encoding}]\n",
            "5:33: virtual_servers[0].response_headers[0].delete",
            "may not be changed",
        ),
        (
            "    request_headers: [{add: {Host: x}}]\n",
            "5:30: virtual_servers[0].request_headers[0].add.Host",
            "Host may not be changed",
        ),
        (
            "    request_headers:\n      - replace: {name: Connection, match: a, with: b}\n",
            "6:25: virtual_servers[0].request_headers[0].replace.name",
            "Connection may not be changed",
        ),
        (
            "    request_headers: [{set: {'X A': b}}]\n",
            "5:30: virtual_servers[0].request_headers[0].set.X A",
            "not a valid HTTP token",
        ),
        (
            "    request_headers: [{set: {X-A: ' b'}}]\n",
            "5:35: virtual_servers[0].request_headers[0].set.X-A",
            "must not start or end with spaces",
        ),
        (
            "    request_headers: [{set: {X-A: '%[nope]'}}]\n",
            "5:35: virtual_servers[0].request_headers[0].set.X-A",
            "%[nope] is unknown",
        ),
        (
            "    request_headers: [{set: {X-A: '50%'}}]\n",
            "5:35: virtual_servers[0].request_headers[0].set.X-A",
            "write %% for one",
        ),
        (
            "    request_headers: [{set: {X-A: b}, delete: X-B}]\n",
            "5:23: virtual_servers[0].request_headers[0]",
            "give exactly one of",
        ),
        (
            "    request_headers:\n      - replace: {name: X-A, match: '(', with: b}\n",
            "6:37: virtual_servers[0].request_headers[0].replace.match",
            "invalid regular expression",
        ),
        (
            "    request_headers:\n      - replace: {name: X-A, match: '(a)', with: '\\2'}\n",
            "6:50: virtual_servers[0].request_headers[0].replace.with",
            "invalid replacement: invalid group reference 2",
        ),
        (
            "    request_headers: [{delete: X-A, if: nosuch}]\n",
            "5:41: virtual_servers[0].request_headers[0].if",
            "no acl named 'nosuch' under acls: (known: none are defined)",
        ),
        (
            "    acls: {a: {path_prefx: /x}}\n",
            "5:16: virtual_servers[0].acls.a.path_prefx",
            "did you mean 'path_prefix'",
        ),
        (
            "    acls: {a: {}}\n",
            "5:15: virtual_servers[0].acls.a",
            "an empty condition",
        ),
        (
            "    acls: {a: {src: 10.0.0.1/8}}\n",
            "5:21: virtual_servers[0].acls.a.src",
            "host bits are set",
        ),
        (
            "    acls: {a: {header: {name: X, value: a, regex: b}}}\n",
            "5:24: virtual_servers[0].acls.a.header",
            "value or regex, not both",
        ),
        (
            "    acls: {a: {and: []}}\n",
            "5:21: virtual_servers[0].acls.a.and",
            "must not be empty",
        ),
        (
            "    redirects: [{location: /x, code: 304}]\n",
            "5:38: virtual_servers[0].redirects[0].code",
            "304 is not one of: 301, 302, 303, 307, 308",
        ),
        (
            "    redirects: [{scheme: 'ht tp'}]\n",
            "5:26: virtual_servers[0].redirects[0].scheme",
            "is not a URL scheme",
        ),
        (
            "    redirects: [{code: 301}]\n",
            "5:17: virtual_servers[0].redirects[0]",
            "give exactly one of: location, prefix, scheme",
        ),
        (
            "    deny: [{status: 200}]\n",
            "5:21: virtual_servers[0].deny[0].status",
            "out of range: must be in 400..599",
        ),
        (
            "    methods: [GET]\n    xhttp: 2\n",
            "6:5: virtual_servers[0].xhttp",
            "methods or xhttp, not both",
        ),
        (
            "    xhttp: 5\n",
            "5:12: virtual_servers[0].xhttp",
            "must be in 0..4",
        ),
        (
            "    methods: ['GE T']\n",
            "5:15: virtual_servers[0].methods[0]",
            "is not a method name",
        ),
        (
            "    limits: {max_body: lots}\n",
            "5:24: virtual_servers[0].limits.max_body",
            "expected a size like",
        ),
        (
            "    rules: [{if: {path: /a}, path_prefix: /b, pool: www}]\n",
            "5:13: virtual_servers[0].rules[0]",
            "(not both)",
        ),
    ],
)
def test_refused_with_position(extra: str, where: str, fragment: str) -> None:
    found = problems(extra)
    matching = [p for p in found if p.startswith(f"/etc/lb.yaml:{where}: ")]
    assert matching, f"no problem at {where}; got {found}"
    assert any(fragment in p for p in matching), f"{fragment!r} not in {matching}"


def test_error_pages_are_read_at_load(tmp_path: Path) -> None:
    raw = tmp_path / "503.http"
    raw.write_bytes(
        b"HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\n"
        b"Connection: close\r\nContent-Type: text/html\r\nContent-Length: 999\r\n\r\n"
        b"<h1>sorry</h1>\n"
    )
    body_only = tmp_path / "403.html"
    body_only.write_bytes(b"<h1>no</h1>\n")
    config = load_text(
        HEAD + "    error_pages: {503: 503.http, 403: " + str(body_only) + "}\n",
        str(tmp_path / "lb.yaml"),
    )
    pages = config.virtual_servers[0].policy.error_pages
    assert pages[503].status == 503
    assert pages[503].reason == b"Service Unavailable"
    # The file's own framing is dropped: lbproxy frames what it sends.
    assert pages[503].headers == ((b"cache-control", b"no-cache"), (b"content-type", b"text/html"))
    assert pages[503].body == b"<h1>sorry</h1>\n"
    assert pages[403].body == b"<h1>no</h1>\n"
    assert (b"content-type", b"text/html; charset=utf-8") in pages[403].headers


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (None, "cannot read {file}: No such file or directory"),
        (b"HTTP/1.0 503 Oops\r\nno colon here\r\n\r\nbody", "{file}: line 2: not a header field"),
        (b"HTTP/1.0 503 Oops\r\nX: y\r\n", "needs an empty line between its head and its body"),
        (b"HTTP/9 503\r\n\r\n", "{file}: line 1: not an HTTP/1.x status line"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "status 304 cannot carry a page"),
        (b"x" * 70000, "{file} is larger than 65536 bytes"),
    ],
)
def test_a_bad_error_page_is_a_check_error_naming_file_and_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, cause: str
) -> None:
    page = tmp_path / "503.http"
    if content is not None:
        page.write_bytes(content)
    config = tmp_path / "lb.yaml"
    config.write_text(HEAD + "    error_pages:\n      503: 503.http\n")
    assert main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}:6:12: virtual_servers[0].error_pages.503: " in err
    assert cause.format(file=page) in err
