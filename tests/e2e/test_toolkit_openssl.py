"""Interoperability of the certificate toolkit with the openssl CLI, and the bundles serving TLS.

The openssl binary makes the inputs operators bring (PKCS#12 exports of every vintage, DER,
PKCS#7) and judges our outputs (CSR verification, the PEM it would have produced itself).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from l7proxy.cli import main
from tls.store import load_certificate_file, parse_pem_bundle

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command-line tool"
)

NOW = datetime.datetime.now(datetime.UTC)
ROOT = trustme.CA(key_type=trustme.KeyType.RSA)
INTERMEDIATE = ROOT.create_child_ca(key_type=trustme.KeyType.RSA)
LEAF = INTERMEDIATE.issue_cert("www.example.com", key_type=trustme.KeyType.RSA)
SENTINEL = "Sentinel-Pa55-e2e"
FROM_STDIN = ("--password-file", "-")
IO_TIMEOUT = 20  # seconds; generous for a 2-core machine running the suite in parallel


def openssl(*args: str, input_: bytes = b"", env: dict[str, str] | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *args],
        input=input_,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=IO_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    files = {
        "leaf": LEAF.cert_chain_pems[0].bytes(),
        "inter": LEAF.cert_chain_pems[1].bytes(),
        "root": ROOT.cert_pem.bytes(),
        "key": LEAF.private_key_pem.bytes(),
        "chain": LEAF.cert_chain_pems[1].bytes() + ROOT.cert_pem.bytes(),
        "pw": SENTINEL.encode() + b"\n",
    }
    paths = {}
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
        paths[name] = str(tmp_path / f"{name}.pem")
    return paths


def der_set(pem: bytes) -> set[bytes]:
    return {
        cert.public_bytes(serialization.Encoding.DER)
        for cert in x509.load_pem_x509_certificates(pem)
    }


def private_der(pem: bytes) -> bytes | None:
    key = parse_pem_bundle(pem, "x")[0]
    if key is None:
        return None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# (export options, password, extra options `openssl pkcs12 -in` needs, algorithm -info shows)
EXPORTS = {
    "modern": ([], SENTINEL, [], "AES-256-CBC"),
    "legacy-rc2-40": (["-legacy"], SENTINEL, ["-legacy"], "pbeWithSHA1And40BitRC2-CBC"),
    "3des": (
        ["-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"],
        SENTINEL,
        [],
        "pbeWithSHA1And3-KeyTripleDES-CBC",
    ),
    "empty-password": ([], "", [], "AES-256-CBC"),
    "certificates-only": (["-nokeys"], SENTINEL, [], "AES-256-CBC"),
}


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_convert_pfx_matches_openssl_nodes(
    tmp_path: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    export, password, read_options, algorithm = EXPORTS[kind]
    env = {"PFX_PASS": password}
    pfx = str(tmp_path / f"{kind}.pfx")
    key_args = [] if "-nokeys" in export else ["-inkey", pki["key"]]
    openssl(
        *("pkcs12", "-export", "-in", pki["leaf"], *key_args, "-certfile", pki["chain"]),
        *("-out", pfx, "-passout", "env:PFX_PASS", *export),
        env=env,
    )
    info = subprocess.run(
        [
            *("openssl", "pkcs12", "-in", pfx, "-info", "-noout"),
            *("-passin", "env:PFX_PASS", *read_options),
        ],
        capture_output=True,
        env={**os.environ, **env},
        timeout=IO_TIMEOUT,
        check=True,
    )
    assert algorithm.encode() in info.stdout + info.stderr  # the export is what it claims
    reference = openssl(
        "pkcs12", "-in", pfx, "-nodes", "-passin", "env:PFX_PASS", *read_options, env=env
    )

    out = tmp_path / "out.pem"
    (tmp_path / "pw").write_text(password)
    argv = ["convert-pfx", pfx, "--out", str(out), "--password-file", str(tmp_path / "pw")]
    assert main(argv) == 0, capsys.readouterr().err
    ours = out.read_bytes()
    assert der_set(ours) == der_set(reference)
    assert private_der(ours) == private_der(reference)
    leaf, *chain = x509.load_pem_x509_certificates(ours)
    assert leaf == x509.load_pem_x509_certificate(LEAF.cert_chain_pems[0].bytes())
    assert [c.subject for c in chain] == [
        x509.load_pem_x509_certificate(LEAF.cert_chain_pems[1].bytes()).subject,
        x509.load_pem_x509_certificate(ROOT.cert_pem.bytes()).subject,
    ]
    if private_der(ours) is not None:
        assert load_certificate_file(str(out)).names == ("www.example.com",)


def test_convert_cer_der_and_p7b_match_openssl(
    tmp_path: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    der = tmp_path / "site.cer"
    der.write_bytes(openssl("x509", "-in", pki["leaf"], "-outform", "DER"))
    out = tmp_path / "site.pem"
    assert main(["convert-cer", str(der), "--out", str(out)]) == 0
    assert out.read_bytes() == openssl("x509", "-in", str(der), "-inform", "DER")

    bundle = tmp_path / "all.pem"
    bundle.write_bytes(Path(pki["root"]).read_bytes() + Path(pki["leaf"]).read_bytes())
    bundle.write_bytes(bundle.read_bytes() + Path(pki["inter"]).read_bytes())
    p7b = tmp_path / "chain.p7b"
    p7b.write_bytes(openssl("crl2pkcs7", "-nocrl", "-certfile", str(bundle), "-outform", "DER"))
    out = tmp_path / "ordered.pem"
    assert main(["convert-cer", str(p7b), "--out", str(out)]) == 0, capsys.readouterr().err
    ordered = Path(pki["leaf"]).read_bytes() + Path(pki["inter"]).read_bytes()
    assert out.read_bytes() == ordered + Path(pki["root"]).read_bytes()


@pytest.mark.parametrize("key_type", ["rsa:2048", "ec:p384"])
def test_csr_verifies_with_openssl(tmp_path: Path, key_type: str) -> None:
    key, req = tmp_path / "k.pem", tmp_path / "r.csr"
    argv = [
        *("csr", "--cn", "www.example.com", "--san", "example.com", "--country", "US"),
        *("--state", "Delaware", "--locality", "Wilmington", "--org", "Example, Inc."),
        *("--ou", "Support", "--email", "admin@example.com", "--key-type", key_type),
        *("--key-out", str(key), "--csr-out", str(req)),
    ]
    assert main(argv) == 0
    result = subprocess.run(
        ["openssl", "req", "-in", str(req), "-verify", "-noout"],
        capture_output=True,
        timeout=IO_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0
    assert b"verify OK" in result.stdout + result.stderr
    subject = openssl("req", "-in", str(req), "-noout", "-subject", "-nameopt", "RFC2253")
    assert subject.decode().strip() == (
        "subject=emailAddress=admin@example.com,CN=www.example.com,OU=Support,"
        "O=Example\\, Inc.,L=Wilmington,ST=Delaware,C=US"
    )
    text = openssl("req", "-in", str(req), "-noout", "-text").decode()
    assert "DNS:www.example.com, DNS:example.com" in text
    assert "sha256" in text.lower()  # sha256WithRSAEncryption or ecdsa-with-SHA256
    assert openssl("req", "-in", str(req), "-noout", "-pubkey") == openssl(
        "pkey", "-in", str(key), "-pubout"
    )


async def _serve_and_connect(bundle: Path, root: str, tls_version: ssl.TLSVersion) -> str:
    """Serve ``bundle`` with a plain SSLContext; a verifying client and s_client connect."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(bundle))  # the bundle as it is: certificates and key
    server_ctx.minimum_version = tls_version
    server_ctx.maximum_version = tls_version

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.send_all(b"hello from the bundle\n")
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, handler, 0, server_ctx, host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]

            client_ctx = ssl.create_default_context(cafile=root)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, client_ctx, server_hostname="www.example.com")
            await client.do_handshake()
            assert client.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(
                tls_version, "TLSv1.3"
            )
            received = b""
            while chunk := await client.receive_some(1024):
                received += chunk
            await client.aclose()

            s_client = await trio.run_process(
                [
                    *("openssl", "s_client", "-connect", f"127.0.0.1:{port}"),
                    *("-servername", "www.example.com", "-CAfile", root),
                    *("-verify_return_error", "-verify_hostname", "www.example.com", "-brief"),
                ],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    assert s_client.returncode == 0, s_client.stderr.decode(errors="replace")
    assert b"Verification: OK" in s_client.stderr
    return received.decode()


@pytest.mark.parametrize(
    "tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_install_cert_bundle_serves_tls(
    tmp_path: Path, pki: dict[str, str], tls_version: ssl.TLSVersion
) -> None:
    """csr-less variant of the CA answer: the pending key, the signed leaf as DER, a p7b chain."""
    signed = tmp_path / "signed.cer"
    signed.write_bytes(openssl("x509", "-in", pki["leaf"], "-outform", "DER"))
    chain = tmp_path / "chain.p7b"
    chain.write_bytes(openssl("crl2pkcs7", "-nocrl", "-certfile", pki["inter"]))
    bundle = tmp_path / "bundle.pem"
    argv = ["install-cert", "--key", pki["key"], "--cert", str(signed), "--chain", str(chain)]
    assert main([*argv, "--out", str(bundle)]) == 0
    loaded = load_certificate_file(str(bundle))
    assert loaded.names == ("www.example.com",)
    assert await _serve_and_connect(bundle, pki["root"], tls_version) == ("hello from the bundle\n")


REPO = Path(__file__).resolve().parents[2]
BACKEND_BODY = b"served by the real server\n"


async def _backend(stream: trio.SocketStream) -> None:
    """A minimal real server: read one request head, answer, close."""
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(BACKEND_BODY)}\r\n\r\n".encode()
            + BACKEND_BODY
        )
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


