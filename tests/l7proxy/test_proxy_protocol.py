"""The PROXY protocol codec as a table: valid headers of both versions, malformed ones, every
prefix of a valid header (never an error, never a header), and random bytes (never anything
but a header, None or ProxyHeaderError)."""

from __future__ import annotations

import random
import struct

import pytest

from balancing.checker import CHECK_PROXY_HEADER
from config.model import ProxyVersion
from l7proxy.proxy_protocol import (
    MAX_HEADER,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode,
    parse,
)
from l7proxy.server import client_ip

V1, V2 = ProxyVersion.V1, ProxyVersion.V2
SIG = V2_SIGNATURE


def v2(ver_cmd: int, fam: int, block: bytes, length: int | None = None) -> bytes:
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(block) if length is None else length) + block


V4_BLOCK = bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 51000, 443)
V6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000007")
    + bytes.fromhex("20010db8000000000000000000000001")
    + struct.pack("!HH", 1, 65535)
)

VALID = [
    (
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n",
        ProxyHeader(1, 41, ("192.0.2.7", 51000), ("10.0.0.1", 443)),
    ),
    (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n",
        ProxyHeader(1, 44, ("2001:db8::7", 0), ("2001:db8::1", 65535)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader(1, 59)),
    (
        v2(0x21, 0x11, V4_BLOCK),
        ProxyHeader(2, 28, ("192.0.2.7", 51000), ("10.0.0.1", 443)),
    ),
    (
        v2(0x21, 0x21, V6_BLOCK),
        ProxyHeader(2, 52, ("2001:db8::7", 1), ("2001:db8::1", 65535)),
    ),
    # TLVs after the addresses are skipped (here: ALPN "h2" and a NOOP with no value).
    (
        v2(0x21, 0x11, V4_BLOCK + b"\x01\x00\x02h2" + b"\x04\x00\x00"),
        ProxyHeader(2, 36, ("192.0.2.7", 51000), ("10.0.0.1", 443)),
    ),
    (v2(0x20, 0x00, b""), ProxyHeader(2, 16)),  # LOCAL: a health check of the sender
    (v2(0x20, 0x11, V4_BLOCK), ProxyHeader(2, 28)),  # LOCAL ignores the addresses given
    (v2(0x21, 0x00, b""), ProxyHeader(2, 16)),  # UNSPEC
    (v2(0x21, 0x12, V4_BLOCK), ProxyHeader(2, 28)),  # UDP: not ours to use
    (v2(0x21, 0x31, bytes(216)), ProxyHeader(2, 232)),  # unix
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_headers(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == expected
    # What follows the header is not part of it.
    assert parse(data + b"GET / HTTP/1.1\r\n\r\n") == expected
    assert parse(data + b"\x16\x03\x01\x02\x00") == expected


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_every_prefix_asks_for_more(data: bytes, expected: ProxyHeader) -> None:
    for end in range(expected.length):
        assert parse(data[:end]) is None, data[:end]


MALFORMED = [
    (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00\x01", "not a PROXY protocol header"),  # a TLS ClientHello
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXYTCP4", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "printable"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "CR"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CR"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8\x00 1 2\r\n", "printable"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "needs"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not an IP address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an IP address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not an IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1\r\n", "printable"),  # Arabic-Indic digit one
    (b"PROXY " + b"A" * (V1_MAX - 6), "longer than 107"),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "longer than 107"),
    (v2(0x11, 0x11, V4_BLOCK), "version 1, not 2"),
    (v2(0x31, 0x11, V4_BLOCK), "version 3, not 2"),
    (v2(0x22, 0x11, V4_BLOCK), "unknown command 2"),
    (v2(0x21, 0x41, bytes(12)), "unknown family"),
    (v2(0x21, 0x13, V4_BLOCK), "unknown family"),
    (v2(0x21, 0x11, V4_BLOCK[:11]), "12 needed"),
    (v2(0x21, 0x21, V4_BLOCK), "36 needed"),
    (v2(0x21, 0x11, V4_BLOCK + b"\x01\x00"), "TLV cut short"),
    (v2(0x21, 0x11, V4_BLOCK + b"\x01\x00\x05h2"), "TLV longer"),
    (SIG + struct.pack("!BBH", 0x21, 0x11, MAX_HEADER), "more than 4096"),
    (SIG + struct.pack("!BBH", 0x21, 0x11, 65535), "more than 4096"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_headers(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_a_wrong_first_byte_is_refused_at_once() -> None:
    with pytest.raises(ProxyHeaderError):
        parse(b"G")
    with pytest.raises(ProxyHeaderError):
        parse(b"\r\n\r\n\x01")  # the v2 signature goes wrong on its fifth byte
    assert parse(b"") is None


ENCODED = [
    (V1, ("192.0.2.7", 51000), ("10.0.0.1", 443), b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n"),
    (V1, ("2001:db8::7", 1), ("::1", 80), b"PROXY TCP6 2001:db8::7 ::1 1 80\r\n"),
    # Mixed families go as IPv6, IPv4 mapped.
    (V1, ("192.0.2.7", 1), ("::1", 80), b"PROXY TCP6 ::ffff:c000:207 ::1 1 80\r\n"),
    (V1, None, None, b"PROXY UNKNOWN\r\n"),
    (V1, ("unix", 0), ("unix", 0), b"PROXY UNKNOWN\r\n"),
    (V2, ("192.0.2.7", 51000), ("10.0.0.1", 443), v2(0x21, 0x11, V4_BLOCK)),
    (V2, ("2001:db8::7", 1), ("2001:db8::1", 65535), v2(0x21, 0x21, V6_BLOCK)),
    (V2, None, None, v2(0x20, 0x00, b"")),
    (V2, ("unix", 0), ("unix", 0), v2(0x21, 0x00, b"")),
]


@pytest.mark.parametrize(("version", "source", "destination", "expected"), ENCODED)
def test_encode(
    version: ProxyVersion,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    expected: bytes,
) -> None:
    data = encode(version, source, destination)
    assert data == expected
    header = parse(data)
    assert header is not None
    assert header.length == len(data)


def test_longest_v1_headers_fit() -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    data = encode(V1, (longest, 65535), (longest, 65535))
    assert parse(data) == ProxyHeader(1, len(data), (longest, 65535), (longest, 65535))
    unknown = f"PROXY UNKNOWN {longest} {longest} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX
    assert parse(unknown) == ProxyHeader(1, V1_MAX)


def test_health_checks_send_what_encode_makes_for_a_local_connection() -> None:
    for version in ProxyVersion:
        assert CHECK_PROXY_HEADER[version] == encode(version, None, None)


def _mutations(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        at = rng.randrange(len(out) + 1)
        if choice < 0.4 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif choice < 0.7:
            out[at:at] = bytes([rng.randrange(256)])
        elif out:
            del out[min(at, len(out) - 1)]
    return bytes(out)


def test_fuzzed_headers_give_a_header_none_or_a_clear_error() -> None:
    """Mutated valid headers and random bytes: parse never raises anything else, never reads
    past what it was given, and a header it accepts encodes back to a parseable one."""
    rng = random.Random(11)
    seeds = [data for data, _ in VALID]
    for _ in range(20_000):
        data = _mutations(rng, rng.choice(seeds))
        if rng.random() < 0.1:
            data = rng.choice((b"PROXY ", SIG, b"")) + rng.randbytes(rng.randrange(64))
        message: str | None = None
        try:
            header = parse(data)
        except ProxyHeaderError as error:
            message = str(error)
        if message is not None:
            assert message  # a readable reason, on one line
            assert "\n" not in message
            continue
        if header is None:
            assert len(data) < MAX_HEADER
            continue
        assert header.length <= len(data)
        if header.source is not None and header.destination is not None:
            again = parse(
                encode(ProxyVersion(f"v{header.version}"), header.source, header.destination)
            )
            assert again is not None
            assert again.source == header.source


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack bind's IPv4 client
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("unix", "unix"),
    ],
)
def test_client_addresses_are_shown_in_one_form(raw: str, shown: str) -> None:
    assert client_ip(raw) == shown
