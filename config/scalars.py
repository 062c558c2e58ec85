"""Parsers for the scalar values of the config file: durations and ``host:port`` addresses.

Pure: nothing is resolved or bound here; a host name stays a name. Both parsers raise
``ValueError`` with a message that can follow ``key.path: `` in an error line.
"""

from __future__ import annotations

import ipaddress
import math
import re

from .model import Address, Network

# Units accepted after a number. `y` is 365 days, as browsers read an HSTS "1 year".
DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "y": 365 * 86400.0,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")

# RFC 1035 limits a full name to 253 characters and each label to 63; anything longer is a typo.
MAX_HOST_NAME_LENGTH = 253
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_LOOKS_LIKE_IPV4_RE = re.compile(r"[0-9.]+")
MAX_PORT = 65535


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"1y"`` or a bare number.

    Raises ValueError for negative, non-finite or malformed values; zero is allowed (callers
    that need a positive value check that themselves, with the key in the message).
    """
    if isinstance(value, bool):  # bool is an int subclass; `true` is never a duration
        raise ValueError(f"expected a duration like 2s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: expected a number with an optional unit "
                f"({', '.join(DURATION_UNITS)}), like 2s or 500ms"
            )
        number, unit = match.groups()
        if unit and unit not in DURATION_UNITS:
            raise ValueError(
                f"invalid duration {value!r}: unknown unit {unit!r} "
                f"(use one of {', '.join(DURATION_UNITS)})"
            )
        seconds = float(number) * DURATION_UNITS[unit or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: not a finite number")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    return seconds


def parse_address(value: str, default_port: int | None = None) -> Address:
    """``Address`` from ``"1.2.3.4:80"``, ``"[::1]:80"`` or ``"host:80"``.

    With ``default_port``, the port may be left out (``"host"``, ``"[::1]"``). IPv6 needs
    brackets so the port cannot be mistaken for the last group. Raises ValueError.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty address: expected HOST:PORT")
    if "://" in text:
        raise ValueError(f"invalid address {value!r}: write HOST:PORT, without a scheme")
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid address {value!r}: '[' without a closing ']'")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {value!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        _check_ipv6(host, value)
    else:
        if "]" in text:
            raise ValueError(f"invalid address {value!r}: ']' without an opening '['")
        if text.count(":") > 1:
            raise ValueError(
                f"invalid address {value!r}: an IPv6 address needs brackets, like [::1]:80"
            )
        host, sep, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if sep else None
        _check_host(host, value)
    port = _port(port_text, value, default_port)
    return Address(host=host, port=port)


def _port(text: str | None, value: str, default_port: int | None) -> int:
    if text is None:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: missing ':PORT'")
        return default_port
    if not text:
        raise ValueError(f"invalid address {value!r}: empty port after ':'")
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid address {value!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"invalid address {value!r}: port {port} is not in 1..{MAX_PORT}")
    return port


def _check_ipv6(host: str, value: str) -> None:
    if not host:
        raise ValueError(f"invalid address {value!r}: empty host in brackets")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"invalid address {value!r}: {host!r} is not an IPv6 address") from None


def _check_host(host: str, value: str) -> None:
    if not host:
        raise ValueError(f"invalid address {value!r}: empty host before ':'")
    if _LOOKS_LIKE_IPV4_RE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"invalid address {value!r}: {host!r} is not an IPv4 address"
            ) from None
        return
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOST_NAME_LENGTH or not all(
        _HOST_LABEL_RE.fullmatch(label) for label in name.split(".")
    ):
        raise ValueError(f"invalid address {value!r}: {host!r} is not a valid host name")


def parse_network(value: str) -> Network:
    """``Network`` from ``"10.0.0.0/8"``, ``"2001:db8::/32"`` or one address (a /32 or /128).

    Host bits must be zero: ``10.0.0.1/8`` is more likely a typo than a wish. Raises ValueError.
    """
    text = value.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        masked = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid network {value!r}: expected an address or ADDRESS/PREFIX "
            "like 10.0.0.0/8 or 2001:db8::/32"
        ) from None
    raise ValueError(f"invalid network {value!r}: host bits are set; did you mean {masked}?")
