"""Loading the certificates a TLS bind serves: PEM bundles, sidecar keys, chains, expiry.

Pure apart from reading the files it is asked to read. Everything that can be wrong with a
certificate file ends as a CertificateError whose text is one line naming the file and the cause,
so ``lbproxy check`` and start-up can print it as it is. Key material never enters a message.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from config.model import CertificateSpec

from .certificate import LoadedCertificate
from .keys import PrivateKey, key_pem
from .status import as_utc

# HAProxy `crt <dir>` skips these sidecar files (and dot-files) when it loads a directory.
SIDECAR_SUFFIXES = (".key", ".issuer", ".ocsp", ".sctl")
# Extensions after which a sidecar key may also be `<stem>.key` (Pound/nginx habit: site.crt +
# site.key), besides HAProxy's `<file>.key`.
STEM_KEY_SUFFIXES = (".pem", ".crt")
# A certificate file is a few KiB; a chain with a dozen certificates stays far below this. The
# cap keeps a mistaken `crt: /var/log/huge.log` from being read into memory whole.
MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
# Parameters HAProxy accepts inside a bundle; lbproxy uses its own groups, so they are skipped.
_IGNORED_LABELS = (b"DH PARAMETERS", b"EC PARAMETERS", b"X9.42 DH PARAMETERS")


class CertificateError(Exception):
    """A certificate file that cannot be served; ``str()`` is one line: ``<file>: <cause>``."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause


class EncryptedKeyError(CertificateError):
    """The key is encrypted and no password was given: the caller may ask for one and retry."""


ENCRYPTED_KEY = (
    "the private key is encrypted; lbproxy needs it unencrypted "
    "(`lbproxy install-cert --key-password-file FILE` writes it so)"
)


def is_encrypted_key_block(label: bytes, block: bytes) -> bool:
    """PKCS#8 ``ENCRYPTED PRIVATE KEY``, or a legacy PEM key with ``Proc-Type: 4,ENCRYPTED``."""
    return label == b"ENCRYPTED PRIVATE KEY" or (
        label in _KEY_LABELS and b"Proc-Type: 4,ENCRYPTED" in block
    )


