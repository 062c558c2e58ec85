"""The toolkit subcommands through ``lbproxy``'s main(): exit codes, messages, files and modes."""

from __future__ import annotations

import datetime
import getpass
import io
import logging
import os
import stat
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from l7proxy.cli import main
from tests.tls.certs import self_signed
from tls.store import key_matches, load_certificate_file, parse_pem_bundle

NOW = datetime.datetime.now(datetime.UTC)
ROOT = trustme.CA()
INTERMEDIATE = ROOT.create_child_ca()
LEAF = INTERMEDIATE.issue_cert("www.example.com")
LEAF_PEM = LEAF.cert_chain_pems[0].bytes()
INTER_PEM = LEAF.cert_chain_pems[1].bytes()
KEY_PEM = LEAF.private_key_pem.bytes()
LEAF_CERT = x509.load_pem_x509_certificate(LEAF_PEM)
INTER_CERT = x509.load_pem_x509_certificate(INTER_PEM)
ROOT_CERT = x509.load_pem_x509_certificate(ROOT.cert_pem.bytes())
LEAF_KEY = parse_pem_bundle(KEY_PEM, "key")[0]
assert LEAF_KEY is not None

SENTINEL = "Sentinel-Pa55-q7Zx"  # a password that must never show up anywhere
WRONG = "not-the-password"


