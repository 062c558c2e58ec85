"""The access log line: HAProxy's httplog fields in order, plus the choice reason."""

from __future__ import annotations

import pytest

from l7proxy.accesslog import Entry, format_httplog, request_line
from l7proxy.runtime import ClientInfo


def entry(**changes: object) -> Entry:
    values: dict[str, object] = {
        "client": ClientInfo("10.0.1.2", 33317, "10.0.0.1", 80),
        "when": 0.655,
        "frontend": "http-in",
        "backend": "static",
        "server": "srv1",
        "head": 0.010,
        "connect": 0.030,
        "response": 0.069,
        "total": 0.109,
        "status": 200,
        "bytes_out": 2750,
        "termination": "--",
        "client_cookie": "-",
        "server_cookie": "-",
        "connections": 1,
        "frontend_connections": 1,
        "backend_active": 1,
        "server_active": 1,
        "retries": 0,
        "redispatched": False,
        "request": request_line(b"GET", b"/index.html", b"1.1"),
        "reason": "balance",
    }
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


def test_haproxy_manual_example_shape() -> None:
    line = format_httplog(entry())
    # The manual's example: 10.0.1.2:33317 [06/Feb/2009:12:14:14.655] http-in static/srv1
    # 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 "GET /index.html HTTP/1.1"
    assert line.startswith("10.0.1.2:33317 [")
    assert line.split("] ", 1)[1] == (
        "http-in static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 "
        '"GET /index.html HTTP/1.1" balance'
    )


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"client": ClientInfo("::1", 5, "::1", 443, tls=True)}, "[::1]:5 "),
        ({"client": ClientInfo("1.2.3.4", 5, "::1", 443, tls=True)}, " http-in~ "),
        ({"connect": None, "response": None, "status": 503}, "/0/-1/-1/109 503 "),
        ({"termination": "SC", "client_cookie": "D", "server_cookie": "I"}, " SCDI "),
        ({"retries": 1, "redispatched": True}, "/1/1/+1 0/0"),
        ({"request": request_line(b"GET", b'/a"b\r\nX', b"1.1")}, '"GET /a%22b%0D%0AX HTTP/1.1"'),
        ({"request": request_line(b"", b"", b"")}, '"<BADREQ>"'),
    ],
)
def test_fields(changes: dict[str, object], fragment: str) -> None:
    assert fragment in format_httplog(entry(**changes))


@pytest.mark.parametrize("when", [0.655, 1700000000.999, 1700000001.0005, 1700000001.5, 0.001])
def test_date_matches_strftime_whatever_the_order(when: float) -> None:
    import time

    from l7proxy.accesslog import format_date

    expected = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(int(when)))
    assert format_date(when) == f"{expected}.{int(round((when % 1) * 1000, 6)):03d}"


def test_request_text_is_cut_at_1024_bytes_and_marked() -> None:
    line = request_line(b"GET", b"/" + b"a" * 20_000, b"1.1")
    assert len(line) == 1024
    assert line.startswith("GET /aaaa")
    assert line.endswith("aaa... HTTP/1.1")
    assert request_line(b"GET", b"/short", b"1.1") == "GET /short HTTP/1.1"
    exact = b"/" + b"b" * (1024 - len("GET  HTTP/1.1") - 1)
    assert request_line(b"GET", exact, b"1.1").endswith(" HTTP/1.1")  # 1024: not cut
