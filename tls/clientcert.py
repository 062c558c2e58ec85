"""Pound's ``X-SSL-*`` request headers: the TLS facts a real server may want.

Names and value formats follow Pound's ``add_ssl_headers`` (src/http.c): the cipher on every TLS
request; subject, issuer, validity, serial and the certificate itself only when the client
presented one. Pound prints names with ``X509_NAME_print_ex(..., XN_FLAG_ONELINE &
~ASN1_STRFLGS_ESC_MSB)``, dates with ``ASN1_TIME_print`` and the PEM with its line ends removed;
this module reproduces those formats from ``cryptography`` objects. One deliberate difference:
Pound prints the serial with ``ASN1_INTEGER_get``, which gives -1 for serials beyond 63 bits
(every modern CA issues those); here the serial is always the full decimal number.

Every value is a single line without CR, LF or NUL, safe to put in a header.
"""

from __future__ import annotations

import datetime
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

SUBJECT = b"X-SSL-Subject"
ISSUER = b"X-SSL-Issuer"
NOT_BEFORE = b"X-SSL-notBefore"
NOT_AFTER = b"X-SSL-notAfter"
SERIAL = b"X-SSL-serial"
CIPHER = b"X-SSL-cipher"  # Pound's spelling; header names compare case-insensitively
CERTIFICATE = b"X-SSL-certificate"

# Stripped from every client request before lbproxy adds its own: a client must never be able
# to claim a certificate it did not present.
CLIENT_HEADER_NAMES: frozenset[bytes] = frozenset(
    name.lower() for name in (SUBJECT, ISSUER, NOT_BEFORE, NOT_AFTER, SERIAL, CIPHER, CERTIFICATE)
)

# OpenSSL's short names (``OBJ_nid2sn``), which XN_FLAG_FN_SN prints; others print as the OID.
_SHORT_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "street",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.USER_ID: "UID",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    ObjectIdentifier("2.5.4.41"): "name",
    ObjectIdentifier("2.5.4.43"): "initials",
    ObjectIdentifier("2.5.4.13"): "description",
}

# RFC 2253 specials: with ASN1_STRFLGS_ESC_QUOTE OpenSSL quotes the whole value for these, but
# still puts a backslash before a quote or a backslash (checked against `openssl x509 -nameopt`).
_SPECIALS = frozenset(",+<>;")
_BACKSLASHED = frozenset('"\\')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _cipher_descriptions() -> dict[str, str]:
    """OpenSSL's ``SSL_CIPHER_description`` for every cipher it knows, by name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {c["name"]: c["description"].rstrip() for c in context.get_ciphers()}


_DESCRIPTIONS = _cipher_descriptions()


def _escape_value(value: str) -> str:
    """One attribute value as XN_FLAG_ONELINE without ESC_MSB prints it."""
    out: list[str] = []
    quote = False
    last = len(value) - 1
    for position, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            out.append(f"\\{code:02X}")  # ASN1_STRFLGS_ESC_CTRL
        elif char in _BACKSLASHED:
            out.append("\\" + char)
        elif (
            char in _SPECIALS
            or (position == 0 and char in " #")
            or (position == last and char == " ")
        ):
            quote = True
            out.append(char)
        else:
            out.append(char)  # non-ASCII stays UTF-8, as ~ASN1_STRFLGS_ESC_MSB asks
    text = "".join(out)
    return f'"{text}"' if quote else text


def format_name(name: x509.Name) -> str:
    """``C = US, O = Example, CN = www.example.com`` in certificate order, like OpenSSL."""
    rdns = []
    for rdn in name.rdns:
        parts = []
        for attribute in rdn:
            label = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value
            text = value if isinstance(value, str) else value.hex()
            parts.append(f"{label} = {_escape_value(text)}")
        rdns.append(" + ".join(parts))
    return ", ".join(rdns)


def format_time(moment: datetime.datetime) -> str:
    """``Feb  4 16:52:42 2012 GMT``: OpenSSL's ASN1_TIME_print."""
    utc = moment.astimezone(datetime.UTC) if moment.tzinfo else moment
    return (
        f"{_MONTHS[utc.month - 1]} {utc.day:2d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} {utc.year} GMT"
    )


def format_cipher(cipher: tuple[str, str, int], version: str | None = None) -> str:
    """``TLSv1.2/ECDHE-RSA-AES256-GCM-SHA384  TLSv1.2 Kx=ECDH ...``: version/description."""
    name, cipher_version, _bits = cipher
    description = _DESCRIPTIONS.get(name, name)
    return f"{version or cipher_version}/{description}"


def _pem_one_line(cert: x509.Certificate) -> str:
    """The PEM with its line ends dropped, as Pound concatenates the lines it reads back."""
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii").splitlines())


def _one_line(value: str) -> bytes:
    # The formats above cannot produce these; this is the guarantee, not the mechanism.
    data = value.encode("utf-8", "backslashreplace")
    for bad in (b"\r", b"\n", b"\x00"):
        data = data.replace(bad, b" ")
    return data.strip()


def client_headers(
    peer_der: bytes | None,
    cipher: tuple[str, str, int] | None,
    *,
    version: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """Pound's X-SSL-* headers for one TLS connection.

    ``peer_der`` is ``SSLObject.getpeercert(binary_form=True)`` (None: no client certificate),
    ``cipher`` is ``SSLObject.cipher()`` and ``version`` ``SSLObject.version()``, which Pound
    prints in front of the cipher; without it the cipher's own version is used. A certificate
    that cannot be parsed adds no certificate headers (OpenSSL already accepted it, so this
    only happens for oddities ``cryptography`` refuses).
    """
    headers: list[tuple[bytes, bytes]] = []
    if cipher is not None:
        headers.append((CIPHER, _one_line(format_cipher(cipher, version))))
    if peer_der is None:
        return headers
    try:
        cert = x509.load_der_x509_certificate(peer_der)
        values = [
            (SUBJECT, format_name(cert.subject)),
            (ISSUER, format_name(cert.issuer)),
            (NOT_BEFORE, format_time(cert.not_valid_before_utc)),
            (NOT_AFTER, format_time(cert.not_valid_after_utc)),
            (SERIAL, str(cert.serial_number)),
            (CERTIFICATE, _pem_one_line(cert)),
        ]
    except ValueError:
        return headers
    headers.extend((name, _one_line(value)) for name, value in values)
    return headers
