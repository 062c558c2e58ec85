"""Private keys: generation and writing to disk without ever exposing them.

Keys are created with mode 0600 and O_EXCL, so no other user can read them even for an instant
and an existing key is never overwritten by accident (``force`` replaces it atomically).
"""

from __future__ import annotations

import os
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

KEY_TYPES = ("rsa:2048", "rsa:3072", "rsa:4096", "ec:p256", "ec:p384")
DEFAULT_KEY_TYPE = "rsa:2048"  # widest compatibility (docs/architecture.md, "TLS")
_CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a new key; ``key_type`` is one of KEY_TYPES (ValueError otherwise)."""
    kind, _, size = key_type.partition(":")
    if key_type not in KEY_TYPES:
        raise ValueError(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))
    return ec.generate_private_key(_CURVES[size])


def key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when a password is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_secret_file(path: str, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600).

    Without ``force`` an existing file raises FileExistsError. With it, the new content goes to
    a private temporary file in the same folder that then replaces the old one in one rename.
    """
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lbproxy-", dir=folder)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_public_file(path: str, data: bytes, *, force: bool = False) -> None:
    """Write a certificate or CSR (0644), refusing to overwrite unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
