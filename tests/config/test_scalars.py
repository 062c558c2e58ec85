"""parse_duration and parse_address: tables of good and bad values."""

from __future__ import annotations

import re

import pytest

from config.loader import parse_address, parse_duration
from config.model import Address


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("365d", 365 * 86400.0),
        ("1y", 365 * 86400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("30", 30.0),
        (" 10s ", 10.0),
        ("2 s", 2.0),
        ("0", 0.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "invalid duration"),
        ("s", "invalid duration"),
        ("5 sec", "unknown unit 'sec'"),
        ("5S", "invalid duration"),
        ("1m30s", "invalid duration"),
        ("-1s", "must not be negative"),
        (-1, "must not be negative"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        (True, "expected a duration"),
        ("1e3", "invalid duration"),
    ],
)
def test_parse_duration_rejects(value: str | int | float, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "default_port", "address"),
    [
        ("127.0.0.1:80", None, Address("127.0.0.1", 80)),
        ("0.0.0.0:65535", None, Address("0.0.0.0", 65535)),
        ("[::1]:8080", None, Address("::1", 8080)),
        ("[::]:443", None, Address("::", 443)),
        ("[2001:db8::1]:1", None, Address("2001:db8::1", 1)),
        ("backend.local:8080", None, Address("backend.local", 8080)),
        ("web-1:80", None, Address("web-1", 80)),
        ("localhost", 8080, Address("localhost", 8080)),
        ("[::1]", 443, Address("::1", 443)),
        ("10.0.0.1", 9000, Address("10.0.0.1", 9000)),
        ("10.0.0.1:81", 9000, Address("10.0.0.1", 81)),
        ("example.com.:80", None, Address("example.com.", 80)),
    ],
)
def test_parse_address(value: str, default_port: int | None, address: Address) -> None:
    assert parse_address(value, default_port) == address


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty address"),
        ("127.0.0.1", "missing ':PORT'"),
        ("127.0.0.1:", "empty port"),
        ("127.0.0.1:0", "port 0 is not in 1..65535"),
        ("127.0.0.1:65536", "port 65536 is not in 1..65535"),
        ("127.0.0.1:-1", "is not a number"),
        ("127.0.0.1:8o", "is not a number"),
        ("127.0.0.1:\uff18\uff10", "is not a number"),  # full-width digits pass isdigit()
        (":80", "empty host"),
        ("::1", "needs brackets"),
        ("::1:80", "needs brackets"),
        ("[::1", "without a closing ']'"),
        ("::1]:80", "without an opening '['"),
        ("x]:80", "without an opening '['"),
        ("[::1]80", "expected ':PORT' after ']'"),
        ("[]:80", "empty host in brackets"),
        ("[127.0.0.1]:80", "is not an IPv6 address"),
        ("[zz::1]:80", "is not an IPv6 address"),
        ("256.1.1.1:80", "is not an IPv4 address"),
        ("1.2.3:80", "is not an IPv4 address"),
        ("bad host:80", "is not a valid host name"),
        ("-lead.example:80", "is not a valid host name"),
        ("a..b:80", "is not a valid host name"),
        ("*:80", "is not a valid host name"),
        ("x" * 64 + ".example:80", "is not a valid host name"),
        ("http://a:80", "without a scheme"),
        ("a/b:80", "is not a valid host name"),
    ],
)
def test_parse_address_rejects(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_address(value)
