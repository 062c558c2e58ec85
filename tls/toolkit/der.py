"""Reading certificates whatever their encoding: PEM, DER, PKCS#7 (``.p7b``), sniffed by content.

Windows and CAs hand out ``.cer`` files that are DER or PEM under the same name, and chains as
PKCS#7; the extension says nothing reliable, so only the bytes decide.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from tls.keys import PrivateKey
from tls.store import CertificateError, is_encrypted_key_block, parse_pem_bundle, pem_blocks

_PKCS7_LABELS = (b"PKCS7", b"CERTIFICATE CHAIN")  # the second is an old Netscape spelling
_DER_SEQUENCE = 0x30
_PKCS12_VERSION = b"\x02\x01\x03"  # PFX ::= SEQUENCE { version INTEGER {v3(3)}, ... }


@dataclass(frozen=True, slots=True)
class CertificateFile:
    """What a certificate file holds; ``encoding`` says how it was read, for messages."""

    certificates: list[x509.Certificate]
    key: PrivateKey | None
    encoding: str  # "PEM" | "DER" | "PKCS#7 (DER)"
    key_encrypted: bool = False  # an encrypted PEM key was there; left unread (``key`` is None)


def _load_pkcs7(
    loader: Callable[[bytes], list[x509.Certificate]], data: bytes
) -> list[x509.Certificate]:
    # `openssl crl2pkcs7` and Windows write certificate SETs unsorted (BER, not DER);
    # cryptography then falls back to BER with a UserWarning that would reach the operator's
    # terminal as a multi-line Python warning. The fallback is what we want, the noise is not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return loader(data)


def _content_offset(data: bytes) -> int | None:
    """Where the content of the outer DER/BER SEQUENCE starts, or None when there is none."""
    if len(data) < 2 or data[0] != _DER_SEQUENCE:
        return None
    first = data[1]
    if first < 0x80:
        return 2
    count = first & 0x7F  # 0 = BER indefinite length, which some Windows exports use
    if count > 4:
        return None
    return 2 + count


def looks_like_pkcs12(data: bytes) -> bool:
    """Whether ``data`` starts like a PKCS#12 PFX (an outer SEQUENCE whose version is 3)."""
    offset = _content_offset(data)
    return offset is not None and data[offset : offset + 3] == _PKCS12_VERSION


def _read_pem(data: bytes, source: str) -> CertificateFile:
    certs: list[x509.Certificate] = []
    key: PrivateKey | None = None
    key_encrypted = False
    for label, block in pem_blocks(data):
        if is_encrypted_key_block(label, block):
            # Describing or converting certificates needs no password; only the key would.
            if key is not None or key_encrypted:
                raise CertificateError(source, "more than one private key in the file")
            key_encrypted = True
            continue
        if label in _PKCS7_LABELS:
            try:
                certs.extend(_load_pkcs7(pkcs7.load_pem_pkcs7_certificates, block))
            except ValueError:
                raise CertificateError(source, "the PKCS#7 block is damaged") from None
            continue
        block_key, block_certs = parse_pem_bundle(block, source)
        if block_key is not None:
            if key is not None or key_encrypted:
                raise CertificateError(source, "more than one private key in the file")
            key = block_key
        certs.extend(block_certs)
    return CertificateFile(certs, key, "PEM", key_encrypted)


def read_certificate_file(data: bytes, source: str) -> CertificateFile:
    """Certificates (and a PEM key, if any) from PEM, DER or PKCS#7 bytes.

    PKCS#12 needs a password and is refused here with a pointer to ``tls.toolkit.pfx``; anything
    else unrecognised, or a file without any certificate, raises CertificateError.
    """
    if pem_blocks(data):
        result = _read_pem(data, source)
    elif looks_like_pkcs12(data):
        raise CertificateError(source, "is a PKCS#12 (.pfx/.p12) file; it needs its password")
    else:
        result = _read_der(data, source)
    if not result.certificates:
        raise CertificateError(source, "holds no certificate")
    return result


def _read_der(data: bytes, source: str) -> CertificateFile:
    try:
        return CertificateFile([x509.load_der_x509_certificate(data)], None, "DER")
    except ValueError:
        pass
    try:
        certs = _load_pkcs7(pkcs7.load_der_pkcs7_certificates, data)
        return CertificateFile(certs, None, "PKCS#7 (DER)")
    except ValueError:
        pass
    raise CertificateError(source, "not a certificate: neither PEM, DER nor PKCS#7")