def make_pfx(password: str, *, with_key: bool = True) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    if with_key:
        return pkcs12.serialize_key_and_certificates(
            b"site", LEAF_KEY, LEAF_CERT, [ROOT_CERT, INTER_CERT], encryption
        )
    return pkcs12.serialize_key_and_certificates(
        None, None, None, [INTER_CERT, LEAF_CERT], encryption
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard input is an empty pipe unless a test says otherwise: no prompt can happen."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))


def one_error_line(err: str, path: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}"), err
    assert "Traceback" not in err
    return lines[0]


# --- csr --------------------------------------------------------------------------------------


def test_csr_writes_key_0600_and_prints_the_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, req = tmp_path / "site.key", tmp_path / "site.csr"
    code = main(
        [
            *("csr", "--cn", "www.example.com", "--san", "example.com", "--country", "de"),
            *("--org", "Example, Inc.", "--key-type", "ec:p256"),
            *("--key-out", str(key), "--csr-out", str(req)),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert mode(key) == 0o600
    assert out == req.read_text()
    request = x509.load_pem_x509_csr(req.read_bytes())
    assert request.is_signature_valid
    assert request.subject.rfc4514_string() == "CN=www.example.com,O=Example\\, Inc.,C=DE"
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com", "example.com"]
    private = parse_pem_bundle(key.read_bytes(), str(key))[0]
    assert private is not None
    assert private.public_key() == request.public_key()
    assert "0600" in err


def test_csr_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, req = tmp_path / "site.key", tmp_path / "site.csr"
    key.write_bytes(b"precious")
    argv = ["csr", "--cn", "a.example.com", "--key-type", "ec:p256"]
    argv += ["--key-out", str(key), "--csr-out", str(req)]
    assert main(argv) == 1
    assert "already exists (use --force" in one_error_line(capsys.readouterr().err, str(key))
    assert key.read_bytes() == b"precious"
    assert not req.exists()
    assert main([*argv, "--force"]) == 0
    assert mode(key) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--country", "USA"], "--country: must be two letters"),
        (["--org", "Bad\x07Org"], "--org: control characters"),
        (["--san", "not a host"], "--san: 'not a host' is not a valid host name"),
        (["--email", "nobody"], "--email: 'nobody' is not an e-mail address"),
    ],
)
def test_csr_bad_subject_exits_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    key, req = tmp_path / "k", tmp_path / "r"
    argv = ["csr", "--cn", "www.example.com", "--key-out", str(key), "--csr-out", str(req)]
    assert main(argv + extra) == 1
    assert one_error_line(capsys.readouterr().err, message)
    assert not key.exists()
    assert not req.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["csr", "--cn", "x.example.com"],
        ["csr", "--cn", "x.example.com", "--key-out", "k", "--csr-out", "r", "--key-type", "dsa"],
        ["csr", "--cn", "x.example.com", "--key-out", "same", "--csr-out", "same"],
        ["convert-pfx", "in.pfx"],
        ["convert-pfx", "in.pfx", "--out", "a.pem", "--key-out", "k.pem"],
        ["convert-pfx", "in.pfx", "--out", "a.pem", "--password", "secret"],
        ["convert-pfx", "in.pfx", "--out", "a", "--password-file", "f", "--password-env", "V"],
        ["convert-cer", "in.cer"],
        ["install-cert", "--key", "k", "--cert", "c"],
        ["selfsigned", "--out", "x.pem"],
        ["selfsigned", "--cn", "x", "--out", "x.pem", "--days", "ten"],
        ["show-cert"],
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


# --- convert-pfx ------------------------------------------------------------------------------


def test_convert_pfx_bundle_loads_and_is_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    password = write(tmp_path / "pw.txt", SENTINEL.encode() + b"\n")
    out = tmp_path / "site.pem"
    assert main(["convert-pfx", pfx, "--out", str(out), "--password-file", password]) == 0
    assert mode(out) == 0o600
    key, certs = parse_pem_bundle(out.read_bytes(), str(out))
    assert certs == [LEAF_CERT, INTER_CERT, ROOT_CERT]
    assert key is not None
    assert key_matches(key, LEAF_CERT)
    assert load_certificate_file(str(out)).names == ("www.example.com",)
    assert "3 certificate(s)" in capsys.readouterr().out


def test_convert_pfx_separate_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    monkeypatch.setenv("PFX_PASSWORD", SENTINEL)
    key, cert, chain = tmp_path / "k.pem", tmp_path / "c.pem", tmp_path / "chain.pem"
    argv = ["convert-pfx", pfx, "--password-env", "PFX_PASSWORD"]
    argv += ["--key-out", str(key), "--cert-out", str(cert), "--chain-out", str(chain)]
    assert main(argv) == 0
    assert (mode(key), mode(cert), mode(chain)) == (0o600, 0o644, 0o644)
    assert x509.load_pem_x509_certificates(cert.read_bytes()) == [LEAF_CERT]
    assert x509.load_pem_x509_certificates(chain.read_bytes()) == [INTER_CERT, ROOT_CERT]
    private = parse_pem_bundle(key.read_bytes(), str(key))[0]
    assert private is not None
    assert key_matches(private, LEAF_CERT)


def test_convert_pfx_password_file_first_line_and_no_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pfx = write(
        tmp_path / "leaf.pfx",
        pkcs12.serialize_key_and_certificates(
            None, LEAF_KEY, LEAF_CERT, None, serialization.BestAvailableEncryption(b"pw")
        ),
    )
    password = write(tmp_path / "pw", b"pw\r\nsecond line is not part of it\n")
    chain = tmp_path / "chain.pem"
    argv = ["convert-pfx", pfx, "--password-file", password, "--cert-out", str(tmp_path / "c")]
    assert main([*argv, "--chain-out", str(chain)]) == 0
    assert not chain.exists()
    assert "no intermediate certificates" in capsys.readouterr().err


def test_convert_pfx_password_env_is_taken_as_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value that is not UTF-8 must not end in an encoding error that quotes it."""
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    monkeypatch.setitem(os.environb, b"PFX_BYTES", b"\xffsecret")
    assert (
        main(["convert-pfx", pfx, "--out", str(tmp_path / "o"), "--password-env", "PFX_BYTES"]) == 1
    )
    err = capsys.readouterr().err
    assert "the password is not valid UTF-8 text" in one_error_line(err, pfx)
    assert "secret" not in err


def test_convert_pfx_password_from_stdin_and_encrypt_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SENTINEL.encode() + b"\r\n")))
    key = tmp_path / "k.pem"
    argv = ["convert-pfx", pfx, "--password-file", "-", "--key-out", str(key), "--encrypt-key"]
    assert main(argv) == 0
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    private = serialization.load_pem_private_key(key.read_bytes(), SENTINEL.encode())
    assert private.public_key() == LEAF_CERT.public_key()


def test_convert_pfx_prompts_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    prompts: list[str] = []

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return SENTINEL

    def end_of_input(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"")))
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert main(["convert-pfx", pfx, "--out", str(tmp_path / "o.pem")]) == 0
    assert prompts == [f"Password for {pfx}: "]
    monkeypatch.setattr(getpass, "getpass", end_of_input)  # Ctrl-D at the prompt
    assert main(["convert-pfx", pfx, "--out", str(tmp_path / "p.pem")]) == 1
    assert capsys.readouterr().err == "error: no password given\n"


def test_convert_pfx_empty_password_and_certificate_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = write(tmp_path / "empty.pfx", make_pfx(""))
    assert main(["convert-pfx", empty, "--out", str(tmp_path / "e.pem")]) == 0
    assert mode(tmp_path / "e.pem") == 0o600
    certs_only = write(tmp_path / "certs.pfx", make_pfx("", with_key=False))
    out = tmp_path / "c.pem"
    assert main(["convert-pfx", certs_only, "--out", str(out)]) == 0
    assert x509.load_pem_x509_certificates(out.read_bytes()) == [LEAF_CERT, INTER_CERT]
    assert b"PRIVATE KEY" not in out.read_bytes()
    assert mode(out) == 0o644
    assert "no private key in the file" in capsys.readouterr().err
    assert main(["convert-pfx", certs_only, "--key-out", str(tmp_path / "k.pem")]) == 1
    assert "holds no private key" in one_error_line(capsys.readouterr().err, certs_only)


@pytest.mark.parametrize(
    ("password_args", "cause"),
    [
        (["--password-env", "PFX_WRONG"], "wrong password, or the file is encrypted with an"),
        ([], "needs a password: give --password-file FILE or --password-env VAR"),
        (["--password-env", "UNSET_VARIABLE_X"], None),
    ],
    ids=["wrong", "none-and-no-terminal", "unset-variable"],
)
def test_convert_pfx_password_failures(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    password_args: list[str],
    cause: str | None,
) -> None:
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    monkeypatch.setenv("PFX_WRONG", WRONG)
    monkeypatch.delenv("UNSET_VARIABLE_X", raising=False)
    out = tmp_path / "o.pem"
    assert main(["convert-pfx", pfx, "--out", str(out), *password_args]) == 1
    err = capsys.readouterr().err
    if cause is None:
        assert err.strip() == "error: --password-env: the variable UNSET_VARIABLE_X is not set"
    else:
        assert cause in one_error_line(err, pfx)
    assert WRONG not in err
    assert not out.exists()


def test_convert_pfx_bad_input_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "absent.pfx")
    assert main(["convert-pfx", missing, "--out", str(tmp_path / "o")]) == 1
    assert "cannot read: No such file" in one_error_line(capsys.readouterr().err, missing)
    not_pfx = write(tmp_path / "text.pfx", b"hello")
    assert main(["convert-pfx", not_pfx, "--out", str(tmp_path / "o")]) == 1
    assert "not a PKCS#12" in one_error_line(capsys.readouterr().err, not_pfx)


# --- convert-cer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (LEAF_CERT.public_bytes(serialization.Encoding.DER), [LEAF_CERT]),
        (LEAF_PEM, [LEAF_CERT]),
        (
            pkcs7.serialize_certificates(
                [ROOT_CERT, LEAF_CERT, INTER_CERT], serialization.Encoding.DER
            ),
            [LEAF_CERT, INTER_CERT, ROOT_CERT],
        ),
        (
            pkcs7.serialize_certificates([INTER_CERT, LEAF_CERT], serialization.Encoding.PEM),
            [LEAF_CERT, INTER_CERT],
        ),
    ],
    ids=["der", "pem", "p7b-der", "p7b-pem"],
)
def test_convert_cer_by_content_not_name(
    tmp_path: Path, data: bytes, expected: list[x509.Certificate]
) -> None:
    source = write(tmp_path / "upload.txt", data)  # the name says nothing
    out = tmp_path / "out.pem"
    assert main(["convert-cer", source, "--out", str(out)]) == 0
    assert x509.load_pem_x509_certificates(out.read_bytes()) == expected
    assert mode(out) == 0o644


def test_convert_cer_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "bad.cer", b"\x00\x01garbage")
    assert main(["convert-cer", source, "--out", str(tmp_path / "o.pem")]) == 1
    assert "neither PEM, DER nor PKCS#7" in one_error_line(capsys.readouterr().err, source)
    assert not (tmp_path / "o.pem").exists()


# --- install-cert -----------------------------------------------------------------------------


def test_install_cert_assembles_a_loadable_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write(tmp_path / "pending.key", KEY_PEM)
    cert = write(tmp_path / "signed.cer", LEAF_CERT.public_bytes(serialization.Encoding.DER))
    chain = write(tmp_path / "chain.pem", ROOT.cert_pem.bytes() + INTER_PEM)
    out = tmp_path / "bundle.pem"
    argv = ["install-cert", "--key", key, "--cert", cert, "--chain", chain, "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert mode(out) == 0o600
    loaded = load_certificate_file(str(out))
    assert loaded.chain_pem == LEAF_PEM + INTER_PEM + ROOT.cert_pem.bytes()
    assert "warning: " in captured.err
    assert "root certificate" in captured.err
    assert "www.example.com" in captured.out


def test_install_cert_missing_intermediate_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write(tmp_path / "pending.key", KEY_PEM)
    cert = write(tmp_path / "signed.pem", LEAF_PEM)
    assert main(["install-cert", "--key", key, "--cert", cert, "--out", str(tmp_path / "b")]) == 0
    assert "no intermediate certificate" in capsys.readouterr().err


def test_install_cert_wrong_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = INTERMEDIATE.issue_cert("other.example.com").private_key_pem.bytes()
    key = write(tmp_path / "pending.key", other)
    cert = write(tmp_path / "signed.pem", LEAF_PEM)
    out = tmp_path / "b.pem"
    assert main(["install-cert", "--key", key, "--cert", cert, "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err, cert)
    assert f"matches the pending key {key}" in line
    assert not out.exists()


def encrypted_key(password: str, *, legacy: bool = False) -> bytes:
    """The leaf's key encrypted: PKCS#8 (``ENCRYPTED PRIVATE KEY``) or the legacy PKCS#1 form."""
    assert LEAF_KEY is not None
    form = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if legacy
        else (serialization.PrivateFormat.PKCS8)
    )
    return LEAF_KEY.private_bytes(
        serialization.Encoding.PEM, form, serialization.BestAvailableEncryption(password.encode())
    )


class Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("legacy", [False, True], ids=["pkcs8", "pkcs1"])
def test_install_cert_decrypts_an_encrypted_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    legacy: bool,
) -> None:
    key = write(tmp_path / "pending.key", encrypted_key(SENTINEL, legacy=legacy))
    cert = write(tmp_path / "signed.pem", LEAF_PEM + INTER_PEM)
    password = write(tmp_path / "pw", SENTINEL.encode() + b"\n")
    monkeypatch.setenv("KEY_PASSWORD", SENTINEL)
    base = ["install-cert", "--key", key, "--cert", cert, "--out"]
    for index, options in enumerate(
        (["--key-password-file", password], ["--key-password-env", "KEY_PASSWORD"])
    ):
        out = tmp_path / f"bundle{index}.pem"
        assert main([*base, str(out), *options]) == 0, capsys.readouterr().err
        assert mode(out) == 0o600
        assert b"ENCRYPTED" not in out.read_bytes()
        assert load_certificate_file(str(out)).chain_pem == LEAF_PEM + INTER_PEM

    prompts: list[str] = []

    def typed(prompt: str = "") -> str:
        prompts.append(prompt)
        return SENTINEL

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"")))
    monkeypatch.setattr(getpass, "getpass", typed)
    assert main([*base, str(tmp_path / "prompted.pem")]) == 0
    assert prompts == [f"Password for {key}: "]
    printed, logged = capsys.readouterr()
    assert SENTINEL not in printed + logged