def _load_key_block(
    block: bytes, label: bytes, source: str, password: bytes | None = None
) -> PrivateKey:
    encrypted = is_encrypted_key_block(label, block)
    if encrypted and password is None:
        raise EncryptedKeyError(source, ENCRYPTED_KEY)
    try:
        key = serialization.load_pem_private_key(block, password if encrypted else None)
    except TypeError:  # cryptography's way of saying "encrypted, no password given"
        raise EncryptedKeyError(source, ENCRYPTED_KEY) from None
    except (ValueError, UnsupportedAlgorithm):
        if encrypted:
            raise CertificateError(
                source, "cannot decrypt the private key: wrong password, or the key is damaged"
            ) from None
        raise CertificateError(source, f"the {label.decode()} block is damaged") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise CertificateError(source, f"unsupported key type {kind} (lbproxy serves RSA and EC)")
    return key


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(label, whole block)`` for each PEM block, in file order; text between is skipped."""
    return [(match.group(1), match.group(0)) for match in _PEM_BLOCK.finditer(data)]


def parse_pem_bundle(
    data: bytes, source: str, *, key_password: bytes | None = None
) -> tuple[PrivateKey | None, list[x509.Certificate]]:
    """The key (if any) and the certificates of a PEM file, in file order.

    Blocks may come in any order; text between them (``Bag Attributes`` from ``openssl pkcs12``,
    comments) is ignored. Keys are PKCS#8, PKCS#1 or SEC1; an encrypted one needs
    ``key_password`` (else EncryptedKeyError). More than one key, a wrong password, a damaged
    block or a file with no PEM block at all raise CertificateError.
    """
    key: PrivateKey | None = None
    certs: list[x509.Certificate] = []
    blocks = pem_blocks(data)
    if not blocks:
        if data[:1] == b"\x30":
            raise CertificateError(
                source, "not PEM (looks like DER); convert it with `lbproxy convert-cer`"
            )
        raise CertificateError(source, "no PEM block found (expected -----BEGIN CERTIFICATE-----)")
    for label, block in blocks:
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise CertificateError(
                    source, f"certificate {len(certs) + 1} in the file is damaged"
                ) from None
        elif label in _KEY_LABELS or label == b"ENCRYPTED PRIVATE KEY":
            if key is not None:
                raise CertificateError(source, "more than one private key in the file")
            key = _load_key_block(block, label, source, key_password)
        elif label in _IGNORED_LABELS:
            continue
        elif label == b"CERTIFICATE REQUEST":
            raise CertificateError(
                source, "holds a certificate signing request, not a signed certificate"
            )
        else:
            raise CertificateError(source, f"unexpected PEM block {label.decode()!r}")
    return key, certs


def key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies ``key``: equal public keys (loaders never check this)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        cert_public = cert.public_key().public_bytes(*spki)
    except UnsupportedAlgorithm:
        return False
    return key.public_key().public_bytes(*spki) == cert_public


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert``: names chain and the signature verifies."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    result = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            result.append(cert)
    return result


def _pick_leaf(certs: list[x509.Certificate], key: PrivateKey | None) -> x509.Certificate:
    if key is not None:
        for cert in certs:
            if key_matches(key, cert):
                return cert
    issued_nothing = [
        cert
        for cert in certs
        if not any(other is not cert and issued_by(other, cert) for other in certs)
    ]
    candidates = issued_nothing or certs
    # Several certificates issued nothing when unrelated ones are mixed in: an end-entity
    # certificate beats a CA (a stray root is no leaf), then the one whose issuers are present
    # (the stranger has none), then file order.
    return max(
        candidates,
        key=lambda cert: (not _is_ca(cert), len(_walk(cert, certs)), -candidates.index(cert)),
    )


def _walk(leaf: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
    chain = [leaf]
    remaining = [cert for cert in pool if cert is not leaf]
    while remaining and not is_self_signed(chain[-1]):
        issuer = next((cert for cert in remaining if issued_by(chain[-1], cert)), None)
        if issuer is None:
            break
        chain.append(issuer)
        remaining.remove(issuer)
    return chain


def order_chain(
    certs: list[x509.Certificate], key: PrivateKey | None = None
) -> list[x509.Certificate]:
    """Leaf first, then each issuer in turn; certificates not on that path are left out.

    The leaf is the certificate matching ``key`` when one does, else one that issued none of
    the others. Duplicates are dropped. An empty list gives an empty list.
    """
    pool = _unique(certs)
    if not pool:
        return []
    return _walk(_pick_leaf(pool, key), pool)


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """Lower-cased SAN DNS names; the CN only when there is no SAN DNS entry (RFC 6125)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if not dns:
        dns = [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(name.lower() for name in dns))


def describe_subject(cert: x509.Certificate) -> str:
    """A short name for messages: the CN, else the first DNS name, else the whole subject."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    names = certificate_names(cert)
    return names[0] if names else cert.subject.rfc4514_string() or "(empty subject)"


def read_certificate_file(path: str) -> bytes:
    """The bytes of a PEM file, size-capped; CertificateError when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CERTIFICATE_FILE_BYTES + 1)
    except IsADirectoryError:
        raise CertificateError(path, "is a directory, not a certificate file") from None
    except OSError as error:
        raise CertificateError(path, f"cannot read: {error.strerror or error}") from None
    if len(data) > MAX_CERTIFICATE_FILE_BYTES:
        raise CertificateError(
            path, f"larger than {MAX_CERTIFICATE_FILE_BYTES} bytes; not a certificate file"
        )
    return data


def sidecar_key_paths(path: str) -> list[str]:
    """Where a certificate's separate key may live: ``<file>.key``, then ``<stem>.key``."""
    paths = [path + ".key"]
    stem, ext = os.path.splitext(path)
    if ext.lower() in STEM_KEY_SUFFIXES:
        paths.append(stem + ".key")
    return paths


