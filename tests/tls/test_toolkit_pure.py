"""The toolkit's pure parts: subject checks, format sniffing, PKCS#12, bundle assembly, reports."""

from __future__ import annotations

import datetime
import re

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tls.keys import PrivateKey, generate_key
from tls.status import EXPIRY_WARNING_DAYS
from tls.store import CertificateError, key_matches, parse_pem_bundle
from tls.toolkit.certinfo import describe_file, fingerprint, key_description, validity
from tls.toolkit.csr import SubjectFields, build_csr, normalise_host, validate_subject
from tls.toolkit.der import looks_like_pkcs12, read_certificate_file
from tls.toolkit.install import assemble_bundle
from tls.toolkit.pfx import OPEN_FAILED, read_pfx

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
ROOT = trustme.CA()
INTERMEDIATE = ROOT.create_child_ca()
LEAF = INTERMEDIATE.issue_cert("www.example.com", "example.com")
STRANGER = trustme.CA().issue_cert("stranger.example.org")


def pem_cert(blob: trustme.Blob) -> x509.Certificate:
    return x509.load_pem_x509_certificate(blob.bytes())


LEAF_CERT = pem_cert(LEAF.cert_chain_pems[0])
INTER_CERT = pem_cert(LEAF.cert_chain_pems[1])
ROOT_CERT = pem_cert(ROOT.cert_pem)
STRANGER_CERT = pem_cert(STRANGER.cert_chain_pems[0])


def private_key(blob: trustme.Blob) -> PrivateKey:
    key = parse_pem_bundle(blob.bytes(), "key")[0]
    assert key is not None
    return key


LEAF_KEY = private_key(LEAF.private_key_pem)


def self_signed(
    *, days: int = 90, start: datetime.datetime = NOW - DAY, server: bool = True
) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key("ec:p256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self.example.com")])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CODE_SIGNING
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


# --- csr --------------------------------------------------------------------------------------

FULL = SubjectFields(
    common_name="www.example.com",
    country="us",
    state="Delaware",
    locality="Wilmington",
    organization="Example, Inc.",
    organizational_unit="Support",
    email="admin@example.com",
)


def test_build_csr_subject_san_and_signature() -> None:
    key = generate_key("ec:p256")
    request = build_csr(key, FULL, ["example.com", "WWW.example.com", "192.0.2.7"])
    assert request.is_signature_valid
    assert isinstance(request.signature_hash_algorithm, hashes.SHA256)
    assert request.subject.rfc4514_string() == (
        "1.2.840.113549.1.9.1=admin@example.com,CN=www.example.com,OU=Support,"
        "O=Example\\, Inc.,L=Wilmington,ST=Delaware,C=US"
    )
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com", "example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert request.public_key() == key.public_key()


