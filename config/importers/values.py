"""Small value conversions shared by the HAProxy and Pound translators."""

from __future__ import annotations

import re

from config.fields import LABEL_RE
from config.scalars import parse_address

_TIME_RE = re.compile(r"(\d+)(us|ms|s|min|m|h|d)?")
_UNIT_MS = {
    "us": 0.001,
    "ms": 1.0,
    "s": 1000.0,
    "m": 60000.0,
    "min": 60000.0,
    "h": 3600000.0,
    "d": 86400000.0,
}


def haproxy_ms(text: str) -> float | None:
    """HAProxy time (default unit ms) in milliseconds, or None when unreadable."""
    match = _TIME_RE.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]


def duration(ms: float) -> str:
    """An lbproxy duration for a number of milliseconds, in the largest whole unit."""
    whole = round(ms)
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{max(whole, 1)}ms"


def label(text: str, taken: set[str]) -> str:
    """``text`` as a label (invalid characters become ``_``), unique among ``taken``; added."""
    base = re.sub(r"[^A-Za-z0-9_.:-]", "_", text) or "_"
    if not LABEL_RE.fullmatch(base):
        base = "_" + base
    if base == "fallback":
        base = "fallback_"
    candidate = base
    n = 2
    while candidate.lower() in {t.lower() for t in taken}:
        candidate = f"{base}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def haproxy_address(text: str, default_port: int | None = None) -> str:
    """``ip:port`` as HAProxy writes it (``*:80``, ``:80``, ``:::80``, ``ipv4@``) as an lbproxy
    address; raises ValueError with the reason."""
    for prefix in ("ipv4@", "ipv6@"):
        text = text.removeprefix(prefix)
    if "@" in text or text.startswith("/"):
        raise ValueError(f"{text}: only TCP addresses can be carried (not unix sockets or fd@)")
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    elif text.count(":") > 1:
        host, _, port_text = text.rpartition(":")
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = ""
    if host in {"", "*", "0.0.0.0"}:
        host = "0.0.0.0"
    elif host in {"::", "[::]"}:
        host = "::"
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text}: no port")
        port_text = str(default_port)
    if not port_text.isdigit():
        raise ValueError(f"{text}: port {port_text!r} (ranges and offsets cannot be carried)")
    result = address(host, int(port_text))
    parse_address(result)
    return result


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``: long keyword lists stay readable."""
    return frozenset(text.split())