def _free_port() -> int:
    # The configuration wants a fixed port (0 is refused); the kernel's pick is free right now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command-line tool")
async def test_install_cert_bundle_serves_through_lbproxy_to_curl(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """The issue's item 6: csr-less CA answer -> install-cert -> `lbproxy run` -> curl.

    curl trusts only the root, so it succeeds only if the bind sends the intermediate too.
    """
    bundle = tmp_path / "bundle.pem"
    argv = ["install-cert", "--key", pki["key"], "--cert", pki["leaf"], "--chain", pki["inter"]]
    assert main([*argv, "--out", str(bundle)]) == 0
    with trio.fail_after(IO_TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, _backend, 0, host="127.0.0.1"))
            backend_port = listeners[0].socket.getsockname()[1]
            port = _free_port()
            config = tmp_path / "lbproxy.yaml"
            config.write_text(
                "virtual_servers:\n"
                "  - label: www\n"
                f"    bind: {{address: 127.0.0.1:{port}, tls: {{certificate: {bundle}}}}}\n"
                "    health_check: {enabled: false}\n"
                f"    real_servers: [{{label: web1, address: 127.0.0.1:{backend_port}}}]\n"
            )
            proxy = await trio.lowlevel.open_process(
                [sys.executable, "-m", "l7proxy", "run", "-c", str(config)],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            try:
                assert proxy.stderr is not None
                log = b""
                while b"listening: www" not in log:
                    chunk = await proxy.stderr.receive_some(4096)
                    assert chunk, log.decode(errors="replace")
                    log += chunk
                curl = await trio.run_process(
                    [
                        *("curl", "--silent", "--show-error", "--fail"),
                        *("--cacert", pki["root"]),
                        *("--resolve", f"www.example.com:{port}:127.0.0.1"),
                        f"https://www.example.com:{port}/",
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            finally:
                proxy.terminate()
                await proxy.wait()
            nursery.cancel_scope.cancel()
    assert curl.returncode == 0, curl.stderr.decode(errors="replace")
    assert curl.stdout == BACKEND_BODY


@pytest.mark.e2e
def test_lbproxy_process_reads_password_from_stdin(tmp_path: Path, pki: dict[str, str]) -> None:
    """The installed entry point end to end: the password arrives on stdin, not in argv."""
    pfx = str(tmp_path / "site.pfx")
    openssl(
        *("pkcs12", "-export", "-in", pki["leaf"], "-inkey", pki["key"], "-legacy"),
        *("-out", pfx, "-passout", "env:PFX_PASS"),
        env={"PFX_PASS": SENTINEL},
    )
    out = tmp_path / "out.pem"
    result = subprocess.run(
        [sys.executable, "-m", "l7proxy", "convert-pfx", pfx, "--out", str(out), *FROM_STDIN],
        input=SENTINEL.encode() + b"\n",
        capture_output=True,
        timeout=IO_TIMEOUT,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert SENTINEL.encode() not in result.stdout + result.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "l7proxy",
            "convert-pfx",
            pfx,
            "--out",
            f"{tmp_path}/x.pem",
            *FROM_STDIN,
        ],
        input=b"wrong\n",
        capture_output=True,
        timeout=IO_TIMEOUT,
        cwd=REPO,
        check=False,
    )
    assert wrong.returncode == 1
    assert wrong.stderr.count(b"\n") == 1
    assert b"wrong password, or" in wrong.stderr
    assert b"Traceback" not in wrong.stderr


def shown_line(out: str, label: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(f"  {label}:")]
    return line.split(":", 1)[1].strip()


@pytest.mark.parametrize(
    ("subject", "extra"),
    [
        (
            '/C=US/ST=Delaware/L=Wilmington/O=Example, Inc./OU=Say "hi"; a+b'
            "/CN=www.example.com/emailAddress=ops@example.com",
            [],
        ),
        ("/DC=com/DC=example/O=O1+OU=U1/CN= padded #1 /serialNumber=42", ["-multivalue-rdn"]),
    ],
    ids=["typical", "multi-valued-and-quoted"],
)
def test_show_cert_names_match_openssl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], subject: str, extra: list[str]
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-days", "30", "-subj", subject, *extra, "-keyout", str(key), "-out", str(cert)),
    )
    assert main(["show-cert", str(cert)]) == 0
    out = capsys.readouterr().out
    for label in ("subject", "issuer"):
        printed = openssl("x509", "-in", str(cert), "-noout", f"-{label}").decode().strip()
        assert printed.startswith(f"{label}=")
        assert shown_line(out, label) == printed.removeprefix(f"{label}=")


