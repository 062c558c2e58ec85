"""Which certificates expire soon: the warnings at start, at reload and once a day. [pure]"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from tls.certificate import LoadedCertificate

WARN_DAYS = 30  # like the usual monitoring checks (check_ssl_cert -w 30)


def expiry_warnings(
    certificates: Iterable[LoadedCertificate], now: datetime.datetime, days: int = WARN_DAYS
) -> list[str]:
    """One line per certificate with fewer than ``days`` left (or already expired)."""
    horizon = now + datetime.timedelta(days=days)
    lines: list[str] = []
    for cert in certificates:
        if cert.not_after >= horizon:
            continue
        names = ", ".join(cert.names) or "no DNS name"
        when = cert.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if cert.not_after <= now:
            lines.append(f"certificate {cert.source} ({names}) expired on {when}")
            continue
        left = cert.not_after - now
        lines.append(
            f"certificate {cert.source} ({names}) expires in {left.days} day(s), on {when}"
        )
    return lines