@pytest.mark.parametrize(
    ("options", "cause"),
    [
        (
            [],
            "the private key is encrypted: give --key-password-file FILE or "
            "--key-password-env VAR (no terminal to ask on)",
        ),
        (
            ["--key-password-env", "KEY_WRONG"],
            "cannot decrypt the private key: wrong password, or the key is damaged",
        ),
        (["--key-password-env", "UNSET_VARIABLE_X"], None),
    ],
    ids=["no-password-no-terminal", "wrong-password", "unset-variable"],
)
def test_install_cert_encrypted_key_failures(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    cause: str | None,
) -> None:
    monkeypatch.setenv("KEY_WRONG", WRONG)
    key = write(tmp_path / "pending.key", encrypted_key(SENTINEL))
    cert = write(tmp_path / "signed.pem", LEAF_PEM + INTER_PEM)
    out = tmp_path / "bundle.pem"
    assert main(["install-cert", "--key", key, "--cert", cert, "--out", str(out), *options]) == 1
    err = capsys.readouterr().err
    if cause is None:
        assert err == "error: --key-password-env: the variable UNSET_VARIABLE_X is not set\n"
    else:
        assert one_error_line(err, key) == f"error: {key}: {cause}"
    assert WRONG not in err
    assert SENTINEL not in err
    assert not out.exists()