def _find_sidecar_key(path: str) -> PrivateKey:
    for candidate in sidecar_key_paths(path):
        if not os.path.exists(candidate):
            continue
        key, _ = parse_pem_bundle(read_certificate_file(candidate), candidate)
        if key is None:
            raise CertificateError(candidate, "holds no private key")
        return key
    wanted = " or ".join(os.path.basename(p) for p in sidecar_key_paths(path))
    raise CertificateError(path, f"no private key in the file and no {wanted} beside it")


def check_validity(cert: x509.Certificate, source: str, now: datetime.datetime) -> None:
    """CertificateError when ``cert`` is expired or not yet valid at ``now``."""
    now = as_utc(now)
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            source,
            f"certificate {describe_subject(cert)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            source,
            f"certificate {describe_subject(cert)} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        )


def chain_pem(chain: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def load_key_and_chain(path: str) -> tuple[PrivateKey, list[x509.Certificate]]:
    """The key and the chain (leaf first) of a PEM bundle or a leaf with a sidecar key; the key
    must match the leaf. Raises CertificateError."""
    key, certs = parse_pem_bundle(read_certificate_file(path), path)
    if not certs:
        raise CertificateError(path, "no certificate in the file")
    if key is None:
        key = _find_sidecar_key(path)
    chain = order_chain(certs, key)
    if not key_matches(key, chain[0]):
        raise CertificateError(
            path, f"the private key does not match the certificate {describe_subject(chain[0])}"
        )
    return key, chain


def load_certificate_file(path: str, *, default: bool = False) -> LoadedCertificate:
    """One servable certificate from ``path``: PEM bundle, or leaf(+chain) with a sidecar key.

    The key must match the leaf; the chain is reordered leaf → root and certificates that are
    not part of it are dropped. Raises CertificateError. An expired or not yet valid leaf is
    loaded all the same; ``tls.status.expiry_warnings`` is what tells the operator.
    """
    key, chain = load_key_and_chain(path)
    names = certificate_names(chain[0])
    if not names:
        raise CertificateError(path, "the certificate names no host (no SAN DNS name and no CN)")
    return LoadedCertificate(
        source=path,
        chain_pem=chain_pem(chain),
        key_pem=key_pem(key),
        names=names,
        not_before=chain[0].not_valid_before_utc,
        not_after=chain[0].not_valid_after_utc,
        default=default,
        subject=describe_subject(chain[0]),
    )


def directory_files(path: str) -> list[str]:
    """The certificate files of a directory as HAProxy's ``crt <dir>`` reads them.

    Alphabetical; dot-files, sidecars (SIDECAR_SUFFIXES) and anything that is not a regular
    file are skipped. An unreadable or empty directory raises CertificateError.
    """
    try:
        entries = sorted(os.listdir(path))
    except OSError as error:
        raise CertificateError(path, f"cannot list: {error.strerror or error}") from None
    files = [
        os.path.join(path, name)
        for name in entries
        if not name.startswith(".")
        and not name.lower().endswith(SIDECAR_SUFFIXES)
        and os.path.isfile(os.path.join(path, name))
    ]
    if not files:
        raise CertificateError(path, "the directory holds no certificate file")
    return files


def load_certificates(
    specs: Sequence[CertificateSpec], *, now: datetime.datetime | None = None
) -> list[LoadedCertificate]:
    """Every certificate of a TLS bind, in configuration order (directories expanded).

    Dates never stop loading, so ``now`` is not consulted; it is accepted because callers that
    predate that pass it.

    A directory marked ``default`` makes its first file the default. The first bad file stops
    loading with its CertificateError: a bind never starts with part of its certificates.
    """
    loaded: list[LoadedCertificate] = []
    for spec in specs:
        if os.path.isdir(spec.path):
            for index, file in enumerate(directory_files(spec.path)):
                loaded.append(load_certificate_file(file, default=spec.default and index == 0))
        else:
            loaded.append(load_certificate_file(spec.path, default=spec.default))
    return loaded
