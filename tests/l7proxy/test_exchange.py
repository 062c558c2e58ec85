"""Pure header rewriting: tables, no I/O."""

from __future__ import annotations

import pytest

from l7proxy.exchange import (
    ClientInfo,
    add_private_cache_control,
    check_request,
    forward_request_headers,
    forward_response_headers,
    https_redirect_target,
    rewrite_location,
    splice_head,
    split_for_h11,
)
from l7proxy.routing import host_without_port, path_of

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
    out = forward_request_headers(headers, CLIENT, forwardfor=True, listener_port=80)
    assert out == [*expected, (b"x-forwarded-proto", b"http"), (b"x-forwarded-port", b"80")]


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


def test_split_and_splice_keep_every_header() -> None:
    headers = [(b"host", b"a"), (b"x-a", b"1"), (b"content-length", b"2"), (b"x-b", b"2")]
    semantic, rest = split_for_h11(headers)
    assert semantic == [(b"host", b"a"), (b"content-length", b"2")]
    head = b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n"
    assert splice_head(head, rest) == (
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nx-a: 1\r\nx-b: 2\r\n\r\n"
    )
    assert splice_head(head, []) == head


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