def test_selfsigned_and_csr_put_an_international_cn_as_its_a_label(tmp_path: Path) -> None:
    out = tmp_path / "self.pem"
    assert main(["selfsigned", "--cn", "bücher.example", "--out", str(out)]) == 0
    self_signed = x509.load_pem_x509_certificate(out.read_bytes())
    request_path = tmp_path / "r.csr"
    argv = ["csr", "--cn", "bücher.example", "--key-type", "ec:p256"]
    assert main([*argv, "--key-out", str(tmp_path / "k"), "--csr-out", str(request_path)]) == 0
    request = x509.load_pem_x509_csr(request_path.read_bytes())
    for made in (self_signed, request):
        [cn] = made.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert cn.value == "xn--bcher-kva.example"
        san = made.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]


# --- selfsigned and show-cert -----------------------------------------------------------------


def test_selfsigned_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "self.pem"
    argv = ["selfsigned", "--cn", "lb.example.com", "--san", "10.0.0.5", "--out", str(out)]
    assert main([*argv, "--days", "30", "--key-type", "ec:p256"]) == 0
    assert mode(out) == 0o600
    loaded = load_certificate_file(str(out))
    assert loaded.names == ("lb.example.com",)
    assert 29 <= (loaded.not_after - NOW).days <= 30
    assert "sha256" in capsys.readouterr().out
    assert main([*argv, "--days", "0"]) == 1


def test_show_cert_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    der = write(tmp_path / "a.cer", LEAF_CERT.public_bytes(serialization.Encoding.DER))
    assert main(["show-cert", der]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{der}: 1 certificate(s), DER\n")
    for label in ("subject:", "names:", "issuer:", "valid:", "key:", "sha256:", "chain order:"):
        assert label in out
    assert "day(s) left" in out
    assert "EC P-256" in out

    pfx = write(tmp_path / "b.pfx", make_pfx(SENTINEL))
    password = write(tmp_path / "pw", SENTINEL.encode())
    assert main(["show-cert", pfx, "--password-file", password]) == 0
    out = capsys.readouterr().out
    assert "3 certificate(s), PKCS#12" in out
    assert "private key: EC P-256, matches the leaf" in out
    assert main(["show-cert", pfx]) == 1
    assert "needs a password" in one_error_line(capsys.readouterr().err, pfx)


def test_show_cert_with_an_encrypted_key_shows_the_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write(tmp_path / "site.pem", encrypted_key(SENTINEL) + LEAF_PEM + INTER_PEM)
    assert main(["show-cert", bundle]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{bundle}: 2 certificate(s), PEM\n")
    assert "certificate 1 (leaf):" in out
    assert "certificate 2 (chain):" in out
    assert "DNS:www.example.com" in out
    assert out.endswith("private key: encrypted (not read; a TLS bind needs it unencrypted)\n")


def test_show_cert_subject_in_certificate_order_with_short_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "www.example.com"),
            x509.NameAttribute(x509.NameOID.EMAIL_ADDRESS, "ops@example.com"),
        ]
    )
    cert, _ = self_signed(name, not_before=NOW - datetime.timedelta(days=1))
    path = write(tmp_path / "c.pem", cert.public_bytes(serialization.Encoding.PEM))
    assert main(["show-cert", path]) == 0
    out = capsys.readouterr().out
    expected = 'C = US, O = "Example, Inc.", CN = www.example.com, emailAddress = ops@example.com'
    assert f"  subject:     {expected}\n" in out
    assert f"  issuer:      {expected}\n" in out
    assert "1.2.840.113549.1.9.1" not in out


