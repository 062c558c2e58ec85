"""Syslog message formatting (RFC 3164 and 5424) and the certificate expiry decision: pure."""

from __future__ import annotations

import datetime
import logging

import pytest

from config.model import SyslogFormat
from l7proxy.syslog_format import (
    MAX_RFC3164_BYTES,
    MAX_RFC5424_BYTES,
    Origin,
    format_message,
    priority,
    rfc3164_timestamp,
    rfc5424_timestamp,
    severity_of,
)

UTC = datetime.UTC
WHEN = datetime.datetime(2026, 12, 2, 9, 5, 7, 123456, tzinfo=UTC)
PLUS_ONE = datetime.timezone(datetime.timedelta(hours=1))


@pytest.mark.parametrize(
    ("facility", "severity", "pri"),
    [("kern", 0, 0), ("local0", 6, 134), ("local7", 7, 191), ("daemon", 4, 28), ("user", 3, 11)],
)
def test_priority_is_facility_times_eight_plus_severity(
    facility: str, severity: int, pri: int
) -> None:
    assert priority(facility, severity) == pri


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (25, 6),  # a custom level between INFO and WARNING
    ],
)
def test_logging_levels_map_to_syslog_severities(level: int, severity: int) -> None:
    assert severity_of(level) == severity


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (WHEN, "Dec  2 09:05:07"),
        (datetime.datetime(2026, 1, 31, 23, 0, 0), "Jan 31 23:00:00"),
    ],
)
def test_rfc3164_timestamp_pads_the_day_with_a_space(when: datetime.datetime, text: str) -> None:
    assert rfc3164_timestamp(when) == text


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (WHEN, "2026-12-02T09:05:07.123456Z"),
        (WHEN.astimezone(PLUS_ONE), "2026-12-02T10:05:07.123456+01:00"),
    ],
)
def test_rfc5424_timestamp_is_rfc3339_with_the_offset(when: datetime.datetime, text: str) -> None:
    assert rfc5424_timestamp(when) == text


def test_rfc5424_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        rfc5424_timestamp(datetime.datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("origin", "severity", "message", "expected"),
    [
        (
            Origin("lb1", 42),
            6,
            "10.0.0.1:5000 [02/Dec/2026:09:05:07.123] www www/a 0/0/1/2/3 200 5 - - ---- ...",
            b"<134>Dec  2 09:05:07 lb1 lbproxy[42]: 10.0.0.1:5000 [02/Dec/2026:09:05:07.123] "
            b"www www/a 0/0/1/2/3 200 5 - - ---- ...",
        ),
        (Origin(None, 7, "daemon"), 4, "disk\n", b"<28>Dec  2 09:05:07 lbproxy[7]: disk"),
        (
            Origin("lb1", 42, "local3", SyslogFormat.RFC5424),
            3,
            "lbproxy.health: www/a is DOWN",
            b"<155>1 2026-12-02T09:05:07.123456Z lb1 lbproxy 42 - - lbproxy.health: www/a is DOWN",
        ),
        (
            Origin(None, 1, "local0", SyslogFormat.RFC5424),
            6,
            "x",
            b"<134>1 2026-12-02T09:05:07.123456Z - lbproxy 1 - - x",
        ),
        (
            Origin("host with space", 1, "local0", SyslogFormat.RFC5424),
            6,
            "caf\u00e9",
            "<134>1 2026-12-02T09:05:07.123456Z host_with_space lbproxy 1 - - caf\u00e9".encode(),
        ),
    ],
)
def test_messages(origin: Origin, severity: int, message: str, expected: bytes) -> None:
    assert format_message(origin, severity, WHEN, message) == expected


@pytest.mark.parametrize(
    ("fmt", "limit"), [(SyslogFormat.RFC3164, MAX_RFC3164_BYTES), (SyslogFormat.RFC5424, 2048)]
)
def test_long_messages_are_cut_on_a_character_boundary(fmt: SyslogFormat, limit: int) -> None:
    data = format_message(Origin("h", 1, format=fmt), 6, WHEN, "\u00e9" * 3000)
    assert limit - 1 <= len(data) <= limit
    data.decode("utf-8")  # still valid
    assert MAX_RFC5424_BYTES == 2048
