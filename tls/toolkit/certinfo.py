"""``lbproxy show-cert``: what an operator needs to know about a certificate file, as text."""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from tls.keys import PrivateKey
from tls.store import describe_subject, key_matches, order_chain

from .install import days_left

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

# OpenSSL's short names (``objects.txt``), as ``openssl x509 -noout -subject`` prints them.
_SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.STREET_ADDRESS: "street",
    NameOID.TITLE: "title",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.INITIALS: "initials",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.POSTAL_ADDRESS: "postalAddress",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName",
    NameOID.INN: "INN",
    NameOID.OGRN: "OGRN",
    NameOID.SNILS: "SNILS",
}
# RFC 2253 specials: a value holding one is quoted, as OpenSSL's default name format does.
_SPECIALS = frozenset(',+"\\<>;')


def _name_value(value: str | bytes) -> str:
    if isinstance(value, bytes):  # a BIT STRING (x500UniqueIdentifier): OpenSSL dumps it too
        return "#" + value.hex().upper()
    quoted = (
        any(char in _SPECIALS for char in value) or value[:1] in ("#", " ") or value[-1:] == " "
    )
    if quoted:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    # Control characters as \XX, like OpenSSL: a name must not move the terminal's cursor.
    value = "".join(
        f"\\{ord(char):02X}" if unicodedata.category(char) == "Cc" else char for char in value
    )
    return f'"{value}"' if quoted else value


def openssl_name(name: x509.Name) -> str:
    """A distinguished name as ``openssl x509 -noout -subject`` prints it (after ``subject=``):
    the order of the certificate, OpenSSL's short names (``emailAddress``, dotted numbers for
    unknown attributes), ``+`` inside a multi-valued RDN, values with specials quoted.

    One deliberate difference: non-ASCII text is shown as it is, where OpenSSL writes UTF-8
    bytes as ``\\XX``.
    """
    rdns = [
        " + ".join(
            f"{_SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)} = "
            f"{_name_value(attribute.value)}"
            for attribute in rdn
        )
        for rdn in name.rdns
    ]
    return ", ".join(rdns) or "(empty)"


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
        f"  subject:     {openssl_name(cert.subject)}",
        f"  names:       {', '.join(names) if names else '(no subjectAltName)'}",
        f"  issuer:      {openssl_name(cert.issuer)}",
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
    *,
    key_encrypted: bool = False,
) -> list[str]:
    """The report: each certificate in chain order, then the ones off the chain, then the key.

    The key is described (type, whether it matches), never shown; an encrypted one is only
    said to be there (describing the certificates needs no password).
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
    elif key_encrypted:
        lines.append("private key: encrypted (not read; a TLS bind needs it unencrypted)")
    return lines