def test_build_csr_cn_only_still_has_san() -> None:
    request = build_csr(generate_key("ec:p256"), SubjectFields("shop.example.com"))
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example.com"]
    assert request.subject.rfc4514_string() == "CN=shop.example.com"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"common_name": ""}, "--cn: the common name is required"),
        ({"common_name": "a" * 65 + ".com"}, "--cn: longer than 64 characters"),
        ({"common_name": "ü" * 55 + ".example"}, "--cn: its A-label xn--"),
        ({"common_name": "bad_name.example.com"}, "--cn: 'bad_name.example.com' is not a valid"),
        ({"common_name": "www.example.com\n"}, "--cn: control characters"),
        ({"country": "USA"}, "--country: must be two letters"),
        ({"country": "U1"}, "--country: must be two letters"),
        ({"country": "Ü"}, "--country: must be two letters"),
        ({"organization": "Evil\x00Corp"}, "--org: control characters"),
        ({"locality": "Wilming\tton"}, "--locality: control characters"),
        ({"state": " Delaware"}, "--state: leading or trailing spaces"),
        ({"organizational_unit": "x" * 65}, "--ou: longer than 64"),
        ({"email": "not-an-address"}, "--email: 'not-an-address' is not an e-mail"),
        ({"email": "a@b.c\r\nX: y"}, "--email: control characters"),
    ],
)
def test_validate_subject_refuses(changes: dict[str, str], message: str) -> None:
    values = {
        "common_name": FULL.common_name,
        "country": FULL.country,
        "state": FULL.state,
        "locality": FULL.locality,
        "organization": FULL.organization,
        "organizational_unit": FULL.organizational_unit,
        "email": FULL.email,
    }
    values.update(changes)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        validate_subject(SubjectFields(**values))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("WWW.Example.COM", "www.example.com"),
        ("*.example.com", "*.example.com"),
        ("example.com.", "example.com"),
        ("2001:DB8::1", "2001:db8::1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_normalise_host(name: str, expected: str) -> None:
    assert normalise_host("--san", name) == expected


@pytest.mark.parametrize(
    "name", ["*.com", "www.*.example.com", "-bad.example.com", "a..b", "x" * 64 + ".com", "a b"]
)
def test_normalise_host_refuses(name: str) -> None:
    with pytest.raises(ValueError, match=r"^--san: "):
        normalise_host("--san", name)


# --- der: format sniffing ---------------------------------------------------------------------

DER = LEAF_CERT.public_bytes(serialization.Encoding.DER)
P7B_DER = pkcs7.serialize_certificates([INTER_CERT, LEAF_CERT], serialization.Encoding.DER)
P7B_PEM = pkcs7.serialize_certificates([INTER_CERT, LEAF_CERT], serialization.Encoding.PEM)
PFX = pkcs12.serialize_key_and_certificates(
    b"x", LEAF_KEY, LEAF_CERT, None, serialization.BestAvailableEncryption(b"pw")
)


@pytest.mark.parametrize(
    ("data", "encoding", "expected"),
    [
        (DER, "DER", [LEAF_CERT]),
        (LEAF.cert_chain_pems[0].bytes(), "PEM", [LEAF_CERT]),
        (b"junk\r\n" + LEAF.cert_chain_pems[0].bytes().replace(b"\n", b"\r\n"), "PEM", [LEAF_CERT]),
        (P7B_DER, "PKCS#7 (DER)", [INTER_CERT, LEAF_CERT]),
        (P7B_PEM, "PEM", [INTER_CERT, LEAF_CERT]),
        (P7B_PEM + ROOT.cert_pem.bytes(), "PEM", [INTER_CERT, LEAF_CERT, ROOT_CERT]),
    ],
    ids=["der", "pem", "pem-crlf", "p7b-der", "p7b-pem", "p7b-and-pem"],
)
def test_read_certificate_file_sniffs_content(
    data: bytes, encoding: str, expected: list[x509.Certificate]
) -> None:
    found = read_certificate_file(data, "upload.cer")
    assert found.encoding == encoding
    assert found.certificates == expected
    assert found.key is None


def test_read_certificate_file_keeps_a_pem_key() -> None:
    found = read_certificate_file(LEAF.private_key_and_cert_chain_pem.bytes(), "b.pem")
    assert found.key is not None
    assert key_matches(found.key, LEAF_CERT)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x30\x03\x02\x01\x05", "neither PEM, DER nor PKCS#7"),
        (b"hello", "neither PEM, DER nor PKCS#7"),
        (PFX, "is a PKCS#12"),
        (LEAF.private_key_pem.bytes(), "holds no certificate"),
        (b"-----BEGIN PKCS7-----\nMAA=\n-----END PKCS7-----\n", "PKCS#7 block is damaged"),
        (DER[:-20], "neither PEM, DER nor PKCS#7"),
    ],
    ids=["other-der", "text", "pkcs12", "key-only", "bad-p7", "truncated-der"],
)
def test_read_certificate_file_errors(data: bytes, cause: str) -> None:
    with pytest.raises(CertificateError) as caught:
        read_certificate_file(data, "upload.cer")
    assert str(caught.value).startswith("upload.cer: ")
    assert cause in str(caught.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PFX, True),
        (b"\x30\x80\x02\x01\x03", True),  # BER indefinite length
        (b"\x30\x82\x01\x00\x02\x01\x03", True),
        (DER, False),
        (P7B_DER, False),
        (b"", False),
        (b"\x30", False),
        (b"\x30\x89\x02\x01\x03", False),
    ],
)
def test_looks_like_pkcs12(data: bytes, expected: bool) -> None:
    assert looks_like_pkcs12(data) is expected


