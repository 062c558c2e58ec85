"""SNI: the pure lookup table, then TlsServer dispatch seen from real clients."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import shutil
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trio
import trustme

from config.model import CertificateSpec, TlsSettings
from tests.tls.test_context import (
    IO_TIMEOUT,
    client_context,
    connect,
    loaded,
    round_trip,
    tls_server,
)
from tls.certificate import LoadedCertificate
from tls.keys import write_secret_file
from tls.server_tls import TlsServer, load_tls_server
from tls.sni import SniIndex, normalize_name
from tls.store import CertificateError

_EPOCH = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def fake(label: str, *names: str, default: bool = False) -> LoadedCertificate:
    """A certificate value for lookups only: no key material is ever read here."""
    return LoadedCertificate(
        source=label,
        chain_pem=b"",
        key_pem=b"",
        names=names,
        not_before=_EPOCH,
        not_after=_EPOCH + datetime.timedelta(days=90),
        default=default,
    )


EXACT = fake("exact", "www.example.com", "example.com")
WILD = fake("wild", "*.example.com")
OTHER = fake("other", "other.org")
DEEP = fake("deep", "*.api.example.com")


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("www.example.com", "exact"),
        ("WWW.Example.COM", "exact"),
        ("www.example.com.", "exact"),
        ("example.com", "exact"),
        ("shop.example.com", "wild"),
        ("a.b.example.com", "other"),  # a wildcard covers one label only
        ("v1.api.example.com", "deep"),
        ("api.example.com", "wild"),
        ("other.org", "other"),
        ("unknown.net", "other"),  # the first certificate is the default
        ("localhost", "other"),
        ("", "other"),
        (None, "other"),
        ("*.example.com", "other"),  # a literal wildcard in SNI is not a name
    ],
)
def test_lookup_any_order(server_name: str | None, expected: str) -> None:
    for order in itertools.permutations([EXACT, WILD, DEEP]):
        certs = [OTHER, *order]
        picked = SniIndex(certs).pick(server_name)
        assert picked is not None
        assert picked.source == expected, (server_name, [c.source for c in certs])


@pytest.mark.parametrize(
    ("certs", "expected"),
    [
        ([OTHER, EXACT], "other"),
        ([EXACT, OTHER], "exact"),
        ([OTHER, fake("marked", "m.org", default=True), EXACT], "marked"),
        (
            [fake("first-marked", "a.org", default=True), fake("b", "b.org", default=True)],
            "first-marked",
        ),
    ],
)
def test_default_is_marked_else_first(certs: list[LoadedCertificate], expected: str) -> None:
    picked = SniIndex(certs).pick("nothing.matches")
    assert picked is not None
    assert picked.source == expected
    assert SniIndex(certs).default is picked


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [("www.example.com", "exact"), ("x.example.com", "wild"), ("unknown.net", None), (None, None)],
)
def test_strict(server_name: str | None, expected: str | None) -> None:
    picked = SniIndex([OTHER, WILD, EXACT], strict=True).pick(server_name)
    assert (picked.source if picked else None) == expected


def test_first_certificate_keeps_a_shared_name() -> None:
    one, two = fake("one", "same.org"), fake("two", "same.org")
    assert SniIndex([one, two]).pick("same.org") is one
    assert SniIndex([two, one]).pick("same.org") is two


def test_no_certificates() -> None:
    assert SniIndex([]).pick("a.org") is None


@pytest.mark.parametrize(
    ("raw", "expected"), [("A.Example.COM.", "a.example.com"), (" x.org ", "x.org"), ("", "")]
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


# --- real handshakes through TlsServer ------------------------------------------------------


def served_names(tls: trio.SSLStream[trio.SocketStream] | ssl.SSLSocket) -> tuple[str, ...]:
    cert = tls.getpeercert()
    assert cert is not None
    san = cert["subjectAltName"]
    assert isinstance(san, tuple)
    return tuple(value for kind, value in san if kind == "DNS" and isinstance(value, str))


def sni_client(ca: trustme.CA, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(ca)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


@pytest.fixture(scope="module")
def sni_certs(ca: trustme.CA) -> dict[str, LoadedCertificate]:
    return {
        "exact": loaded(ca, "www.example.com"),
        "wild": loaded(ca, "*.example.com"),
        "default": loaded(ca, "localhost", "default.example.org"),
    }


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "order", [("default", "wild", "exact"), ("default", "exact", "wild")], ids=["w-e", "e-w"]
)
async def test_served_certificate_follows_sni(
    ca: trustme.CA,
    sni_certs: dict[str, LoadedCertificate],
    version: ssl.TLSVersion,
    order: tuple[str, ...],
) -> None:
    server = TlsServer([sni_certs[key] for key in order], TlsSettings())
    client = sni_client(ca, version)
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            for name, expected in [
                ("www.example.com", ("www.example.com",)),
                ("shop.example.com", ("*.example.com",)),
                ("localhost", ("localhost", "default.example.org")),
            ]:
                tls = await connect(listening.port, client, server_hostname=name)
                assert served_names(tls) == expected
                assert await round_trip(tls) == b"ping"
                await tls.aclose()
            # Unknown name: the default certificate (which the client then rejects by name).
            unverified = sni_client(ca, version)
            unverified.check_hostname = False
            tls = await connect(listening.port, unverified, server_hostname="nobody.net")
            assert served_names(tls) == ("localhost", "default.example.org")
            await tls.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_no_sni_gets_default(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate], version: ssl.TLSVersion
) -> None:
    certs = [sni_certs["exact"], sni_certs["wild"], sni_certs["default"]]
    marked = dataclasses.replace(sni_certs["default"], default=True)
    server = TlsServer([certs[0], certs[1], marked], TlsSettings())
    client = sni_client(ca, version)
    client.check_hostname = False
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            tls = await connect(listening.port, client, server_hostname=None)
            assert served_names(tls) == ("localhost", "default.example.org")
            await tls.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_strict_sni_fails_unknown_names(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate], version: ssl.TLSVersion
) -> None:
    server = TlsServer([sni_certs["default"], sni_certs["exact"]], TlsSettings(strict_sni=True))
    client = sni_client(ca, version)
    client.check_hostname = False
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            for name in ("nobody.net", None):
                with pytest.raises(trio.BrokenResourceError) as info:
                    await connect(listening.port, client, server_hostname=name)
                assert info.value is not None
            tls = await connect(listening.port, client, server_hostname="www.example.com")
            assert served_names(tls) == ("www.example.com",)
            await tls.aclose()
    assert len(listening.done) == 1
    # trio.SSLStream drops the alert of a failed handshake (the client sees EOF); the server
    # side shows that the SNI callback refused the name.
    assert [getattr(failure.__cause__, "reason", None) for failure in listening.failed] == [
        "CALLBACK_FAILED"
    ] * 2


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_sni_sends_unrecognized_name(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate], version: ssl.TLSVersion
) -> None:
    # A blocking stdlib server writes the alert the callback asked for, which trio does not.
    server = TlsServer([sni_certs["default"]], TlsSettings(strict_sni=True))
    client = sni_client(ca, version)
    client.check_hostname = False
    failures: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT)

        def serve_one() -> None:
            conn, _ = listener.accept()
            conn.settimeout(IO_TIMEOUT)
            try:
                server.context.wrap_socket(conn, server_side=True).close()
            except ssl.SSLError as exc:
                failures.append(exc)
            finally:
                conn.close()

        thread = threading.Thread(target=serve_one)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT) as raw,
                pytest.raises(ssl.SSLError) as info,
            ):
                client.wrap_socket(raw, server_hostname="nobody.net")
        finally:
            thread.join(IO_TIMEOUT)
    assert info.value.reason == "TLSV1_UNRECOGNIZED_NAME"
    assert len(failures) == 1


async def test_reload_swaps_certificates_for_new_handshakes_only(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate]
) -> None:
    server = TlsServer([sni_certs["default"], sni_certs["wild"]], TlsSettings())
    dispatch = server.context
    client = sni_client(ca, ssl.TLSVersion.TLSv1_3)
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            before = await connect(listening.port, client, server_hostname="www.example.com")
            assert served_names(before) == ("*.example.com",)

            server.reload([sni_certs["default"], sni_certs["exact"]])
            assert server.context is dispatch  # the listener keeps its context object

            after = await connect(listening.port, client, server_hostname="www.example.com")
            assert served_names(after) == ("www.example.com",)
            # The connection opened before the reload carries on with its certificate.
            assert await round_trip(before, b"still here") == b"still here"
            assert served_names(before) == ("*.example.com",)
            await before.aclose()
            await after.aclose()


def test_reload_failure_keeps_current_certificates(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate]
) -> None:
    server = TlsServer([sni_certs["default"]], TlsSettings())
    broken = dataclasses.replace(sni_certs["exact"], key_pem=sni_certs["wild"].key_pem)
    with pytest.raises(ValueError, match="OpenSSL cannot use"):
        server.reload([broken])
    with pytest.raises(ValueError, match="at least one certificate"):
        server.reload([])
    assert server.certificates == (sni_certs["default"],)


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="the curl command is not installed")
@pytest.mark.parametrize("tls_flags", [("--tlsv1.2", "--tls-max", "1.2"), ("--tlsv1.3",)])
@pytest.mark.parametrize(
    ("name", "matched"),
    [("www.example.com", "www.example.com"), ("shop.example.com", "*.example.com")],
)
async def test_curl_sees_sni_certificate_and_http11(
    ca: trustme.CA,
    sni_certs: dict[str, LoadedCertificate],
    tmp_path: Path,
    tls_flags: tuple[str, ...],
    name: str,
    matched: str,
) -> None:
    server = TlsServer([sni_certs["default"], sni_certs["wild"], sni_certs["exact"]], TlsSettings())
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert CURL is not None
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            port = listening.port
            result = await trio.run_process(
                [
                    *(CURL, "-sS", "-v", "--http2", *tls_flags, "--cacert", str(ca_file)),
                    *("--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"),
                    *("-w", "\\n%{http_version}"),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, err
    # curl offered h2 and http/1.1; the server must pick http/1.1.
    assert "ALPN: server accepted http/1.1" in err, err
    assert f'host "{name}" matched cert\'s "{matched}"' in err, err
    assert result.stdout.decode().splitlines() == ["ok", "1.1"]


def _write_bundle(ca: trustme.CA, path: Path, *names: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue_cert(*names, not_after=now + datetime.timedelta(days=90))
    # Key, leaf and chain in one PEM bundle, the way HAProxy's `crt` files look.
    write_secret_file(str(path), leaf.private_key_and_cert_chain_pem.bytes())


async def test_load_tls_server_from_files_and_a_directory(ca: trustme.CA, tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    # Alphabetical directory order puts the wildcard first; exact must still win.
    _write_bundle(ca, folder / "a-wild.pem", "*.example.com")
    _write_bundle(ca, folder / "b-exact.pem", "www.example.com")
    _write_bundle(ca, tmp_path / "default.pem", "localhost")
    settings = TlsSettings(
        certificates=(
            CertificateSpec(str(folder)),
            CertificateSpec(str(tmp_path / "default.pem"), default=True),
        )
    )
    server = load_tls_server(
        settings,
        state_dir=str(tmp_path / "state"),
        now=datetime.datetime.now(datetime.UTC),
        log=logging.getLogger("lbproxy.test"),
    )
    assert not (tmp_path / "state").exists()  # configured certificates: no default made
    client = sni_client(ca, ssl.TLSVersion.TLSv1_3)
    unverified = sni_client(ca, ssl.TLSVersion.TLSv1_3)
    unverified.check_hostname = False
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            for name, ctx, expected in [
                ("www.example.com", client, ("www.example.com",)),
                ("api.example.com", client, ("*.example.com",)),
                ("localhost", client, ("localhost",)),
                ("elsewhere.org", unverified, ("localhost",)),
            ]:
                tls = await connect(listening.port, ctx, server_hostname=name)
                assert served_names(tls) == expected, name
                await tls.aclose()


def test_load_tls_server_names_a_bad_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    settings = TlsSettings(certificates=(CertificateSpec(str(missing)),))
    with pytest.raises(CertificateError) as info:
        load_tls_server(
            settings,
            state_dir=str(tmp_path),
            now=datetime.datetime.now(datetime.UTC),
            log=logging.getLogger("lbproxy.test"),
        )
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("version", VERSIONS)
async def test_reload_retires_session_tickets(
    ca: trustme.CA, sni_certs: dict[str, LoadedCertificate], version: ssl.TLSVersion
) -> None:
    server = TlsServer([sni_certs["default"], sni_certs["wild"]], TlsSettings())
    client = sni_client(ca, version)
    reused: list[bool] = []

    def connect_and_check(session: ssl.SSLSession | None) -> ssl.SSLSession:
        with (
            socket.create_connection(("127.0.0.1", listening.port), timeout=IO_TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname="www.example.com", session=session) as tls,
        ):
            tls.sendall(b"ping")  # a round trip: TLS 1.3 tickets arrive after the handshake
            assert tls.recv(16) == b"ping"
            reused.append(bool(tls.session_reused))
            names.append(served_names(tls))
            assert tls.session is not None
            return tls.session

    names: list[tuple[str, ...]] = []
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            first = await trio.to_thread.run_sync(connect_and_check, None)
            await trio.to_thread.run_sync(connect_and_check, first)
            server.reload([sni_certs["default"], sni_certs["exact"]])
            await trio.to_thread.run_sync(connect_and_check, first)
    assert reused == [False, True, False]
    # A resumed session shows the certificate of the session it resumes; after the reload
    # the full handshake shows the new one.
    assert names[2] == ("www.example.com",)
