"""Certificate loading: bundles in any order, sidecar keys, chain order, expiry, directories."""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from config.model import CertificateSpec
from tests.tls.certs import self_signed
from tls.keys import generate_key, key_pem
from tls.store import (
    CertificateError,
    EncryptedKeyError,
    certificate_names,
    directory_files,
    key_matches,
    load_certificate_file,
    load_certificates,
    order_chain,
    parse_pem_bundle,
)

NOW = datetime.datetime.now(datetime.UTC)
ROOT = trustme.CA()
INTERMEDIATE = ROOT.create_child_ca()
LEAF = INTERMEDIATE.issue_cert("www.example.com", "Example.ORG", "*.example.net")
OTHER = ROOT.issue_cert("other.example.com")

LEAF_PEM = LEAF.cert_chain_pems[0].bytes()
INTER_PEM = LEAF.cert_chain_pems[1].bytes()
ROOT_PEM = ROOT.cert_pem.bytes()
KEY_PEM = LEAF.private_key_pem.bytes()
OTHER_PEM = OTHER.cert_chain_pems[0].bytes()
OTHER_KEY_PEM = OTHER.private_key_pem.bytes()


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def subjects(certs: list[x509.Certificate]) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.PEM) for c in certs]


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def cn_only_cert(cn: str) -> tuple[bytes, bytes]:
    """A self-signed certificate without subjectAltName (trustme always adds one)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    built, key = self_signed(name, not_before=NOW - datetime.timedelta(days=1), days=31)
    return built.public_bytes(serialization.Encoding.PEM), key_pem(key)


# --- parse_pem_bundle -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        [LEAF_PEM, INTER_PEM, KEY_PEM],
        [KEY_PEM, LEAF_PEM, INTER_PEM],
        [INTER_PEM, KEY_PEM, LEAF_PEM],
        [b"Bag Attributes\n    localKeyID: 01\n", KEY_PEM, b"subject=/CN=x\n", LEAF_PEM],
    ],
    ids=["cert-chain-key", "key-first", "key-middle", "text-between"],
)
def test_parse_pem_bundle_any_order(parts: list[bytes]) -> None:
    key, certs = parse_pem_bundle(b"".join(parts), "bundle.pem")
    assert key is not None
    assert key_matches(key, cert(LEAF_PEM))
    assert cert(LEAF_PEM) in certs


def _pkcs1_rsa_key() -> bytes:
    return generate_key("rsa:2048").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _sec1_ec_key() -> bytes:
    return generate_key("ec:p256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("pem", "label"),
    [
        (key_pem(generate_key("ec:p256")), b"BEGIN PRIVATE KEY"),
        (_pkcs1_rsa_key(), b"BEGIN RSA PRIVATE KEY"),
        (_sec1_ec_key(), b"BEGIN EC PRIVATE KEY"),
    ],
    ids=["pkcs8", "pkcs1", "sec1"],
)
def test_parse_pem_bundle_key_formats(pem: bytes, label: bytes) -> None:
    assert label in pem
    key, certs = parse_pem_bundle(pem, "k.pem")
    assert key is not None
    assert certs == []


def _encrypted_pkcs8() -> bytes:
    return key_pem(generate_key("ec:p256"), password=b"pw")


def _encrypted_pkcs1() -> bytes:
    return generate_key("rsa:2048").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )


def _ed25519_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize("encrypted", [_encrypted_pkcs8, _encrypted_pkcs1], ids=["pkcs8", "pkcs1"])
def test_encrypted_key_with_its_password(encrypted: Callable[[], bytes]) -> None:
    pem = encrypted()
    with pytest.raises(EncryptedKeyError, match=r"k\.pem: the private key is encrypted"):
        parse_pem_bundle(pem, "k.pem")
    key, _ = parse_pem_bundle(pem, "k.pem", key_password=b"pw")
    assert key is not None
    with pytest.raises(CertificateError) as caught:
        parse_pem_bundle(pem, "k.pem", key_password=b"wrong")
    assert str(caught.value) == (
        "k.pem: cannot decrypt the private key: wrong password, or the key is damaged"
    )
    # A password for a key that needs none changes nothing.
    assert parse_pem_bundle(KEY_PEM, "k.pem", key_password=b"pw")[0] is not None


DAMAGED_CERT = LEAF_PEM.replace(LEAF_PEM[40:60], b"A" * 20)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"hello world\n", "no PEM block found"),
        (b"", "no PEM block found"),
        (cert(LEAF_PEM).public_bytes(serialization.Encoding.DER), "looks like DER"),
        (_encrypted_pkcs8() + LEAF_PEM, "encrypted"),
        (_encrypted_pkcs1() + LEAF_PEM, "encrypted"),
        (KEY_PEM + KEY_PEM + LEAF_PEM, "more than one private key"),
        (DAMAGED_CERT, "damaged"),
        (_ed25519_key() + LEAF_PEM, "unsupported key type"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "signing request",
        ),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "unexpected PEM block"),
    ],
    ids=[
        "text",
        "empty",
        "der",
        "encrypted-pkcs8",
        "encrypted-pkcs1",
        "two-keys",
        "damaged-cert",
        "ed25519",
        "csr",
        "crl",
    ],
)
def test_parse_pem_bundle_errors(data: bytes, cause: str) -> None:
    with pytest.raises(CertificateError) as caught:
        parse_pem_bundle(data, "/etc/lbproxy/site.pem")
    message = str(caught.value)
    assert message.startswith("/etc/lbproxy/site.pem: ")
    assert cause in message
    assert "\n" not in message


def test_parse_pem_bundle_skips_dh_parameters() -> None:
    params = b"-----BEGIN DH PARAMETERS-----\nMAA=\n-----END DH PARAMETERS-----\n"
    key, certs = parse_pem_bundle(LEAF_PEM + params + KEY_PEM, "b.pem")
    assert key is not None
    assert len(certs) == 1


# --- order_chain and key_matches --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "with_key", "expected"),
    [
        ([LEAF_PEM, INTER_PEM, ROOT_PEM], False, [LEAF_PEM, INTER_PEM, ROOT_PEM]),
        ([ROOT_PEM, INTER_PEM, LEAF_PEM], False, [LEAF_PEM, INTER_PEM, ROOT_PEM]),
        ([INTER_PEM, ROOT_PEM, LEAF_PEM], True, [LEAF_PEM, INTER_PEM, ROOT_PEM]),
        ([INTER_PEM, LEAF_PEM], False, [LEAF_PEM, INTER_PEM]),
        ([ROOT_PEM, LEAF_PEM], True, [LEAF_PEM]),  # the intermediate is missing: root left out
        ([OTHER_PEM, INTER_PEM, LEAF_PEM], True, [LEAF_PEM, INTER_PEM]),  # stranger left out
        ([OTHER_PEM, INTER_PEM, LEAF_PEM], False, [LEAF_PEM, INTER_PEM]),  # longest chain wins
        ([ROOT_PEM, OTHER_PEM], False, [OTHER_PEM, ROOT_PEM]),  # a root is never the leaf
        ([LEAF_PEM, LEAF_PEM, INTER_PEM], False, [LEAF_PEM, INTER_PEM]),  # duplicate dropped
        ([LEAF_PEM], False, [LEAF_PEM]),
        ([], False, []),
    ],
    ids=[
        "in-order",
        "reversed",
        "shuffled-with-key",
        "no-root",
        "missing-intermediate",
        "stranger",
        "stranger-without-key",
        "root-first",
        "duplicate",
        "leaf-only",
        "empty",
    ],
)
def test_order_chain(given: list[bytes], with_key: bool, expected: list[bytes]) -> None:
    key = parse_pem_bundle(KEY_PEM, "k")[0] if with_key else None
    ordered = order_chain([cert(p) for p in given], key)
    assert subjects(ordered) == [cert(p).public_bytes(serialization.Encoding.PEM) for p in expected]


def test_order_chain_key_picks_the_leaf_among_two_leaves() -> None:
    key = parse_pem_bundle(OTHER_KEY_PEM, "k")[0]
    ordered = order_chain([cert(LEAF_PEM), cert(INTER_PEM), cert(OTHER_PEM), cert(ROOT_PEM)], key)
    assert ordered == [cert(OTHER_PEM), cert(ROOT_PEM)]


@pytest.mark.parametrize(
    ("key", "pem", "expected"),
    [(KEY_PEM, LEAF_PEM, True), (OTHER_KEY_PEM, LEAF_PEM, False), (KEY_PEM, INTER_PEM, False)],
)
def test_key_matches(key: bytes, pem: bytes, expected: bool) -> None:
    private = parse_pem_bundle(key, "k")[0]
    assert private is not None
    assert key_matches(private, cert(pem)) is expected


def test_certificate_names_san_lowercased_and_cn_fallback() -> None:
    assert certificate_names(cert(LEAF_PEM)) == ("www.example.com", "example.org", "*.example.net")
    assert certificate_names(cert(cn_only_cert("Legacy.Example.COM")[0])) == ("legacy.example.com",)


# --- load_certificate_file --------------------------------------------------------------------


def test_load_bundle_orders_chain_and_normalises_key(tmp_path: Path) -> None:
    path = write(tmp_path, "site.pem", ROOT_PEM + KEY_PEM + INTER_PEM + LEAF_PEM)
    loaded = load_certificate_file(path, default=True)
    assert loaded.source == path
    assert loaded.default is True
    assert loaded.chain_pem == LEAF_PEM + INTER_PEM + ROOT_PEM
    assert loaded.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert loaded.names == ("www.example.com", "example.org", "*.example.net")
    assert loaded.not_before <= NOW <= loaded.not_after


@pytest.mark.parametrize(
    ("cert_name", "key_name"),
    [("site.pem", "site.pem.key"), ("site.pem", "site.key"), ("site.crt", "site.key")],
)
def test_load_with_sidecar_key(tmp_path: Path, cert_name: str, key_name: str) -> None:
    path = write(tmp_path, cert_name, LEAF_PEM + INTER_PEM)
    write(tmp_path, key_name, KEY_PEM)
    loaded = load_certificate_file(path)
    assert loaded.chain_pem == LEAF_PEM + INTER_PEM
    assert parse_pem_bundle(loaded.key_pem, "k")[0] is not None


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A complete TLS handshake in memory (no I/O to bound): pump bytes until both are done."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname="www.example.com")
    done: set[str] = set()
    for _ in range(10):  # TLS 1.3 needs two round trips; 10 leaves room and cannot spin
        for name, side in (("client", client), ("server", server)):
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if done == {"client", "server"}:
            return client
    raise AssertionError("handshake did not finish")


def test_loaded_certificate_serves_a_verified_handshake(tmp_path: Path) -> None:
    """ssl takes chain and key as they are, and a client trusting only the root verifies it:
    the reordered chain carries the intermediate."""
    path = write(tmp_path, "site.pem", KEY_PEM + INTER_PEM + LEAF_PEM)
    loaded = load_certificate_file(path)
    write(tmp_path, "chain.pem", loaded.chain_pem)
    write(tmp_path, "key.pem", loaded.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"))
    client_ctx = ssl.create_default_context(cadata=ROOT_PEM.decode())
    client = _handshake(server_ctx, client_ctx)
    assert client.getpeercert(binary_form=True) == cert(LEAF_PEM).public_bytes(
        serialization.Encoding.DER
    )


def _load_error(path: str) -> str:
    with pytest.raises(CertificateError) as caught:
        load_certificate_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(path + ": ") or message.startswith(path + ".key: ")
    return message


DAY = datetime.timedelta(days=1)


@pytest.mark.parametrize(
    ("files", "cause"),
    [
        ({"site.pem": LEAF_PEM + INTER_PEM}, "no private key in the file and no site.pem.key"),
        ({"site.pem": OTHER_KEY_PEM + LEAF_PEM}, "does not match the certificate"),
        ({"site.pem": LEAF_PEM, "site.pem.key": OTHER_KEY_PEM}, "does not match"),
        ({"site.pem": LEAF_PEM, "site.pem.key": INTER_PEM}, "holds no private key"),
        ({"site.pem": KEY_PEM}, "no certificate in the file"),
        ({"site.pem": b"garbage"}, "no PEM block found"),
    ],
    ids=["no-key", "wrong-key", "wrong-sidecar", "sidecar-without-key", "key-only", "garbage"],
)
def test_load_certificate_file_errors(tmp_path: Path, files: dict[str, bytes], cause: str) -> None:
    for name, data in files.items():
        write(tmp_path, name, data)
    assert cause in _load_error(str(tmp_path / "site.pem"))


def test_dates_never_stop_loading(tmp_path: Path) -> None:
    # HAProxy, Pound and nginx serve an expired certificate; refusing it would take every
    # virtual server of the process down with one stale file. tls.status warns instead.
    expired = INTERMEDIATE.issue_cert(
        "expired.example.com", not_before=NOW - 30 * DAY, not_after=NOW - 2 * DAY
    )
    future = INTERMEDIATE.issue_cert(
        "future.example.com", not_before=NOW + 2 * DAY, not_after=NOW + 90 * DAY
    )
    for name, issued in (("expired", expired), ("future", future)):
        path = write(tmp_path, f"{name}.pem", issued.private_key_and_cert_chain_pem.bytes())
        loaded = load_certificate_file(path)
        assert loaded.names == (f"{name}.example.com",)
        assert loaded.subject == f"{name}.example.com"
        assert loaded.not_after == issued_not_after(issued)


def issued_not_after(issued: trustme.LeafCert) -> datetime.datetime:
    return cert(issued.cert_chain_pems[0].bytes()).not_valid_after_utc


def test_load_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert "cannot read: No such file" in _load_error(str(tmp_path / "absent.pem"))
    assert "is a directory" in _load_error(str(tmp_path))
    if os.geteuid() != 0:  # root reads mode 000 files anyway
        path = write(tmp_path, "locked.pem", KEY_PEM + LEAF_PEM)
        os.chmod(path, 0)
        assert "cannot read: Permission denied" in _load_error(path)


def test_load_cn_only_certificate(tmp_path: Path) -> None:
    pem, key = cn_only_cert("Old.Example.com")
    loaded = load_certificate_file(write(tmp_path, "old.pem", pem + key))
    assert loaded.names == ("old.example.com",)


# --- directories ------------------------------------------------------------------------------


def _populate(folder: Path) -> None:
    folder.mkdir()
    write(folder, "b-site.pem", KEY_PEM + LEAF_PEM + INTER_PEM)
    write(folder, "a-other.crt", OTHER_PEM)
    write(folder, "a-other.key", OTHER_KEY_PEM)
    write(folder, "b-site.pem.issuer", INTER_PEM)
    write(folder, "b-site.pem.ocsp", b"\x30\x03\x0a\x01\x00")
    write(folder, "b-site.pem.sctl", b"\x00")
    write(folder, ".hidden.pem", b"not a certificate")
    (folder / "subdir").mkdir()


def test_directory_files_follow_haproxy_rules(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    _populate(folder)
    assert [os.path.basename(p) for p in directory_files(str(folder))] == [
        "a-other.crt",
        "b-site.pem",
    ]


def test_load_certificates_mixes_files_and_directories(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    _populate(folder)
    single = write(tmp_path, "single.pem", KEY_PEM + LEAF_PEM)
    loaded = load_certificates(
        [CertificateSpec(single), CertificateSpec(str(folder), default=True)], now=NOW
    )
    assert [os.path.basename(c.source) for c in loaded] == [
        "single.pem",
        "a-other.crt",
        "b-site.pem",
    ]
    assert [c.default for c in loaded] == [False, True, False]
    assert loaded[1].names == ("other.example.com",)


def test_load_certificates_empty_directory_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "only.key").write_bytes(KEY_PEM)
    with pytest.raises(CertificateError, match=r"empty: the directory holds no certificate file"):
        load_certificates([CertificateSpec(str(folder))], now=NOW)


def test_load_certificates_names_the_bad_file_in_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    _populate(folder)
    write(folder, "c-broken.pem", b"not pem at all")
    with pytest.raises(CertificateError) as caught:
        load_certificates([CertificateSpec(str(folder))], now=NOW)
    assert str(caught.value) == f"{folder / 'c-broken.pem'}: " + (
        "no PEM block found (expected -----BEGIN CERTIFICATE-----)"
    )