# --- pfx --------------------------------------------------------------------------------------


def _pfx(
    key: PrivateKey | None,
    cert: x509.Certificate | None,
    extra: list[x509.Certificate],
    password: bytes,
    triple_des: bool = False,
) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if not password:
        encryption = serialization.NoEncryption()
    elif triple_des:
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
            .build(password)
        )
    else:
        encryption = serialization.BestAvailableEncryption(password)
    return pkcs12.serialize_key_and_certificates(b"site", key, cert, extra or None, encryption)


@pytest.mark.parametrize(
    ("password", "given", "triple_des"),
    [
        (b"s3cret", b"s3cret", False),
        (b"s3cret", b"s3cret", True),
        (b"", None, False),
        (b"", b"", False),
    ],
    ids=["aes", "3des", "empty-as-none", "empty-as-empty"],
)
def test_read_pfx_orders_chain(password: bytes, given: bytes | None, triple_des: bool) -> None:
    data = _pfx(LEAF_KEY, LEAF_CERT, [ROOT_CERT, INTER_CERT], password, triple_des)
    contents = read_pfx(data, given, "site.pfx")
    assert contents.key is not None
    assert key_matches(contents.key, LEAF_CERT)
    assert contents.chain == [LEAF_CERT, INTER_CERT, ROOT_CERT]
    assert contents.others == []


def test_read_pfx_certificate_only_finds_the_leaf_among_extras() -> None:
    data = _pfx(None, None, [INTER_CERT, STRANGER_CERT, LEAF_CERT], b"pw")
    contents = read_pfx(data, b"pw", "certs.pfx")
    assert contents.key is None
    assert contents.chain[:2] == [LEAF_CERT, INTER_CERT]
    assert contents.others == [STRANGER_CERT]


@pytest.mark.parametrize(
    ("data", "password", "cause"),
    [
        (_pfx(LEAF_KEY, LEAF_CERT, [], b"right"), b"wrong", OPEN_FAILED),
        (_pfx(LEAF_KEY, LEAF_CERT, [], b"right"), None, OPEN_FAILED),
        (_pfx(LEAF_KEY, LEAF_CERT, [], b"right"), b"\xffright", "not valid UTF-8 text"),
        (DER, b"pw", "not a PKCS#12"),
        (_pfx(LEAF_KEY, None, [INTER_CERT], b"pw"), b"pw", "matches none of the certificates"),
    ],
    ids=["wrong-password", "missing-password", "not-utf8", "not-pfx", "key-mismatch"],
)
def test_read_pfx_errors(data: bytes, password: bytes | None, cause: str) -> None:
    with pytest.raises(CertificateError) as caught:
        read_pfx(data, password, "site.pfx")
    assert str(caught.value).startswith("site.pfx: ")
    assert cause in str(caught.value)


