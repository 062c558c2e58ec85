"""Client certificates: verification modes over real handshakes, Pound's X-SSL-* values."""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import subprocess

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from config.model import TlsSettings, Verify
from tests.tls.certs import self_signed
from tests.tls.test_context import (
    IO_TIMEOUT,
    client_context,
    connect,
    loaded,
    round_trip,
    tls_server,
)
from tls.clientcert import (
    CLIENT_HEADER_NAMES,
    client_headers,
    format_cipher,
    format_name,
    format_time,
)
from tls.context import build_context
from tls.server_tls import TlsServer

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def client_ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("clientca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def mtls_client(ca: trustme.CA, client_cert: trustme.LeafCert | None) -> ssl.SSLContext:
    ctx = client_context(ca)
    if client_cert is not None:
        client_cert.configure_cert(ctx)
    return ctx


async def first_read(port: int, client: ssl.SSLContext) -> bytes:
    """Handshake, send a byte, read: under TLS 1.3 the server's refusal of the client's
    certificate arrives only on this first read."""
    return await round_trip(await connect(port, client), b"x")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("verify", [Verify.OPTIONAL, Verify.REQUIRED])
async def test_verified_client_certificate_reaches_the_server(
    ca: trustme.CA, client_ca_file: str, verify: Verify, version: ssl.TLSVersion
) -> None:
    settings = TlsSettings(client_ca=client_ca_file, verify=verify)
    ctx = build_context(loaded(ca, "localhost"), settings)
    client_cert = ca.issue_cert("alice@example.com", common_name="alice")
    client = mtls_client(ca, client_cert)
    client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client)
            await tls.send_all(b"x")  # TLS 1.3: the server reads the client's certificate now
            assert await tls.receive_some(10) == b"x"
            await tls.aclose()
    seen = server.done[0]
    assert seen.peer_der is not None
    presented = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    assert seen.peer_der == presented.public_bytes(serialization.Encoding.DER)
    headers = dict(client_headers(seen.peer_der, seen.cipher, version=seen.version))
    assert headers[b"X-SSL-Subject"].endswith(b"CN = alice")
    assert headers[b"X-SSL-serial"] == str(presented.serial_number).encode()
    assert seen.cipher is not None
    assert headers[b"X-SSL-cipher"].startswith(f"{seen.version}/{seen.cipher[0]}".encode())


async def test_optional_allows_no_certificate(ca: trustme.CA, client_ca_file: str) -> None:
    settings = TlsSettings(client_ca=client_ca_file, verify=Verify.OPTIONAL)
    ctx = build_context(loaded(ca, "localhost"), settings)
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, mtls_client(ca, None))
            await tls.send_all(b"x")
            assert await tls.receive_some(10) == b"x"
            await tls.aclose()
    assert server.done[0].peer_der is None
    names = [name for name, _ in client_headers(None, server.done[0].cipher)]
    assert names == [b"X-SSL-cipher"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_required_refuses_no_certificate(
    ca: trustme.CA, client_ca_file: str, version: ssl.TLSVersion
) -> None:
    settings = TlsSettings(client_ca=client_ca_file, verify=Verify.REQUIRED)
    ctx = build_context(loaded(ca, "localhost"), settings)
    client = mtls_client(ca, None)
    client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            # TLS 1.3 finishes the client's side of the handshake before the server has checked
            # the (missing) certificate: the refusal then arrives on the first read.
            with pytest.raises(trio.BrokenResourceError):
                await first_read(server.port, client)
    assert not server.done
    assert "CERTIFICATE" in repr(server.failed[0].__cause__).upper()


@pytest.mark.parametrize("verify", [Verify.OPTIONAL, Verify.REQUIRED])
async def test_certificate_from_another_ca_is_refused(
    ca: trustme.CA, client_ca_file: str, verify: Verify
) -> None:
    settings = TlsSettings(client_ca=client_ca_file, verify=verify)
    ctx = build_context(loaded(ca, "localhost"), settings)
    stranger = trustme.CA().issue_cert("mallory@example.com", common_name="mallory")
    client = mtls_client(ca, stranger)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            with pytest.raises(trio.BrokenResourceError):
                await connect(server.port, client)
    assert not server.done
    assert "CERTIFICATE VERIFY FAILED" in repr(server.failed[0].__cause__).upper()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (TlsSettings(verify=Verify.REQUIRED), "needs client_ca"),
        (TlsSettings(verify=Verify.OPTIONAL, client_ca="/nonexistent/ca.pem"), "no such file"),
    ],
)
def test_client_ca_errors(ca: trustme.CA, settings: TlsSettings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_context(loaded(ca, "localhost"), settings)


def _name(*rdns: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in rdn]) for rdn in rdns]
    )


