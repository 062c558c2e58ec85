"""Self-signed certificates: the TLS default on first start and ``lbproxy selfsigned``."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .keys import PrivateKey

DEFAULT_DAYS = 365  # browsers cap publicly trusted leaves near this; long enough for a default


def san_entry(name: str) -> x509.GeneralName:
    """A subjectAltName entry: an IP address when ``name`` parses as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_self_signed(
    key: PrivateKey,
    cn: str,
    sans: Sequence[str] = (),
    *,
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A server certificate for ``cn`` (always in the SAN too) signed by its own key."""
    now = now or datetime.datetime.now(datetime.UTC)
    names = list(dict.fromkeys([cn, *sans]))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Key identifiers: strict RFC 5280 path builders (sslyze, some Java clients) want them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())
