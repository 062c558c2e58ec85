"""The PROXY protocol, versions 1 (text) and 2 (binary): parse a received header, make one to
send (HAProxy's proxy-protocol.txt). Pure: bytes in, values out.

A header tells the receiver who the real client is when a balancer in front of it relays the
connection. ``parse`` reads a prefix of the bytes a connection starts with and says: not
enough yet (None), a header of N bytes (``ProxyHeader``), or not a valid header
(``ProxyHeaderError``). Sizes are bounded, so a reader never holds more than ``MAX_HEADER``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from config.model import ProxyVersion

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included (UNKNOWN with two full IPv6 ends)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, length
# The spec allows 64 KiB of address and TLVs; real senders (HAProxy, cloud balancers) send a
# few hundred bytes at most. A bound keeps one connection's header memory small.
MAX_HEADER = 4096
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"

_V2_VERSION = 0x20
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
_INET_LENGTHS = {0x1: 12, 0x2: 36, 0x3: 216}  # address block of AF_INET, AF_INET6, AF_UNIX
_PORT_DIGITS = frozenset(b"0123456789")

Endpoint = tuple[str, int]  # (ip, port)


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header; the message says what is wrong, for the log."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A received header. ``source``/``destination`` are None for a LOCAL command (the sender's
    own connection, a health check) or an unknown family: the connection's own addresses
    stand."""

    version: int
    length: int  # bytes the header took at the start of the connection
    source: Endpoint | None = None
    destination: Endpoint | None = None


def parse(data: bytes | bytearray) -> ProxyHeader | None:
    """The header at the start of ``data``, or None when more bytes are needed to tell.

    Raises ProxyHeaderError as soon as the bytes cannot start a valid header.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(bytes(data[:MAX_HEADER]))
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(bytes(data[:V1_MAX]))
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n")
    if end < 0:
        _check_v1_prefix(data)
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return None
    _check_v1_prefix(data[: end + 1])
    line = data[:end]
    parts = line.decode("ascii").split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, length)  # the rest of an UNKNOWN line is to be ignored
    if len(parts) != 6:
        raise ProxyHeaderError("v1 header needs: PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, proto, src, dst, sport, dport = parts
    if proto not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 protocol {proto[:8]!r} is not TCP4, TCP6 or UNKNOWN")
    version = 4 if proto == "TCP4" else 6
    return ProxyHeader(
        1,
        length,
        (_v1_ip(src, version), _v1_port(sport)),
        (_v1_ip(dst, version), _v1_port(dport)),
    )


def _check_v1_prefix(data: bytes) -> None:
    """Fail early on bytes a v1 line can never hold, rather than wait for a CRLF."""
    for byte in data:
        if not 0x20 <= byte <= 0x7E and byte != 0x0D:
            raise ProxyHeaderError("v1 header holds a byte that is not printable ASCII")
    if b"\r" in data[:-1]:  # only the CR of the final CRLF may be there
        raise ProxyHeaderError("v1 header holds a CR before its end")


def _v1_ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"v1 address {text[:45]!r} is not an IP address") from None
    if address.version != version or "%" in text:
        raise ProxyHeaderError(f"v1 address {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    if (
        not 1 <= len(text) <= 5
        or not _PORT_DIGITS.issuperset(text.encode("ascii"))
        or (len(text) > 1 and text[0] == "0")
        or int(text) > 65535
    ):
        raise ProxyHeaderError(f"v1 port {text[:8]!r} is not a number in 0..65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    ver_cmd, fam, size = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd & 0xF0 != _V2_VERSION:
        raise ProxyHeaderError(f"v2 header with version {ver_cmd >> 4}, not 2")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"v2 header with unknown command {command}")
    length = V2_FIXED + size
    if length > MAX_HEADER:
        raise ProxyHeaderError(f"v2 header of {length} bytes, more than {MAX_HEADER}")
    if len(data) < length:
        return None
    family, protocol = fam >> 4, fam & 0x0F
    if family > 0x3 or protocol > 0x2:
        raise ProxyHeaderError(f"v2 header with unknown family/protocol 0x{fam:02x}")
    address_size = _INET_LENGTHS.get(family, 0)
    if size < address_size:
        raise ProxyHeaderError(f"v2 address block of {size} bytes, {address_size} needed")
    _check_tlvs(data[V2_FIXED + address_size : length])
    if command == _CMD_LOCAL or fam not in (_FAM_TCP4, _FAM_TCP6):
        return ProxyHeader(2, length)  # LOCAL, UNSPEC, UDP or unix: the real endpoints stand
    ip_size = 4 if fam == _FAM_TCP4 else 16
    block = data[V2_FIXED : V2_FIXED + address_size]
    src = ipaddress.ip_address(block[:ip_size])
    dst = ipaddress.ip_address(block[ip_size : 2 * ip_size])
    sport, dport = struct.unpack_from("!HH", block, 2 * ip_size)
    return ProxyHeader(2, length, (str(src), sport), (str(dst), dport))


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs are skipped (the spec says unknown ones must be), but must not overrun the header."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("v2 TLV cut short")
        at += 3 + struct.unpack_from("!H", tlvs, at + 1)[0]
        if at > len(tlvs):
            raise ProxyHeaderError("v2 TLV longer than the header")


def encode(version: ProxyVersion, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """The header to send first on a server connection. None for either end: the connection
    is the sender's own (a health check): v1 UNKNOWN, v2 LOCAL (what HAProxy sends)."""
    v1 = version is ProxyVersion.V1
    if source is None or destination is None:
        return V1_UNKNOWN if v1 else _v2(_CMD_LOCAL, _FAM_UNSPEC, b"")
    try:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    except ValueError:  # a unix socket client: no address to tell
        return V1_UNKNOWN if v1 else _v2(_CMD_PROXY, _FAM_UNSPEC, b"")
    if src.version != dst.version:
        # One family per header: IPv4 goes as IPv4-mapped IPv6, as HAProxy does.
        src, dst = _as_v6(src), _as_v6(dst)
    sport, dport = source[1], destination[1]
    if v1:
        proto = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return _v2(_CMD_PROXY, _FAM_TCP4 if src.version == 4 else _FAM_TCP6, block)


def _v2(command: int, fam: int, block: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", _V2_VERSION | command, fam, len(block)) + block


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