def test_selfsigned_international_cn_as_openssl_sees_it(tmp_path: Path) -> None:
    out = tmp_path / "idn.pem"
    assert main(["selfsigned", "--cn", "bücher.example", "--out", str(out)]) == 0
    shown = openssl("x509", "-in", str(out), "-noout", "-subject", "-ext", "subjectAltName")
    assert shown.decode().split() == [
        *("subject=CN", "=", "xn--bcher-kva.example"),
        *("X509v3", "Subject", "Alternative", "Name:", "DNS:xn--bcher-kva.example"),
    ]


def test_install_cert_takes_a_key_openssl_encrypted(
    tmp_path: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    encrypted = tmp_path / "enc.key"
    openssl(
        *("pkey", "-in", pki["key"], "-aes256", "-passout", f"file:{pki['pw']}"),
        *("-out", str(encrypted)),
    )
    assert b"ENCRYPTED PRIVATE KEY" in encrypted.read_bytes()
    out = tmp_path / "bundle.pem"
    argv = ["install-cert", "--key", str(encrypted), "--cert", pki["leaf"], "--chain", pki["inter"]]
    assert main([*argv, "--out", str(out), "--key-password-file", pki["pw"]]) == 0
    assert SENTINEL not in "".join(capsys.readouterr())
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert private_der(out.read_bytes()) == private_der(LEAF.private_key_pem.bytes())
    assert load_certificate_file(str(out)).names == ("www.example.com",)