NAMES = {
    "plain": _name(
        [(NameOID.COUNTRY_NAME, "US")],
        [(NameOID.ORGANIZATION_NAME, "Example Inc")],
        [(NameOID.COMMON_NAME, "www.example.com")],
    ),
    "specials": _name(
        [(NameOID.ORGANIZATION_NAME, 'Smith, Jones & "Co" <ltd>; a+b \\ c')],
        [(NameOID.COMMON_NAME, " leading and trailing ")],
        [(NameOID.ORGANIZATIONAL_UNIT_NAME, "#hash")],
        [(NameOID.LOCALITY_NAME, 'back\\slash "quoted"')],
    ),
    "utf8-and-email": _name(
        [(NameOID.COMMON_NAME, "Jürgen Müller")],
        [(NameOID.EMAIL_ADDRESS, "jm@example.de")],
        [(NameOID.DOMAIN_COMPONENT, "example")],
    ),
    "multivalued": _name(
        [(NameOID.COMMON_NAME, "multi"), (NameOID.USER_ID, "u1")],
        [(NameOID.SERIAL_NUMBER, "1234"), (NameOID.GIVEN_NAME, "Ann")],
    ),
    "control": _name([(NameOID.COMMON_NAME, "tab\there")]),
}


def _self_signed(name: x509.Name, serial: int, not_before: datetime.datetime) -> x509.Certificate:
    return self_signed(name, not_before=not_before, serial=serial)[0]


FIELDS = ("-subject", "-issuer", "-startdate", "-enddate", "-serial")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("label", sorted(NAMES))
def test_values_match_openssl(label: str, tmp_path: os.PathLike[str]) -> None:
    # Pound prints with OpenSSL itself; the openssl command with the same flags is the oracle.
    not_before = datetime.datetime(2024, 2, 4, 6, 5, 42, tzinfo=datetime.UTC)
    cert = _self_signed(NAMES[label], 4096, not_before)
    path = os.path.join(tmp_path, "cert.pem")
    with open(path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    assert OPENSSL is not None
    out = subprocess.run(
        [OPENSSL, "x509", "-in", path, "-noout", "-nameopt", "oneline,-esc_msb", *FIELDS],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    fields = dict(line.split("=", 1) for line in out.splitlines())
    headers = dict(client_headers(cert.public_bytes(serialization.Encoding.DER), None))
    assert headers[b"X-SSL-Subject"].decode() == fields["subject"].strip()
    assert headers[b"X-SSL-Issuer"].decode() == fields["issuer"].strip()
    assert headers[b"X-SSL-notBefore"].decode() == fields["notBefore"]
    assert headers[b"X-SSL-notAfter"].decode() == fields["notAfter"]
    assert int(fields["serial"], 16) == int(headers[b"X-SSL-serial"])


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (
            datetime.datetime(2012, 2, 4, 16, 52, 42, tzinfo=datetime.UTC),
            "Feb  4 16:52:42 2012 GMT",
        ),
        (datetime.datetime(2022, 12, 31, 0, 0, 0, tzinfo=datetime.UTC), "Dec 31 00:00:00 2022 GMT"),
        (
            datetime.datetime(
                2030, 7, 1, 2, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
            ),
            "Jul  1 00:00:00 2030 GMT",
        ),
    ],
)
def test_format_time(moment: datetime.datetime, expected: str) -> None:
    assert format_time(moment) == expected


