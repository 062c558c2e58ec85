"""Access log lines, shaped like HAProxy's ``option httplog`` so existing parsers keep working.

``client:port [date] frontend backend/server Ta status bytes - - termination reason "request"``
"""

from __future__ import annotations

import time

from .exchange import ClientInfo

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_date(when: float) -> str:
    """HAProxy's accept date: 29/Nov/2026:22:12:41.123"""
    t = time.localtime(when)
    millis = int((when % 1) * 1000)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}"
    )


def _safe(data: bytes) -> str:
    """Request text for a log line: printable ASCII only, so no log injection."""
    return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x22 else f"%{b:02X}" for b in data)


def format_line(
    *,
    client: ClientInfo,
    vs: str,
    pool: str,
    server: str,
    reason: str,
    status: int,
    bytes_out: int,
    duration: float,
    termination: str,
    method: bytes,
    target: bytes,
    http_version: bytes,
    when: float,
) -> str:
    frontend = f"{vs}~" if client.tls else vs  # HAProxy marks TLS frontends with '~'
    client_text = f"[{client.ip}]" if ":" in client.ip else client.ip
    request = f"{_safe(method)} {_safe(target)} HTTP/{_safe(http_version)}"
    return (
        f"{client_text}:{client.port} [{format_date(when)}] {frontend} {pool}/{server} "
        f"{int(duration * 1000)} {status or -1} {bytes_out} - - {termination} {reason} "
        f'"{request}"'
    )
