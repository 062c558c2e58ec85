"""A real scanner judges the TLS defaults: sslyze ``--mozilla_config intermediate`` must pass.

sslyze pins an old ``cryptography``, so it lives in its own virtual environment under a cache
folder (``LBPROXY_TEST_CACHE``, default ``~/.cache/lbproxy-test``), made on first use. The test
skips only when sslyze cannot be installed there.

The server scanned is the real ``lbproxy run`` process with one TLS bind in front of a real
server (sslyze also sends an HTTP request through it).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.process import backend, free_port, lbproxy
from tls.default_cert import CERT_FILE, ensure_default_certificate
from tls.keys import generate_key, key_pem, write_secret_file

pytestmark = pytest.mark.e2e

SCAN_TIMEOUT = 180.0  # a full sslyze scan of one loopback server takes a few seconds
INSTALL_TIMEOUT = 600.0  # first run only: pip downloads sslyze and its pinned dependencies
ROOT = Path(__file__).resolve().parents[2]


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
    """Run the real ``lbproxy`` with one TLS bind (these files, or the self-signed default
    under ``state_dir``) in front of a real server, and scan that bind."""
    port, backend_port = free_port(), free_port()
    listed = ", ".join(str(path) for path in cert_files)
    tls = f"{{certificate: [{listed}]}}" if cert_files else "{}"
    config = state_dir.parent / "scan.yaml"
    config.write_text(
        f"global: {{state_dir: {state_dir}}}\n"
        "virtual_servers:\n"
        "  - label: scan\n"
        f"    bind: [{{address: 127.0.0.1:{port}, tls: {tls}}}]\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{backend_port}}}]\n"
    )
    with backend("web1", backend_port), lbproxy(config, ("127.0.0.1", port)):
        result = await trio.run_process(
            [sslyze, "--mozilla_config", "intermediate"]  # noqa: RUF005 - reads as a command
            + ["--certinfo_ca_file", str(ca_file), f"127.0.0.1:{port}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
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
    # Trusted as its own root, the self-signed default passes every check.
    assert compliance_issues(out) == set(), out
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in out, out
