"""``lbproxy show-cert``: what an operator needs to know about a certificate file, as text."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from tls.keys import PrivateKey
from tls.store import describe_subject, key_matches, order_chain

from .install import days_left

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def key_description(public_key: object) -> str:
    """``RSA 2048``, ``EC P-256``, ``Ed25519``..."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        return f"EC {_CURVE_NAMES.get(curve, curve)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size}"
    return type(public_key).__name__


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER, as ``openssl x509 -fingerprint -sha256`` shows it."""
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{address}" for address in san.get_values_for_type(x509.IPAddress)]
    names += [f"email:{mail}" for mail in san.get_values_for_type(x509.RFC822Name)]
    return names


def validity(cert: x509.Certificate, now: datetime.datetime) -> str:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    span = f"{start:%Y-%m-%d %H:%M:%S} UTC to {end:%Y-%m-%d %H:%M:%S} UTC"
    now = now.astimezone(datetime.UTC)
    if now < start:
        return f"{span} (NOT YET VALID: starts in {(start - now).days + 1} day(s))"
    if now > end:
        return f"{span} (EXPIRED {(now - end).days} day(s) ago)"
    return f"{span} ({days_left(cert, now)} day(s) left)"


def describe_certificate(cert: x509.Certificate, now: datetime.datetime) -> list[str]:
    names = subject_alt_names(cert)
    return [
        f"  subject:     {cert.subject.rfc4514_string() or '(empty)'}",
        f"  names:       {', '.join(names) if names else '(no subjectAltName)'}",
        f"  issuer:      {cert.issuer.rfc4514_string() or '(empty)'}",
        f"  valid:       {validity(cert, now)}",
        f"  key:         {key_description(cert.public_key())}",
        f"  serial:      {cert.serial_number:X}",
        f"  sha256:      {fingerprint(cert)}",
    ]


def describe_file(
    source: str,
    encoding: str,
    certs: Sequence[x509.Certificate],
    key: PrivateKey | None,
    now: datetime.datetime,
) -> list[str]:
    """The report: each certificate in chain order, then the ones off the chain, then the key.

    The key is described (type, whether it matches), never shown.
    """
    chain = order_chain(list(certs), key)
    others = [cert for cert in dict.fromkeys(certs) if cert not in chain]
    lines = [f"{source}: {len(certs)} certificate(s), {encoding}"]
    for index, cert in enumerate(chain, 1):
        role = "leaf" if index == 1 else "chain"
        lines.append(f"certificate {index} ({role}):")
        lines += describe_certificate(cert, now)
    for cert in others:
        lines.append("certificate (not on the leaf's chain):")
        lines += describe_certificate(cert, now)
    order = " -> ".join(describe_subject(cert) for cert in chain)
    same = list(certs)[: len(chain)] == chain
    note = "" if same else " (the file has another order; lbproxy reorders it when loading)"
    lines.append(f"chain order: {order}{note}")
    if key is not None:
        matches = "matches the leaf" if chain and key_matches(key, chain[0]) else "DOES NOT MATCH"
        lines.append(f"private key: {key_description(key.public_key())}, {matches}")
    return lines
