"""TLS through the lbproxy process with real clients: curl (SNI via --resolve), openssl
s_client, certificate reload on SIGHUP, and clear errors for bad certificate files."""

from __future__ import annotations

import datetime
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import trustme

from tests.e2e.process import backend, free_port, lbproxy, lbproxy_command

pytestmark = pytest.mark.e2e
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is not installed"
)


def write_bundle(ca: trustme.CA, path: pathlib.Path, *names: str) -> pathlib.Path:
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def tls_config(folder: pathlib.Path, certs: list[pathlib.Path]) -> tuple[pathlib.Path, int, int]:
    """Write ``lb.yaml`` in ``folder``: one TLS bind with ``certs``, one real server web1, on
    free ports; the file, the bind's port and the real server's port."""
    path, port, backend_port = folder / "lb.yaml", free_port(), free_port()
    listed = ", ".join(str(cert) for cert in certs)
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: [{{address: 127.0.0.1:{port}, tls: {{certificate: [{listed}]}}}}]\n"
        "    persistence: {cookie: SERVERID}\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{backend_port}}}]\n"
    )
    return path, port, backend_port


def served_names(port: int, ca: trustme.CA, server_name: str) -> list[str]:
    """The DNS names of the certificate the proxy presents for ``server_name``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    names = cert.get("subjectAltName", ())
    assert isinstance(names, tuple)
    return [value for kind, value in names if kind == "DNS" and isinstance(value, str)]


@needs_curl
def test_curl_sni_picks_exact_then_wildcard_then_default(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # File order puts the wildcard and the default first: the exact name must still win.
    default = write_bundle(ca, tmp_path / "a-default.pem", "default.example")
    wildcard = write_bundle(ca, tmp_path / "b-wild.pem", "*.example.com")
    exact = write_bundle(ca, tmp_path / "c-exact.pem", "www.example.com")
    config, port, bport = tls_config(tmp_path, [default, wildcard, exact])
    with backend("web1", bport), lbproxy(config, ("127.0.0.1", port)):
        for name, status in [("www.example.com", 0), ("shop.example.com", 0)]:
            result = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--cacert",
                    str(ca_file),
                    "--resolve",
                    f"{name}:{port}:127.0.0.1",
                    f"https://{name}:{port}/x",
                    "-D",
                    "-",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == status, result.stderr
            assert "web1 GET /x 0" in result.stdout
            assert "set-cookie: SERVERID=web1; path=/; Secure" in result.stdout
        assert served_names(port, ca, "www.example.com") == ["www.example.com"]
        assert served_names(port, ca, "shop.example.com") == ["*.example.com"]
        assert served_names(port, ca, "other.test") == ["default.example"]


@needs_openssl
def test_openssl_s_client_negotiates_http11_and_refuses_tls11(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    bundle = write_bundle(ca, tmp_path / "www.pem", "localhost")
    config, port, bport = tls_config(tmp_path, [bundle])
    with backend("web1", bport), lbproxy(config, ("127.0.0.1", port)):
        ok = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2,http/1.1"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "ALPN protocol: http/1.1" in ok.stdout
        old = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert old.returncode != 0
        assert "Cipher is (NONE)" in old.stdout or "no protocols available" in old.stderr


def test_sighup_swaps_certificates_for_new_handshakes(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    bundle = write_bundle(ca, tmp_path / "www.pem", "old.example.com")
    config, port, bport = tls_config(tmp_path, [bundle])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    with backend("web1", bport), lbproxy(config, ("127.0.0.1", port)) as proxy:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        open_conn = context.wrap_socket(raw, server_hostname="old.example.com")
        write_bundle(ca, bundle, "new.example.com")
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_names(port, ca, "x") != ["new.example.com"]:
            assert time.monotonic() < deadline, proxy.stderr()
            time.sleep(0.1)
        # The connection opened before the reload still works on its old certificate.
        open_conn.sendall(b"GET /still HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := open_conn.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        assert b"web1 GET /still" in reply
        open_conn.close()
        assert "SIGHUP: configuration reloaded" in proxy.stderr()


def test_bad_certificate_is_named_by_check_and_run(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "broken.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config, _, _ = tls_config(tmp_path, [bad])
    for command in ("check", "run"):
        result = subprocess.run(
            [*lbproxy_command(), command, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, (command, result.stderr)
        assert str(bad) in result.stderr
        assert "Traceback" not in result.stderr


@needs_openssl
def test_expired_certificate_is_served_with_a_warning(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    # One stale certificate must not take the process down: HAProxy, Pound and nginx serve it.
    now = datetime.datetime.now(datetime.UTC)
    bundle = tmp_path / "old.pem"
    leaf = ca.issue_cert(
        "old.example.com",
        not_before=now - datetime.timedelta(days=400),
        not_after=now - datetime.timedelta(days=3),
    )
    leaf.private_key_and_cert_chain_pem.write_to_path(str(bundle))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port, http_port, bport = free_port(), free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(
        "virtual_servers:\n"
        "  - label: secure\n"
        f"    bind: [{{address: 127.0.0.1:{tls_port}, tls: {{certificate: {bundle}}}}}]\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{bport}}}]\n"
        "  - label: plain\n"
        f"    bind: 127.0.0.1:{http_port}\n"
        f"    real_servers: [{{label: web1, address: 127.0.0.1:{bport}}}]\n"
    )
    check = subprocess.run(
        [*lbproxy_command(), "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    assert f"warning: virtual server secure, bind 127.0.0.1:{tls_port}: {bundle}: " in check.stderr
    assert "EXPIRED on" in check.stderr
    with backend("web1", bport), lbproxy(config, ("127.0.0.1", http_port)) as proxy:
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as plain:
            plain.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := plain.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        assert b"web1 GET /plain" in reply
        shown = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{tls_port}",
                "-servername",
                "old.example.com",
                "-CAfile",
                str(ca_file),
                "-showcerts",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        served = shown.stdout.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END", 1)[0]
        assert served.split() == leaf.cert_chain_pems[0].bytes().decode().split("\n")[1:-2]
        assert "certificate has expired" in shown.stdout, shown.stdout
        assert f"{bundle}: certificate old.example.com EXPIRED on" in proxy.stderr()