def test_read_pfx_refuses_key_types_lbproxy_cannot_serve() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(key, None)
    )
    data = pkcs12.serialize_key_and_certificates(
        b"ed", key, cert, None, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(CertificateError, match=r"^ed\.pfx: unsupported key type"):
        read_pfx(data, b"pw", "ed.pfx")


def test_open_failed_names_both_causes() -> None:
    assert "wrong password" in OPEN_FAILED
    assert "RC2-40" in OPEN_FAILED


# --- install ----------------------------------------------------------------------------------


def test_assemble_bundle_orders_and_loads_back() -> None:
    bundle = assemble_bundle(
        LEAF_KEY, [INTER_CERT, LEAF_CERT], cert_source="s.pem", key_source="k.pem", now=NOW
    )
    assert bundle.chain == [LEAF_CERT, INTER_CERT]
    assert bundle.warnings == []
    key, certs = parse_pem_bundle(bundle.pem, "out.pem")
    assert key is not None
    assert key_matches(key, LEAF_CERT)
    assert certs == [LEAF_CERT, INTER_CERT]


@pytest.mark.parametrize(
    ("certs", "warning"),
    [
        ([LEAF_CERT], "no intermediate certificate"),
        ([LEAF_CERT, INTER_CERT, ROOT_CERT], "the root certificate"),
        ([LEAF_CERT, INTER_CERT, STRANGER_CERT], "left out 1 certificate(s) not on the chain"),
    ],
    ids=["missing-intermediate", "root-included", "stranger"],
)
def test_assemble_bundle_warnings(certs: list[x509.Certificate], warning: str) -> None:
    bundle = assemble_bundle(LEAF_KEY, certs, cert_source="s", key_source="k", now=NOW)
    assert [w for w in bundle.warnings if warning in w], bundle.warnings
    assert len(bundle.warnings) == 1


@pytest.mark.parametrize(
    ("days", "warned"),
    [(EXPIRY_WARNING_DAYS - 1, True), (EXPIRY_WARNING_DAYS + 2, False)],
)
def test_assemble_bundle_expiry_warning(days: int, warned: bool) -> None:
    key, cert = self_signed(days=days + 1)
    bundle = assemble_bundle(key, [cert], cert_source="s", key_source="k", now=NOW)
    assert any("expires in" in w for w in bundle.warnings) is warned


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda: (LEAF_KEY, [INTER_CERT, ROOT_CERT]), "no certificate in it matches the pending"),
        (lambda: (LEAF_KEY, []), "holds no certificate"),
        (lambda: self_signed(days=10, start=NOW - 20 * DAY), "expired on"),
        (lambda: self_signed(start=NOW + 2 * DAY), "is not valid before"),
        (lambda: self_signed(server=False), "not for TLS servers"),
    ],
    ids=["wrong-key", "empty", "expired", "not-yet-valid", "code-signing"],
)
def test_assemble_bundle_errors(make: object, cause: str) -> None:
    assert callable(make)
    key, certs = make()
    certs = certs if isinstance(certs, list) else [certs]
    with pytest.raises(CertificateError) as caught:
        assemble_bundle(key, certs, cert_source="signed.pem", key_source="pending.key", now=NOW)
    assert str(caught.value).startswith("signed.pem: ")
    assert cause in str(caught.value)


# --- certinfo ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [("rsa:2048", "RSA 2048"), ("ec:p256", "EC P-256"), ("ec:p384", "EC P-384")],
)
def test_key_description(key_type: str, expected: str) -> None:
    assert key_description(generate_key(key_type).public_key()) == expected


def test_fingerprint_format() -> None:
    value = fingerprint(LEAF_CERT)
    assert len(value) == 32 * 3 - 1
    assert value.replace(":", "") == LEAF_CERT.fingerprint(hashes.SHA256()).hex().upper()


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (NOW - DAY, 11, "(9 day(s) left)"),
        (NOW - 20 * DAY, 10, "(EXPIRED 10 day(s) ago)"),
        (NOW + 3 * DAY, 10, "(NOT YET VALID: starts in 3 day(s))"),
    ],
)
def test_validity(start: datetime.datetime, days: int, expected: str) -> None:
    _, cert = self_signed(start=start, days=days)
    assert validity(cert, NOW).endswith(expected)


def test_describe_file_lists_chain_order_and_never_the_key() -> None:
    lines = describe_file("b.pem", "PEM", [INTER_CERT, LEAF_CERT, STRANGER_CERT], LEAF_KEY, NOW)
    text = "\n".join(lines)
    assert lines[0] == "b.pem: 3 certificate(s), PEM"
    assert "certificate 1 (leaf):" in text
    assert "certificate 2 (chain):" in text
    assert "DNS:www.example.com, DNS:example.com" in text
    assert "certificate (not on the leaf's chain):" in text
    assert "chain order: www.example.com -> " in text
    assert "lbproxy reorders it" in text
    assert lines[-1] == "private key: EC P-256, matches the leaf"
    assert fingerprint(LEAF_CERT) in text
    assert b"PRIVATE" not in text.encode()
