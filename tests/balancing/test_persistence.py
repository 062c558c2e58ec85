"""The persistence cookie (hostile inputs, exact Set-Cookie bytes) and the source table."""

from __future__ import annotations

import pytest

from balancing.persistence import (
    MAX_LABEL_BYTES,
    SourceTable,
    clear_cookie_value,
    read_cookie,
    set_cookie_value,
    source_key,
    valid_label,
)
from config.model import CookiePersistence

Headers = list[tuple[bytes, bytes]]
HOST = (b"host", b"example.com")


@pytest.mark.parametrize(
    ("cookies", "label", "left"),
    [
        ([b"SERVERID=web1"], "web1", []),
        ([b"a=1; SERVERID=web1; b=2"], "web1", [b"a=1; b=2"]),
        ([b"a=1;SERVERID=web1;b=2"], "web1", [b"a=1; b=2"]),
        ([b"SERVERID=web1", b"x=y"], "web1", [b"x=y"]),
        ([b"x=y", b"SERVERID=web2; SERVERID=web1"], "web2", [b"x=y"]),  # first occurrence wins
        ([b"SERVERID=web1", b"SERVERID=web2"], "web1", []),
        ([b"a=1"], None, [b"a=1"]),  # no cookie of ours: header untouched
        ([b"a=1;  b=2"], None, [b"a=1;  b=2"]),
        ([b"SERVERIDX=web1; XSERVERID=web2"], None, [b"SERVERIDX=web1; XSERVERID=web2"]),
        ([b"serverid=web1"], None, [b"serverid=web1"]),  # names are case-sensitive
        ([b"SERVERID =web1"], "web1", []),
        ([b'SERVERID="web1"'], None, []),  # quoted: invalid, still removed
        ([b"SERVERID=web1,web2"], None, []),
        ([b"SERVERID=web1, a=b"], None, []),
        ([b"SERVERID=web\\1"], None, []),
        ([b"SERVERID=web 1"], None, []),
        ([b"SERVERID=web1\r\nX-Evil: 1"], None, []),
        ([b"SERVERID=\xc3\xa9"], None, []),
        ([b"SERVERID="], None, []),
        ([b"SERVERID"], None, [b"SERVERID"]),  # no '=': not a cookie pair of ours
        ([b"SERVERID=" + b"a" * (MAX_LABEL_BYTES + 1)], None, []),
        ([b"SERVERID=" + b"a" * MAX_LABEL_BYTES + b"; k=v"], "a" * MAX_LABEL_BYTES, [b"k=v"]),
        ([b";;;"], None, [b";;;"]),
        ([b""], None, [b""]),
        ([b'SERVERID=bad"; SERVERID=web1'], None, []),  # the first occurrence decides
    ],
)
def test_read_cookie(cookies: list[bytes], label: str | None, left: list[bytes]) -> None:
    headers: Headers = [HOST, *((b"cookie", c) for c in cookies), (b"accept", b"*/*")]
    got, rest = read_cookie(headers, "SERVERID")
    assert got == label
    assert rest == [HOST, *((b"cookie", c) for c in left), (b"accept", b"*/*")]


def test_read_cookie_header_name_case_and_other_headers_untouched() -> None:
    headers: Headers = [(b"Cookie", b"SERVERID=w; a=b"), (b"x-cookie", b"SERVERID=w")]
    label, rest = read_cookie(headers, "SERVERID")
    assert label == "w"
    assert rest == [(b"Cookie", b"a=b"), (b"x-cookie", b"SERVERID=w")]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("web1", True), ("a-b_c.d:8080", True), ("", False), ("a b", False), ("a;b", False),
     ("a,b", False), ('"a"', False), ("a\\b", False), ("é", False), ("a" * 257, False)],
)  # fmt: skip
def test_valid_label(value: str, ok: bool) -> None:
    assert valid_label(value) is ok


