"""Certificate statuses and expiry warnings: the pure values the log, check and stats use."""

from __future__ import annotations

import datetime

import pytest

from tls.certificate import LoadedCertificate
from tls.status import CertificateStatus, certificate_status, expiry_warnings

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def status(start: datetime.datetime, end: datetime.datetime) -> CertificateStatus:
    return CertificateStatus(
        "/etc/lb/site.pem", "www.example.com", ("www.example.com",), start, end
    )


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (
            NOW - 90 * DAY,
            NOW - 3 * DAY,
            "/etc/lb/site.pem: certificate www.example.com EXPIRED on 2026-11-29 12:00:00 UTC "
            "(3 day(s) ago); served anyway, clients will refuse it or warn: renew it",
        ),
        (
            NOW + 2 * DAY,
            NOW + 90 * DAY,
            "/etc/lb/site.pem: certificate www.example.com is not valid before 2026-12-04 "
            "12:00:00 UTC; served anyway, clients will refuse it (is the clock right?)",
        ),
        (
            NOW - DAY,
            NOW + 10 * DAY,
            "/etc/lb/site.pem: certificate www.example.com expires in 10 day(s), on "
            "2026-12-12 12:00:00 UTC",
        ),
        (NOW - DAY, NOW + 30 * DAY, None),
        (NOW - DAY, NOW + 300 * DAY, None),
    ],
    ids=["expired", "not-yet-valid", "expiring", "30-days-left", "fine"],
)
def test_expiry_warnings(
    start: datetime.datetime, end: datetime.datetime, expected: str | None
) -> None:
    assert expiry_warnings([status(start, end)], NOW) == ([expected] if expected else [])


def test_expiry_warnings_days_and_naive_now() -> None:
    soon = status(NOW - DAY, NOW + 40 * DAY)
    assert expiry_warnings([soon], NOW) == []
    assert len(expiry_warnings([soon], NOW, days=60)) == 1
    # A naive time is UTC, never local time.
    expired = status(NOW - 9 * DAY, NOW - DAY)
    assert expiry_warnings([expired], NOW.replace(tzinfo=None)) == expiry_warnings([expired], NOW)


def test_certificate_status_of_a_loaded_certificate() -> None:
    loaded = LoadedCertificate(
        source="/etc/lb/a.pem",
        chain_pem=b"",
        key_pem=b"",
        names=("a.example", "b.example"),
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        subject="A Example",
    )
    assert certificate_status(loaded) == CertificateStatus(
        "/etc/lb/a.pem", "A Example", ("a.example", "b.example"), NOW - DAY, NOW + DAY
    )
    unnamed = LoadedCertificate("/x.pem", b"", b"", ("x.example",), NOW, NOW + DAY)
    assert certificate_status(unnamed).subject == "x.example"
