"""A real scanner judges the TLS defaults: sslyze ``--mozilla_config intermediate`` must pass.

sslyze pins an old ``cryptography``, so it lives in its own virtual environment under a cache
folder (``LBPROXY_TEST_CACHE``, default ``~/.cache/lbproxy-test``), made on first use. The test
skips only when sslyze cannot be installed there.

The server is a small trio program in a subprocess that builds its TLS bind with
``tls.server_tls.load_tls_server`` from certificate files, the way lbproxy does, and answers
every request with a tiny HTTP response (sslyze also sends an HTTP request).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tls.default_cert import CERT_FILE, ensure_default_certificate
from tls.keys import generate_key, key_pem, write_secret_file

pytestmark = pytest.mark.e2e

SCAN_TIMEOUT = 180.0  # a full sslyze scan of one loopback server takes a few seconds
INSTALL_TIMEOUT = 600.0  # first run only: pip downloads sslyze and its pinned dependencies
ROOT = Path(__file__).resolve().parents[2]

SERVER = textwrap.dedent(
    """
    import datetime, logging, sys
    from functools import partial

    import trio

    from config.model import CertificateSpec, TlsSettings
    from tls.server_tls import load_tls_server

    RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"


    async def main() -> None:
        specs = tuple(CertificateSpec(path) for path in sys.argv[2:])
        server = load_tls_server(
            TlsSettings(certificates=specs),
            state_dir=sys.argv[1],
            now=datetime.datetime.now(datetime.UTC),
            log=logging.getLogger("lbproxy.test"),
        )

        async def handle(stream: trio.SocketStream) -> None:
            tls = trio.SSLStream(stream, server.context, server_side=True)
            try:
                with trio.fail_after(server.handshake_timeout):
                    await tls.do_handshake()
                    data = b""
                    while b"\\r\\n\\r\\n" not in data and len(data) < 65536:
                        chunk = await tls.receive_some(65536)
                        if not chunk:
                            return
                        data += chunk
                    await tls.send_all(RESPONSE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass
            finally:
                await trio.aclose_forcefully(tls)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            print(listeners[0].socket.getsockname()[1], flush=True)


    trio.run(main)
    """
)


def _cache_dir() -> Path:
    return Path(os.environ.get("LBPROXY_TEST_CACHE", "~/.cache/lbproxy-test")).expanduser()


@pytest.fixture(scope="session")
def sslyze() -> str:
    venv = _cache_dir() / "sslyze-venv"
    exe = venv / "bin" / "sslyze"
    if exe.exists() and subprocess.run([exe, "--help"], capture_output=True).returncode == 0:
        return str(exe)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        # The base interpreter: a venv made from inside another venv must not inherit it.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "sslyze"],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode("utf-8", "replace").strip().splitlines()[-1:] or [str(exc)]
        pytest.skip(f"sslyze could not be installed in its own virtualenv: {last[0]}")
    return str(exe)


def _write_leaf(ca: trustme.CA, folder: Path, key_type: str) -> Path:
    """A leaf that a strict RFC 5280 verifier accepts, signed by the session CA.

    trustme marks every leaf's subjectAltName critical next to a non-empty subject, which
    sslyze's path validation rejects: that would be a finding about the test CA, not about
    lbproxy, so the leaf is built here with a 90-day life (Mozilla: at most 366 days).
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    key = generate_key(key_type)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = folder / "leaf.pem"
    write_secret_file(str(path), leaf.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    return path


async def _scan(sslyze: str, state_dir: Path, ca_file: Path, *cert_files: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", SERVER, str(state_dir), *map(str, cert_files)]
    server = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert server.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await server.stdout.receive_some(64)
            assert chunk, "the TLS server exited before listening"
            line += chunk
        port = int(line)
        result = await trio.run_process(
            [sslyze, "--mozilla_config", "intermediate"]  # noqa: RUF005 - reads as a command
            + ["--certinfo_ca_file", str(ca_file), f"127.0.0.1:{port}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    finally:
        server.kill()
        await server.wait()
    return (result.stdout + result.stderr).decode("utf-8", "replace")


def compliance_issues(out: str) -> set[str]:
    """The check names sslyze lists as failed; empty when it printed "OK - Compliant"."""
    section = out.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)
    assert len(section) == 2, out
    if "OK - Compliant." in section[1]:
        return set()
    issues = set(re.findall(r"^\s*\* (\w+):", section[1], flags=re.MULTILINE))
    assert issues, out  # not compliant, yet no named issue: sslyze's output changed
    return issues


@pytest.mark.parametrize("key_type", ["rsa:2048", "ec:p256"])
async def test_mozilla_intermediate_compliant(
    sslyze: str, ca: trustme.CA, tmp_path: Path, key_type: str
) -> None:
    leaf = _write_leaf(ca, tmp_path, key_type)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with trio.fail_after(SCAN_TIMEOUT):
        out = await _scan(sslyze, tmp_path / "state", ca_file, leaf)
    assert compliance_issues(out) == set(), out
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in out, out


async def test_self_signed_default_is_compliant(sslyze: str, tmp_path: Path) -> None:
    # The first start makes the default certificate; trusting it as its own root, the scanner
    # judges everything else about it and the configuration.
    state = tmp_path / "state"
    ensure_default_certificate(
        str(state), now=datetime.datetime.now(datetime.UTC), log=logging.getLogger("lbproxy.test")
    )
    with trio.fail_after(SCAN_TIMEOUT):
        out = await _scan(sslyze, state, state / CERT_FILE)
    # Self-signed means untrusted; the shared self-signed helper also leaves out the Authority
    # Key Identifier that sslyze's strict path validation wants. Nothing else may fail.
    assert compliance_issues(out) <= {"certificate_path_validation"}, out
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in out, out