@pytest.mark.parametrize(
    ("cipher", "version", "expected"),
    [
        (
            ("ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2", 256),
            "TLSv1.2",
            "TLSv1.2/ECDHE-RSA-AES256-GCM-SHA384    TLSv1.2 Kx=ECDH     Au=RSA   "
            "Enc=AESGCM(256)            Mac=AEAD",
        ),
        (
            ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128),
            None,
            "TLSv1.3/TLS_AES_128_GCM_SHA256         TLSv1.3 Kx=any      Au=any   "
            "Enc=AESGCM(128)            Mac=AEAD",
        ),
        (("NOT-KNOWN", "TLSv1.2", 1), "TLSv1.2", "TLSv1.2/NOT-KNOWN"),
    ],
)
def test_format_cipher(cipher: tuple[str, str, int], version: str | None, expected: str) -> None:
    assert format_cipher(cipher, version) == expected


def test_certificate_header_is_the_pem_on_one_line(ca: trustme.CA) -> None:
    pem = ca.issue_cert("bob@example.com").cert_chain_pems[0].bytes()
    cert = x509.load_pem_x509_certificate(pem)
    value = dict(client_headers(cert.public_bytes(serialization.Encoding.DER), None))[
        b"X-SSL-certificate"
    ]
    assert value == pem.replace(b"\n", b"")
    assert value.startswith(b"-----BEGIN CERTIFICATE-----MII")


@pytest.mark.parametrize("label", sorted(NAMES))
def test_values_are_safe_header_values(label: str) -> None:
    cert = _self_signed(
        NAMES[label], 2**150 + 7, datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    )
    headers = client_headers(
        cert.public_bytes(serialization.Encoding.DER), ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)
    )
    assert len(headers) == 7
    for name, value in headers:
        assert name.lower() in CLIENT_HEADER_NAMES
        assert value == value.strip()
        assert not set(value) & {0, 10, 13}, (name, value)
    assert dict(headers)[b"X-SSL-serial"] == str(2**150 + 7).encode()


def test_header_names_cover_pound() -> None:
    assert {
        b"x-ssl-subject",
        b"x-ssl-issuer",
        b"x-ssl-notbefore",
        b"x-ssl-notafter",
        b"x-ssl-serial",
        b"x-ssl-cipher",
        b"x-ssl-certificate",
    } == CLIENT_HEADER_NAMES


def test_unparseable_certificate_adds_cipher_only() -> None:
    headers = client_headers(b"not a certificate", ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128))
    assert [name for name, _ in headers] == [b"X-SSL-cipher"]


def test_format_name_of_plain_name() -> None:
    assert format_name(NAMES["plain"]) == "C = US, O = Example Inc, CN = www.example.com"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_verification_survives_the_sni_switch(
    ca: trustme.CA, client_ca_file: str, version: ssl.TLSVersion
) -> None:
    # OpenSSL keeps the verify mode of the context a handshake starts on and verifies with the
    # store of the one the SNI callback picked: both must carry the bind's settings.
    settings = TlsSettings(client_ca=client_ca_file, verify=Verify.REQUIRED)
    server = TlsServer([loaded(ca, "default.example"), loaded(ca, "localhost")], settings)
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            good = mtls_client(ca, ca.issue_cert("carol@example.com", common_name="carol"))
            good.maximum_version = version
            tls = await connect(listening.port, good, server_hostname="localhost")
            await tls.send_all(b"x")
            assert await tls.receive_some(10) == b"x"
            await tls.aclose()
            bare = mtls_client(ca, None)
            bare.maximum_version = version
            with pytest.raises(trio.BrokenResourceError):
                await first_read(listening.port, bare)
    assert len(listening.done) == 1
    peer = listening.done[0].peer_der
    assert peer is not None
    assert dict(client_headers(peer, None))[b"X-SSL-Subject"].endswith(b"CN = carol")
