"""What a TLS bind serves, as plain values: for start-up and reload warnings, ``lbproxy check``,
the stats page and metrics. Pure: time is a parameter.

An expired or not yet valid certificate is served, as HAProxy, Pound and nginx do: one stale
file must not take every virtual server down with it. These warnings are what says so.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from .certificate import LoadedCertificate

# HAProxy's and most monitoring's renewal reminder; Let's Encrypt renews at 30 days left too.
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """One served certificate: ``path`` it came from, ``subject`` (its CN or first name),
    the DNS ``names`` it answers for, and its validity period (UTC)."""

    path: str
    subject: str
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime


def certificate_status(cert: LoadedCertificate) -> CertificateStatus:
    subject = cert.subject or (cert.names[0] if cert.names else "(no name)")
    return CertificateStatus(cert.source, subject, cert.names, cert.not_before, cert.not_after)


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def expiry_warnings(
    statuses: Iterable[CertificateStatus],
    now: datetime.datetime,
    days: int = EXPIRY_WARNING_DAYS,
) -> list[str]:
    """One line per certificate that is expired, not yet valid, or expires within ``days``:
    ``<file>: certificate <subject> ...`` with the date that matters."""
    now = as_utc(now)
    warnings = []
    for status in statuses:
        named = f"{status.path}: certificate {status.subject}"
        end = f"{status.not_after:%Y-%m-%d %H:%M:%S} UTC"
        if now > status.not_after:
            ago = (now - status.not_after).days
            warnings.append(
                f"{named} EXPIRED on {end} ({ago} day(s) ago); served anyway, clients will "
                "refuse it or warn: renew it"
            )
        elif now < status.not_before:
            warnings.append(
                f"{named} is not valid before {status.not_before:%Y-%m-%d %H:%M:%S} UTC; "
                "served anyway, clients will refuse it (is the clock right?)"
            )
        elif status.not_after - now < datetime.timedelta(days=days):
            left = (status.not_after - now).days
            warnings.append(f"{named} expires in {left} day(s), on {end}")
    return warnings
