"""The step after the CA answers: pair the signed certificate with its pending key, check it,
order the chain and assemble the one PEM bundle that a TLS bind loads as it is.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tls.keys import PrivateKey, key_pem
from tls.status import EXPIRY_WARNING_DAYS
from tls.store import (
    CertificateError,
    chain_pem,
    check_validity,
    describe_subject,
    is_self_signed,
    key_matches,
    order_chain,
    parse_pem_bundle,
)


@dataclass(frozen=True, slots=True)
class Bundle:
    """``pem`` is leaf, chain, then the unencrypted key; ``warnings`` are one line each."""

    pem: bytes
    chain: list[x509.Certificate]
    warnings: list[str]


def days_left(cert: x509.Certificate, now: datetime.datetime) -> int:
    """Whole days until ``cert`` expires (negative once it has)."""
    return (cert.not_valid_after_utc - now.astimezone(datetime.UTC)).days


def _check_server_usage(leaf: x509.Certificate, source: str) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction: good for any purpose
    allowed = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
    if not any(usage in allowed for usage in usages):
        raise CertificateError(
            source,
            f"certificate {describe_subject(leaf)} is not for TLS servers "
            "(its extended key usage lacks serverAuth)",
        )


def _chain_warnings(
    chain: list[x509.Certificate], left_out: Sequence[x509.Certificate], now: datetime.datetime
) -> list[str]:
    warnings = []
    leaf = chain[0]
    left = days_left(leaf, now)
    if left < EXPIRY_WARNING_DAYS:
        warnings.append(
            f"certificate {describe_subject(leaf)} expires in {left} day(s), "
            f"on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    for cert in chain[1:]:
        if days_left(cert, now) < EXPIRY_WARNING_DAYS:
            warnings.append(
                f"chain certificate {describe_subject(cert)} expires on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}"
            )
    if len(chain) == 1 and not is_self_signed(leaf):
        warnings.append(
            f"no intermediate certificate: the issuer {leaf.issuer.rfc4514_string()!r} is "
            "missing and many clients cannot build the chain without it (give --chain)"
        )
    if len(chain) > 1 and is_self_signed(chain[-1]):
        warnings.append(
            f"the root certificate {describe_subject(chain[-1])} is included; clients already "
            "have it, sending it only costs bytes in every handshake"
        )
    if left_out:
        names = ", ".join(describe_subject(cert) for cert in left_out)
        warnings.append(f"left out {len(left_out)} certificate(s) not on the chain: {names}")
    return warnings


def assemble_bundle(
    key: PrivateKey,
    certs: Sequence[x509.Certificate],
    *,
    cert_source: str,
    key_source: str,
    now: datetime.datetime,
) -> Bundle:
    """Check and assemble. ``certs`` is the signed certificate plus any chain, in any order.

    Raises CertificateError when no certificate matches the key, when the leaf is expired, not
    yet valid or not for servers; softer problems come back as ``warnings``.
    """
    chain = order_chain(list(certs), key)
    if not chain:
        raise CertificateError(cert_source, "holds no certificate")
    if not key_matches(key, chain[0]):
        raise CertificateError(
            cert_source, f"no certificate in it matches the pending key {key_source}"
        )
    check_validity(chain[0], cert_source, now)
    _check_server_usage(chain[0], cert_source)
    left_out = [cert for cert in certs if cert not in chain]
    warnings = _chain_warnings(chain, list(dict.fromkeys(left_out)), now)
    pem = chain_pem(chain) + key_pem(key)
    parse_pem_bundle(pem, "(assembled bundle)")  # the store must read back what we write
    return Bundle(pem, chain, warnings)
