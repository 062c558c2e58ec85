"""Pure header rewriting: tables, no I/O."""

from __future__ import annotations

import pytest

from l7proxy.exchange import (
    H11_SEMANTIC,
    RequestScan,
    add_private_cache_control,
    check_request,
    forward_request_split,
    forward_response_headers,
    forward_response_split,
    forwarded_tail,
    https_redirect_target,
    local_authority,
    rewrite_location,
)
from l7proxy.request_writer import request_head
from l7proxy.routing import host_without_port, path_of
from l7proxy.runtime import ClientInfo


def split_for_h11(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], ...]:
    """The reference split: what h11 must see, then the rest, each in their original order."""
    semantic = [item for item in headers if item[0] in H11_SEMANTIC]
    rest = [item for item in headers if item[0] not in H11_SEMANTIC]
    return semantic, rest


CLIENT = ClientInfo("192.0.2.10", 40000, "127.0.0.1", 80)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"a")], [(b"host", b"a"), (b"x-forwarded-for", b"192.0.2.10")]),
        (
            [(b"host", b"a"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")],
            [(b"host", b"a"), (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 192.0.2.10")],
        ),
        (
            [(b"host", b"a"), (b"connection", b"x-a, close"), (b"x-a", b"1"), (b"te", b"trailers")],
            [(b"host", b"a"), (b"x-forwarded-for", b"192.0.2.10")],
        ),
        (  # Connection cannot remove framing or Host
            [(b"host", b"a"), (b"connection", b"content-length, host"), (b"content-length", b"3")],
            [(b"host", b"a"), (b"content-length", b"3"), (b"x-forwarded-for", b"192.0.2.10")],
        ),
    ],
)
def test_forward_request_headers(
    headers: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]
) -> None:
    tail = forwarded_tail(CLIENT, 80)
    scan = RequestScan(headers)
    semantic, rest = forward_request_split(
        headers, scan, client_ip=b"192.0.2.10", forwardfor=True, tail=tail
    )
    wanted_semantic, wanted_rest = split_for_h11(expected)
    assert semantic == wanted_semantic
    assert rest == [
        *wanted_rest,
        (b"x-forwarded-host", b"a"),  # the Host the client asked for, never the client's copy
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-port", b"80"),
    ]


def test_a_request_without_host_gets_the_address_it_reached() -> None:
    """HTTP/1.0 allows no Host; it goes on as HTTP/1.1, which needs one."""
    headers = [(b"x-forwarded-host", b"evil"), (b"accept", b"*/*")]
    semantic, rest = forward_request_split(
        headers,
        RequestScan(headers),
        client_ip=b"192.0.2.10",
        forwardfor=True,
        default_host=local_authority(CLIENT),
    )
    assert semantic == [(b"host", b"127.0.0.1:80")]
    assert rest == [(b"accept", b"*/*"), (b"x-forwarded-for", b"192.0.2.10")]


@pytest.mark.parametrize(
    ("headers", "semantic", "rest"),
    [
        (  # a listed name before its Connection header goes too; Expect may be listed
            [(b"x-a", b"1"), (b"expect", b"100-continue"), (b"connection", b"X-A, expect")],
            [],
            [],
        ),
        (  # what lbproxy sets is never taken from the client; dropped names go
            [(b"x-forwarded-port", b"1"), (b"x-forwarded-proto", b"https"), (b"x-ssl", b"z")],
            [],
            [],
        ),
        (  # a WebSocket upgrade is forwarded as such
            [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"host", b"a")],
            [(b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
            [(b"x-forwarded-host", b"a")],
        ),
        (  # h2c never is, nor an Upgrade that Connection does not list
            [(b"connection", b"upgrade"), (b"upgrade", b"h2c"), (b"host", b"a")],
            [(b"host", b"a")],
            [(b"x-forwarded-host", b"a")],
        ),
        ([(b"upgrade", b"websocket"), (b"x-b", b"2")], [], [(b"x-b", b"2")]),
    ],
)
def test_forward_request_split(
    headers: list[tuple[bytes, bytes]],
    semantic: list[tuple[bytes, bytes]],
    rest: list[tuple[bytes, bytes]],
) -> None:
    out = forward_request_split(
        headers,
        RequestScan(headers),
        client_ip=b"192.0.2.10",
        forwardfor=False,
        drop=frozenset({b"x-ssl"}),
    )
    assert out == (semantic, rest)


@pytest.mark.parametrize(
    ("headers", "facts"),
    [
        ([(b"host", b"a"), (b"host", b"b")], (b"a", 2, False, None)),
        ([(b"content-length", b" 0 ")], (None, 0, False, None)),
        ([(b"content-length", b"5")], (None, 0, True, None)),
        ([(b"transfer-encoding", b"chunked")], (None, 0, True, None)),
        (
            [(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket")],
            (None, 0, False, b"WebSocket"),
        ),
        ([(b"connection", b"upgrade"), (b"upgrade", b"H2C")], (None, 0, False, None)),
    ],
)
def test_request_scan(
    headers: list[tuple[bytes, bytes]], facts: tuple[bytes | None, int, bool, bytes | None]
) -> None:
    scan = RequestScan(headers)
    assert (scan.host, scan.hosts, scan.has_body, scan.upgrade) == facts


@pytest.mark.parametrize(
    "headers",
    [
        [(b"connection", b"keep-alive"), (b"content-length", b"3"), (b"etag", b'"1"')],
        [(b"x-b", b"1"), (b"connection", b"x-b, content-length"), (b"content-length", b"3")],
        [(b"connection", b"close"), (b"keep-alive", b"t=5"), (b"transfer-encoding", b"chunked")],
        [(b"connection", b"X-B"), (b"x-b", b"1"), (b"connection", b"x-c"), (b"x-c", b"2")],
        [(b"date", b"x"), (b"location", b"/a"), (b"host", b"h")],
    ],
)
def test_forward_response_split_matches_forward_then_split(
    headers: list[tuple[bytes, bytes]],
) -> None:
    assert forward_response_split(headers) == split_for_h11(forward_response_headers(headers))


def test_forward_response_headers_drop_hop_by_hop() -> None:
    headers = [(b"connection", b"keep-alive, x-b"), (b"x-b", b"1"), (b"keep-alive", b"t=5")]
    headers += [(b"content-length", b"3"), (b"etag", b'"1"')]
    extra = [(b"set-cookie", b"S=a; path=/")]
    assert forward_response_headers(headers, extra) == [
        (b"content-length", b"3"),
        (b"etag", b'"1"'),
        (b"set-cookie", b"S=a; path=/"),
    ]


@pytest.mark.parametrize(
    ("headers", "added"),
    [
        ([], True),
        ([(b"cache-control", b"max-age=60")], True),
        ([(b"cache-control", b"private, max-age=60")], False),
        ([(b"cache-control", b"no-store")], False),
    ],
)
def test_nocache(headers: list[tuple[bytes, bytes]], added: bool) -> None:
    out = add_private_cache_control(headers)
    assert ((b"cache-control", b"private") in out) is added
    assert out[: len(headers)] == headers


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "status"),
    [
        (b"GET", b"/", b"1.1", [(b"host", b"a")], None),
        (b"GET", b"/" + b"a" * 9000, b"1.1", [(b"host", b"a")], 414),
        (b"GET", b"/", b"1.1", [(b"host", b"a")] * 2, 400),
        (b"GET", b"/#x", b"1.1", [(b"host", b"a")], 400),
        (b"POST", b"/", b"1.0", [(b"transfer-encoding", b"chunked")], 400),
        (
            b"POST",
            b"/",
            b"1.1",
            [(b"transfer-encoding", b"chunked"), (b"content-length", b"1")],
            400,
        ),
        (b"GET", b"/", b"1.1", [(b"x", b"y")] * 102, 431),
        (b"CONNECT", b"a:443", b"1.1", [(b"host", b"a")], 405),
    ],
)
def test_check_request(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    status: int | None,
) -> None:
    problem = check_request(method, target, version, headers)
    assert (problem.status if problem else None) == status


@pytest.mark.parametrize(
    ("location", "tls", "expected"),
    [
        (b"http://10.0.0.1:8080/login", True, b"https://www.example.com/login"),
        (b"http://10.0.0.1:8080", False, b"http://www.example.com"),
        (b"http://www.example.com/a", True, b"https://www.example.com/a"),
        (b"https://www.example.com/a", True, b"https://www.example.com/a"),
        (b"http://www.example.com/a", False, b"http://www.example.com/a"),
        (b"http://other.example/a", True, b"http://other.example/a"),
        (b"http://10.0.0.1:9999/", True, b"http://10.0.0.1:9999/"),  # another port: not ours
        (b"/relative", True, b"/relative"),
        (b"ftp://10.0.0.1:8080/", True, b"ftp://10.0.0.1:8080/"),
    ],
)
def test_rewrite_location(location: bytes, tls: bool, expected: bytes) -> None:
    result = rewrite_location(
        location,
        server_host="10.0.0.1",
        server_port=8080,
        request_host=b"www.example.com",
        tls=tls,
    )
    assert result == expected


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (b"www.example.com", 443, b"https://www.example.com/p?q"),
        (b"www.example.com:8080", 8443, b"https://www.example.com:8443/p?q"),
        (b"[::1]:80", 443, b"https://[::1]/p?q"),
    ],
)
def test_https_redirect_target(host: bytes, port: int, expected: bytes) -> None:
    assert https_redirect_target(host, b"/p?q", port) == expected


def test_split_and_write_keep_every_header() -> None:
    headers = [(b"x-a", b"1"), (b"content-length", b"2"), (b"host", b"a"), (b"x-b", b"2")]
    semantic, rest = split_for_h11(headers)
    assert semantic == [(b"content-length", b"2"), (b"host", b"a")]
    assert request_head(b"GET", b"/", semantic, rest) == (
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nx-a: 1\r\nx-b: 2\r\n\r\n"
    )
    assert request_head(b"GET", b"/", semantic, []) == (
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [(b"WWW.Example.com:8080", "www.example.com"), (b"[::1]:80", "[::1]"), (b"a.b.", "a.b")],
)
def test_host_without_port(host: bytes, expected: str) -> None:
    assert host_without_port(host) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [(b"/a/b?c", "/a/b"), (b"http://h/x?y", "/x"), (b"http://h", "/"), (b"*", "*")],
)
def test_path_of(target: bytes, expected: str) -> None:
    assert path_of(target) == expected
