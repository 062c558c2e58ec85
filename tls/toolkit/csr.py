"""Certificate signing requests: the subject an operator types, checked, signed with SHA-256.

Browsers ignore the CN, so the CN always goes into subjectAltName as well. Upper bounds come
from RFC 5280 appendix A (ub-common-name 64, ub-locality-name 128, ...); a CA rejects longer
values anyway, better to say so before the request leaves the machine.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from tls.keys import PrivateKey
from tls.selfsigned import san_entry

MAX_COMMON_NAME = 64  # RFC 5280 ub-common-name
MAX_ORGANIZATION = 64  # ub-organization-name
MAX_ORGANIZATIONAL_UNIT = 64  # ub-organizational-unit-name
MAX_LOCALITY = 128  # ub-locality-name
MAX_STATE = 128  # ub-state-name
MAX_EMAIL = 255  # ub-emailaddress-length
MAX_DNS_NAME = 253  # RFC 1035: 255 octets on the wire, 253 as text
MAX_DNS_LABEL = 63  # RFC 1035 section 2.3.4

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.IGNORECASE)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class SubjectFields:
    """The distinguished name of a request; empty strings mean "leave out"."""

    common_name: str
    country: str = ""
    state: str = ""
    locality: str = ""
    organization: str = ""
    organizational_unit: str = ""
    email: str = ""


def _check_text(option: str, value: str, limit: int) -> None:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"{option}: control characters are not allowed")
    if len(value) > limit:
        raise ValueError(f"{option}: longer than {limit} characters")
    if value != value.strip():
        raise ValueError(f"{option}: leading or trailing spaces")


def normalise_host(option: str, name: str) -> str:
    """A SAN value: an IP address as it is, a DNS name in ASCII (IDNA), wildcard first only."""
    _check_text(option, name, MAX_DNS_NAME)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"{option}: {name!r} is not a valid host name") from None
    labels = ascii_name.rstrip(".").split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise ValueError(f"{option}: a wildcard needs at least two labels after '*.'")
    for label in labels:
        if len(label) > MAX_DNS_LABEL or not _LABEL.match(label):
            raise ValueError(f"{option}: {name!r} is not a valid host name")
    if len(ascii_name) > MAX_DNS_NAME:
        raise ValueError(f"{option}: longer than {MAX_DNS_NAME} characters")
    return ascii_name.rstrip(".").lower()


def validate_subject(fields: SubjectFields) -> SubjectFields:
    """The fields checked and normalised (country upper-cased, an international CN as its
    A-label); ValueError names the option."""
    if not fields.common_name:
        raise ValueError("--cn: the common name is required")
    # The CN goes into the SAN, so it must fit there. An international name goes into both as
    # its A-label (xn--...): the name clients compare, and the same bytes in both places.
    _check_text("--cn", fields.common_name, MAX_COMMON_NAME)
    host = normalise_host("--cn", fields.common_name)
    common_name = fields.common_name if fields.common_name.isascii() else host
    if len(common_name) > MAX_COMMON_NAME:
        raise ValueError(f"--cn: its A-label {common_name} is longer than {MAX_COMMON_NAME}")
    for option, value, limit in (
        ("--state", fields.state, MAX_STATE),
        ("--locality", fields.locality, MAX_LOCALITY),
        ("--org", fields.organization, MAX_ORGANIZATION),
        ("--ou", fields.organizational_unit, MAX_ORGANIZATIONAL_UNIT),
        ("--email", fields.email, MAX_EMAIL),
        ("--country", fields.country, MAX_COMMON_NAME),  # the two-letter rule follows
    ):
        _check_text(option, value, limit)
    country = fields.country.upper()
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise ValueError(f"--country: must be two letters (ISO 3166), got {fields.country!r}")
    if fields.email and not (fields.email.isascii() and _EMAIL.match(fields.email)):
        raise ValueError(f"--email: {fields.email!r} is not an e-mail address")
    return SubjectFields(
        common_name=common_name,
        country=country,
        state=fields.state,
        locality=fields.locality,
        organization=fields.organization,
        organizational_unit=fields.organizational_unit,
        email=fields.email,
    )


def subject_name(fields: SubjectFields) -> x509.Name:
    """C, ST, L, O, OU, CN, emailAddress in the order ``openssl req`` writes them."""
    pairs = (
        (NameOID.COUNTRY_NAME, fields.country),
        (NameOID.STATE_OR_PROVINCE_NAME, fields.state),
        (NameOID.LOCALITY_NAME, fields.locality),
        (NameOID.ORGANIZATION_NAME, fields.organization),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, fields.organizational_unit),
        (NameOID.COMMON_NAME, fields.common_name),
        (NameOID.EMAIL_ADDRESS, fields.email),
    )
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs if value])


def request_names(common_name: str, sans: Sequence[str]) -> list[str]:
    """The subjectAltName values: the CN first, then the others, normalised, without repeats."""
    names = [normalise_host("--cn", common_name)]
    names += [normalise_host("--san", name) for name in sans]
    return list(dict.fromkeys(names))


def build_csr(
    key: PrivateKey, fields: SubjectFields, sans: Sequence[str] = ()
) -> x509.CertificateSigningRequest:
    """A SHA-256 request for ``fields`` whose SAN holds the CN and ``sans`` (ValueError if bad)."""
    fields = validate_subject(fields)
    names = request_names(fields.common_name, sans)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(fields))
        .add_extension(x509.SubjectAlternativeName([san_entry(n) for n in names]), critical=False)
    )
    return builder.sign(key, hashes.SHA256())
