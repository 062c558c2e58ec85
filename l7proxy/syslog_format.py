"""Syslog messages, RFC 3164 (BSD) and RFC 5424, as the bytes of one datagram. [pure]

The sender (log_targets.py) gives the time, host name and pid; nothing here reads a clock.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from config.model import SYSLOG_FACILITIES, SyslogFormat

APP_NAME = "lbproxy"  # the RFC 3164 TAG and the RFC 5424 APP-NAME

# RFC 5424 section 6.2.1 severities.
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)
ACCESS_SEVERITY = INFO  # HAProxy logs traffic at info

# RFC 3164 section 4.1: a packet is 1024 bytes at most. RFC 5424 section 6.1: receivers
# SHOULD take 2048. Longer messages are cut (HAProxy's `len` does the same, 1024 by default).
MAX_RFC3164_BYTES = 1024
MAX_RFC5424_BYTES = 2048

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
NILVALUE = "-"


def severity_of(levelno: int) -> int:
    """A logging level as a syslog severity (custom levels fall to the one below them)."""
    if levelno >= logging.CRITICAL:
        return CRIT
    if levelno >= logging.ERROR:
        return ERR
    if levelno >= logging.WARNING:
        return WARNING
    if levelno >= logging.INFO:
        return INFO
    return DEBUG


def priority(facility: str, severity: int) -> int:
    return SYSLOG_FACILITIES[facility] * 8 + severity


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sends: fixed for the life of a target."""

    hostname: str | None  # None: left out of RFC 3164 (the local syslog daemon adds its own)
    pid: int
    facility: str = "local0"
    format: SyslogFormat = SyslogFormat.RFC3164


def rfc3164_timestamp(when: datetime.datetime) -> str:
    """``Mmm dd hh:mm:ss`` in the local time ``when`` carries, day padded with a space."""
    return f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"


def rfc5424_timestamp(when: datetime.datetime) -> str:
    """RFC 3339 with microseconds and the offset; ``Z`` for UTC."""
    if when.tzinfo is None:
        raise ValueError("RFC 5424 needs an aware time")
    text = when.isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _header_name(text: str | None, limit: int) -> str:
    """A header field: printable ASCII without spaces (RFC 5424 PRINTUSASCII), cut to ``limit``."""
    if not text:
        return NILVALUE
    cleaned = "".join(c if "!" <= c <= "~" else "_" for c in text)
    return cleaned[:limit]


def _cut(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    # Cut at a character boundary so the message stays valid UTF-8.
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def format_message(
    origin: Origin, severity: int, when: datetime.datetime, message: str, msgid: str | None = None
) -> bytes:
    """One datagram. ``message`` loses a trailing newline; other text is sent as is (UTF-8)."""
    pri = priority(origin.facility, severity)
    body = message.rstrip("\n")
    if origin.format is SyslogFormat.RFC5424:
        header = (
            f"<{pri}>1 {rfc5424_timestamp(when)} {_header_name(origin.hostname, 255)} "
            f"{APP_NAME} {origin.pid} {_header_name(msgid, 32)} {NILVALUE} "
        )
        return _cut((header + body).encode("utf-8", "replace"), MAX_RFC5424_BYTES)
    host = f"{_header_name(origin.hostname, 255)} " if origin.hostname else ""
    header = f"<{pri}>{rfc3164_timestamp(when)} {host}{APP_NAME}[{origin.pid}]: "
    return _cut((header + body).encode("utf-8", "replace"), MAX_RFC3164_BYTES)
