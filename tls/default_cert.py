"""The self-signed certificate a TLS bind serves when the operator configured none.

Made on first start under the state directory and reused afterwards, so clients that pinned or
accepted it once keep seeing the same one; remade only when it expired or cannot be used.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .certificate import LoadedCertificate
from .keys import DEFAULT_KEY_TYPE, generate_key, key_pem, write_public_file, write_secret_file
from .selfsigned import make_self_signed

CERT_FILE = "default-cert.pem"
KEY_FILE = "default-key.pem"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
# Remake a day before expiry rather than serve a certificate that dies during this run's first day.
RENEW_BEFORE = datetime.timedelta(days=1)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _loaded(cert: x509.Certificate, key_bytes: bytes, source: str) -> LoadedCertificate:
    return LoadedCertificate(
        source=source,
        chain_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_bytes,
        names=_dns_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        default=True,
    )


def _existing(
    cert_path: str, key_path: str, now: datetime.datetime
) -> tuple[LoadedCertificate | None, str]:
    """The stored certificate if it can still be served, else None and why not."""
    try:
        with open(cert_path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        with open(key_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except FileNotFoundError:
        return None, "none yet"
    except (OSError, ValueError, TypeError) as exc:
        return None, f"unusable ({type(exc).__name__})"
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return None, "unsupported key type"
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return None, "key does not match the certificate"
    if cert.not_valid_after_utc - RENEW_BEFORE <= _utc(now):
        return None, "expired"
    return _loaded(cert, key_pem(key), cert_path), "reused"


def ensure_default_certificate(
    state_dir: str,
    *,
    names: Sequence[str] = DEFAULT_NAMES,
    now: datetime.datetime,
    log: logging.Logger,
) -> LoadedCertificate:
    """The stored self-signed certificate, made (or remade) when missing or expired.

    ``state_dir`` is created 0700; the key is written 0600 and never logged. OSError when the
    state directory cannot be written; the caller turns it into a one-line message.
    """
    if not names:
        raise ValueError("a default certificate needs at least one name")
    try:
        loaded = _ensure(state_dir, names, now, log)
    except OSError as exc:
        # One line for the operator, without errno noise; still an OSError for the caller.
        reason = exc.strerror or str(exc)
        raise OSError(
            f"state_dir {state_dir}: cannot store the default certificate: {reason}"
        ) from None
    log.warning(
        "TLS is using the self-signed certificate %s (valid until %s); clients will not trust "
        "it. Replace it with `tls: {certificate: FILE}` on the bind, or request one with "
        "`lbproxy csr`",
        loaded.source,
        loaded.not_after.date().isoformat(),
    )
    return loaded


def _ensure(
    state_dir: str, names: Sequence[str], now: datetime.datetime, log: logging.Logger
) -> LoadedCertificate:
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)  # makedirs' mode is filtered through the umask
    cert_path = os.path.join(state_dir, CERT_FILE)
    key_path = os.path.join(state_dir, KEY_FILE)
    loaded, why = _existing(cert_path, key_path, now)
    if loaded is None:
        if why != "none yet":
            log.warning("default TLS certificate %s is %s: making a new one", cert_path, why)
        key = generate_key(DEFAULT_KEY_TYPE)
        cert = make_self_signed(key, names[0], names[1:], now=_utc(now))
        secret = key_pem(key)
        # Key first: a certificate on disk without its key would be useless at the next start.
        write_secret_file(key_path, secret, force=True)
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), force=True)
        loaded = _loaded(cert, secret, cert_path)
    return loaded
