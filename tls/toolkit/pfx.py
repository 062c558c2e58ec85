"""PKCS#12 (``.pfx``/``.p12``) to key and ordered chain, as Windows Server and browsers export.

cryptography reads modern (AES/PBKDF2), 3DES and RC2-40 exports in-process; OpenSSL 3's CLI
refuses RC2-40 without ``-legacy``, which is why this exists instead of a copied command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tls.keys import PrivateKey
from tls.store import CertificateError, key_matches, order_chain

from .der import looks_like_pkcs12

# cryptography raises the same ValueError for both, so the message has to name both.
OPEN_FAILED = (
    "cannot open: wrong password, or the file is encrypted with an algorithm this system's "
    "OpenSSL has switched off (such as RC2-40 without the legacy provider)"
)


class PfxOpenError(CertificateError):
    """Wrong password or disabled algorithm: the caller may ask for a password and retry."""


@dataclass(frozen=True, slots=True)
class PfxContents:
    """``chain`` is leaf first towards the root; ``others`` were in the file but not on it."""

    key: PrivateKey | None
    chain: list[x509.Certificate]
    others: list[x509.Certificate]


def read_pfx(data: bytes, password: bytes | None, source: str) -> PfxContents:
    """Open a PKCS#12 file. ``password`` None or b"" both try the empty password.

    Raises CertificateError (one line, never the password) for non-PKCS#12 data, a wrong
    password, a key type lbproxy cannot serve or a key that matches none of the certificates.
    """
    if not looks_like_pkcs12(data):
        raise CertificateError(source, "not a PKCS#12 (.pfx/.p12) file")
    if password:
        # PKCS#12 passwords are text (BMPString); cryptography fails on other bytes with an
        # unrelated TypeError, so say what is wrong without quoting the value.
        try:
            password.decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateError(source, "the password is not valid UTF-8 text") from None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        if password:
            raise PfxOpenError(source, OPEN_FAILED) from None
        # OpenSSL encodes "no password" and "empty password" differently; exports use either.
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, b"")
        except ValueError:
            raise PfxOpenError(source, OPEN_FAILED) from None
    if key is not None and not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(source, "unsupported key type (lbproxy serves RSA and EC keys)")
    # A certificate-only file has no key to pair with, so the leaf may sit among `extra`.
    certs = ([cert] if cert is not None else []) + list(extra)
    chain = order_chain(certs, key)
    if key is not None and certs and not key_matches(key, chain[0]):
        raise CertificateError(source, "the private key matches none of the certificates")
    others = [c for c in certs if c not in chain]
    return PfxContents(key, chain, others)