@pytest.mark.parametrize(
    ("cfg", "tls", "expected"),
    [
        (CookiePersistence(), False, b"SERVERID=web1; path=/"),
        (CookiePersistence(), True, b"SERVERID=web1; path=/; Secure"),
        (CookiePersistence(secure=False), True, b"SERVERID=web1; path=/"),
        (CookiePersistence(secure=True), False, b"SERVERID=web1; path=/; Secure"),
        (CookiePersistence(httponly=True), False, b"SERVERID=web1; path=/; HttpOnly"),
        (
            CookiePersistence(
                name="LB", httponly=True, secure=True, samesite="Lax", domain="example.com"
            ),
            False,
            b"LB=web1; path=/; domain=example.com; HttpOnly; Secure; SameSite=Lax",
        ),
        (CookiePersistence(samesite="None"), True, b"SERVERID=web1; path=/; Secure; SameSite=None"),
    ],
)
def test_set_cookie_value_bytes(cfg: CookiePersistence, tls: bool, expected: bytes) -> None:
    assert set_cookie_value(cfg, "web1", tls) == expected


@pytest.mark.parametrize(
    ("cfg", "tls", "expected"),
    [
        (
            CookiePersistence(),
            False,
            b"SERVERID=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/",
        ),
        (
            CookiePersistence(httponly=True, domain="example.com", samesite="Strict"),
            True,
            b"SERVERID=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/; domain=example.com;"
            b" HttpOnly; Secure; SameSite=Strict",
        ),
    ],
)
def test_clear_cookie_value_bytes(cfg: CookiePersistence, tls: bool, expected: bytes) -> None:
    assert clear_cookie_value(cfg, tls) == expected


@pytest.mark.parametrize(
    ("ip", "mask4", "mask6", "key"),
    [
        ("192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("192.0.2.77", 32, 64, "192.0.2.77/32"),
        ("192.0.2.77", 16, 64, "192.0.0.0/16"),
        ("::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 24, 48, "2001:db8:1::/48"),
        ("fe80::1%eth0", 24, 64, "fe80::/64"),
        ("192.0.2.77", 40, 200, "192.0.2.77/32"),  # out-of-range masks are clamped
        ("not-an-ip", 24, 64, "not-an-ip"),
    ],
)
def test_source_key(ip: str, mask4: int, mask6: int, key: str) -> None:
    assert source_key(ip, mask4, mask6) == key


def test_source_table_idle_expiry_refreshes_on_use() -> None:
    table = SourceTable(size=10, timeout=5.0)
    table.record("k", "a", now=0.0)
    assert table.lookup("k", now=4.0) == "a"
    assert table.lookup("k", now=8.5) == "a"  # refreshed at 4.0
    assert table.lookup("k", now=14.0) is None
    assert len(table) == 0


def test_source_table_is_bounded_lru() -> None:
    table = SourceTable(size=3, timeout=100.0)
    for i, key in enumerate("abc"):
        table.record(key, f"s{key}", now=float(i))
    assert table.lookup("a", now=3.0) == "sa"  # a is now the most recent
    table.record("d", "sd", now=4.0)  # evicts b, the least recently used
    assert table.lookup("b", now=5.0) is None
    assert [k for k, _, _ in table.items()] == ["c", "a", "d"]
    assert len(table) == 3


def test_source_table_overwrite_and_forget() -> None:
    table = SourceTable(size=3, timeout=100.0)
    table.record("k", "a", now=0.0)
    table.record("k", "b", now=1.0)
    assert table.lookup("k", now=2.0) == "b"
    table.forget("k")
    table.forget("missing")
    assert table.lookup("k", now=2.0) is None


@pytest.mark.parametrize("label", ["", "a b", "a;b", "a\r\nSet-Cookie: x=y", '"q"'])
def test_set_cookie_value_refuses_unsafe_labels(label: str) -> None:
    with pytest.raises(ValueError, match="cannot be a cookie value"):
        set_cookie_value(CookiePersistence(), label, False)
