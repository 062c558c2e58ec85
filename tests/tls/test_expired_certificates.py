"""An expired certificate is served with loud warnings, never a refusal to start: in the log at
load and reload, in ``lbproxy check`` (exit 0), and over a real TLS handshake. A damaged file or
a key that does not match is still an error."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config.model import CertificateSpec, TlsSettings
from l7proxy.cli import main
from tests.tls.test_context import IO_TIMEOUT, connect, tls_server
from tls.keys import write_secret_file
from tls.server_tls import load_tls_server
from tls.store import load_certificates

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
LOG = logging.getLogger("lbproxy.test.expired")


def expired_bundle(ca: trustme.CA, path: Path, name: str = "old.example.com") -> bytes:
    """Write an expired key+chain bundle (0600); return the leaf as DER."""
    leaf = ca.issue_cert(name, not_before=NOW - 400 * DAY, not_after=NOW - 3 * DAY)
    write_secret_file(str(path), leaf.private_key_and_cert_chain_pem.bytes())
    pem = leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def expiry_date(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"


async def test_expired_certificate_is_served_and_logged(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "old.pem"
    served_der = expired_bundle(ca, bundle)
    settings = TlsSettings(certificates=(CertificateSpec(str(bundle)),))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        server = load_tls_server(settings, state_dir=str(tmp_path / "state"), now=NOW, log=LOG)
    [warning] = [r for r in caplog.records if r.name == LOG.name]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith(f"{bundle}: certificate old.example.com EXPIRED on ")
    assert expiry_date(bundle) in warning.getMessage()
    [status] = server.certificate_statuses()
    assert (status.path, status.subject, status.names) == (
        str(bundle),
        "old.example.com",
        ("old.example.com",),
    )
    assert status.not_after < NOW

    # A client that does not verify (as an operator's curl -k would) gets the expired leaf.
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            tls = await connect(listening.port, client, server_hostname="old.example.com")
            assert tls.getpeercert(binary_form=True) == served_der
            await tls.aclose()

    # Reloading (SIGHUP) warns again, through the same logger.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        server.reload(load_certificates(settings.certificates))
    [again] = [r.getMessage() for r in caplog.records if r.name == LOG.name]
    assert again.startswith(f"{bundle}: certificate old.example.com EXPIRED on ")
    assert expiry_date(bundle) in again


def check_config(path: Path, certificate: Path) -> Path:
    """Two virtual servers: one TLS with ``certificate``, one plain HTTP."""
    config = path / "lb.yaml"
    config.write_text(
        "virtual_servers:\n"
        "  - label: secure\n"
        f"    bind: [{{address: 127.0.0.1:8443, tls: {{certificate: {certificate}}}}}]\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
        "  - label: plain\n"
        "    bind: 127.0.0.1:8080\n"
        "    real_servers: [{label: b, address: 127.0.0.1:2}]\n"
    )
    return config


def test_check_warns_about_an_expired_certificate_and_passes(
    ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "old.pem"
    expired_bundle(ca, bundle)
    config = check_config(tmp_path, bundle)
    assert main(["check", "-c", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "configuration is valid (2 virtual server(s), 1 warning(s))" in out
    [line] = err.splitlines()
    assert line.startswith(
        f"{config}: warning: virtual server secure, bind 127.0.0.1:8443: {bundle}: "
        "certificate old.example.com EXPIRED on "
    )
    assert expiry_date(bundle) in line


def test_check_still_refuses_a_key_that_does_not_match(
    ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "mixed.pem"
    expired = ca.issue_cert("old.example.com", not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    other = ca.issue_cert("other.example.com")
    bundle.write_bytes(expired.cert_chain_pems[0].bytes() + other.private_key_pem.bytes())
    bundle.chmod(0o600)
    assert main(["check", "-c", str(check_config(tmp_path, bundle))]) == 1
    err = capsys.readouterr().err
    assert f"{bundle}: the private key does not match the certificate old.example.com" in err
    assert "Traceback" not in err
    assert "PRIVATE KEY" not in err