# --- secrets ----------------------------------------------------------------------------------


def _key_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def test_secrets_never_reach_output_or_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every command, with a sentinel password and a known key: neither is ever shown."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PFX_PASSWORD", SENTINEL)
    monkeypatch.setenv("PFX_WRONG", WRONG)
    pfx = write(tmp_path / "site.pfx", make_pfx(SENTINEL))
    password = write(tmp_path / "pw", SENTINEL.encode())
    bundle = write(tmp_path / "bundle.pem", KEY_PEM + LEAF_PEM + INTER_PEM)
    key = write(tmp_path / "pending.key", KEY_PEM)
    encrypted = write(tmp_path / "encrypted.key", encrypted_key(SENTINEL))
    d = tmp_path
    runs = [
        ["convert-pfx", pfx, "--out", f"{d}/1.pem", "--password-file", password],
        ["convert-pfx", pfx, "--key-out", f"{d}/2.key", "--password-env", "PFX_PASSWORD"],
        [
            *("convert-pfx", pfx, "--key-out", f"{d}/3.key"),
            *("--password-env", "PFX_PASSWORD", "--encrypt-key"),
        ],
        ["convert-pfx", pfx, "--out", f"{d}/4.pem", "--password-env", "PFX_WRONG"],
        ["show-cert", pfx, "--password-file", password],
        ["show-cert", bundle],
        ["convert-cer", bundle, "--out", f"{d}/5.pem"],
        ["install-cert", "--key", key, "--cert", bundle, "--out", f"{d}/6.pem"],
        ["install-cert", "--key", key, "--cert", bundle, "--out", f"{d}/6.pem"],  # exists
        [
            *("install-cert", "--key", encrypted, "--cert", bundle, "--out", f"{d}/9.pem"),
            *("--key-password-env", "PFX_PASSWORD"),
        ],
        [
            *("install-cert", "--key", encrypted, "--cert", bundle, "--out", f"{d}/10.pem"),
            *("--key-password-env", "PFX_WRONG"),
        ],
        ["selfsigned", "--cn", "s.example.com", "--out", f"{d}/7.pem", "--key-type", "ec:p256"],
        [
            *("csr", "--cn", "c.example.com", "--key-out", f"{d}/8.key"),
            *("--csr-out", f"{d}/8.csr", "--key-type", "ec:p256"),
        ],
    ]
    codes = [main(argv) for argv in runs]
    assert codes == [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 0]
    out, err = capsys.readouterr()
    shown = out + err + caplog.text
    generated = [(d / name).read_bytes() for name in ("7.pem", "8.key")]
    secret_lines = _key_body_lines(KEY_PEM) + [
        line for pem in generated for line in _key_body_lines(pem[pem.index(b"-----BEGIN P") :])
    ]
    assert SENTINEL not in shown
    assert WRONG not in shown
    assert all(line not in shown for line in secret_lines)
    assert "PRIVATE KEY-----" not in shown
    outputs = [path for path in d.iterdir() if path.name[0].isdigit()]
    assert len(outputs) == 9
    for path in outputs:
        if b"PRIVATE KEY" in path.read_bytes():
            assert mode(path) & 0o077 == 0, path
