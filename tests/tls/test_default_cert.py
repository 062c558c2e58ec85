"""The self-signed default certificate: made once, private, reused, remade when unusable."""

from __future__ import annotations

import datetime
import logging
import os
import re
import ssl
import stat
from pathlib import Path

import pytest
import trio
from cryptography import x509

from config.model import TlsSettings
from tests.tls.test_context import IO_TIMEOUT, connect, round_trip, tls_server
from tls.default_cert import CERT_FILE, KEY_FILE, ensure_default_certificate
from tls.server_tls import load_tls_server

NOW = datetime.datetime.now(datetime.UTC)
LOG = logging.getLogger("lbproxy.test.default_cert")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_makes_a_private_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state" / "nested"
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        cert = ensure_default_certificate(str(state), now=NOW, log=LOG)
    assert mode(state) == 0o700
    assert mode(state / KEY_FILE) == 0o600
    assert mode(state / CERT_FILE) == 0o644
    assert cert.default is True
    assert cert.names == ("localhost",)
    assert cert.source == str(state / CERT_FILE)
    assert cert.key_pem == (state / KEY_FILE).read_bytes()
    assert cert.chain_pem == (state / CERT_FILE).read_bytes()
    parsed = x509.load_pem_x509_certificate(cert.chain_pem)
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.not_after - cert.not_before <= datetime.timedelta(days=366)  # Mozilla's cap
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "self-signed" in message
    assert "tls: {certificate: FILE}" in message
    assert "lbproxy csr" in message
    assert "PRIVATE KEY" not in caplog.text


def test_later_starts_reuse_it_and_warn_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ensure_default_certificate(str(tmp_path), now=NOW, log=LOG)
    key_before = os.stat(tmp_path / KEY_FILE)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        second = ensure_default_certificate(
            str(tmp_path), now=NOW + datetime.timedelta(days=30), log=LOG
        )
    assert second.chain_pem == first.chain_pem
    assert second.key_pem == first.key_pem
    key_after = os.stat(tmp_path / KEY_FILE)
    assert (key_after.st_ino, key_after.st_mtime_ns) == (key_before.st_ino, key_before.st_mtime_ns)
    assert any("self-signed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("expire", "expired"),
        ("garble-key", "unusable"),
        ("garble-cert", "unusable"),
        ("other-key", "does not match"),
    ],
)
def test_unusable_certificate_is_remade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    first = ensure_default_certificate(str(tmp_path), now=NOW, log=LOG)
    later = NOW
    if damage == "expire":
        later = first.not_after + datetime.timedelta(hours=1)
    elif damage == "garble-key":
        (tmp_path / KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    elif damage == "garble-cert":
        (tmp_path / CERT_FILE).write_bytes(b"not a certificate")
    else:
        other = tmp_path / "other"
        ensure_default_certificate(str(other), now=NOW, log=LOG)
        (tmp_path / KEY_FILE).write_bytes((other / KEY_FILE).read_bytes())
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        again = ensure_default_certificate(str(tmp_path), now=later, log=LOG)
    assert again.chain_pem != first.chain_pem
    assert again.not_after > later
    assert mode(tmp_path / KEY_FILE) == 0o600
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    assert "PRIVATE KEY" not in caplog.text


def test_unwritable_state_dir_is_an_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cause = re.escape(f"state_dir {blocker / 'state'}: cannot store")
    with pytest.raises(OSError, match=f"^{cause}") as info:
        ensure_default_certificate(str(blocker / "state"), now=NOW, log=LOG)
    message = str(info.value)
    assert "\n" not in message
    assert "Errno" not in message


def test_custom_names(tmp_path: Path) -> None:
    cert = ensure_default_certificate(
        str(tmp_path), names=("lb.example.net", "10.0.0.1"), now=NOW, log=LOG
    )
    assert cert.names == ("lb.example.net",)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_bind_without_certificate_serves_the_default(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    state = tmp_path / "state"
    server = load_tls_server(TlsSettings(), state_dir=str(state), now=NOW, log=LOG)
    # A client that pinned the default certificate verifies it like any other.
    client = ssl.create_default_context(cafile=str(state / CERT_FILE))
    client.minimum_version = client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(server.context) as listening:
            tls = await connect(listening.port, client, server_hostname="localhost")
            assert await round_trip(tls) == b"ping"
            assert tls.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
            await tls.aclose()
    again = load_tls_server(TlsSettings(), state_dir=str(state), now=NOW, log=LOG)
    assert again.certificates == server.certificates
