"""``tls`` on pools and real servers (re-encryption): reading, inheritance, refusals, and the
CA and client certificate files that ``lbproxy check`` loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from config.loader import ConfigError, load_text
from config.model import Pool, ServerTls, Verify
from l7proxy.cli import main


def pool_of(text: str, source: str = "/etc/lb/lb.yaml") -> Pool:
    return load_text(text, source).virtual_servers[0].pool


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "lb.yaml")
    return caught.value.problems


POOL_TLS = """\
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    tls: {ca: ca.pem, sni: Backend.Example}
    fallback: {address: 127.0.0.1:9000, tls: false}
    real_servers:
      - {label: a, address: 127.0.0.1:8443}
      - {label: b, address: 127.0.0.1:8444, tls: {verify: none}}
      - {label: c, address: 127.0.0.1:8080, tls: false}
"""


def test_pool_tls_reaches_its_servers_unless_they_say_otherwise() -> None:
    pool = pool_of(POOL_TLS)
    a, b, c = pool.real_servers
    assert a.tls == ServerTls(ca="/etc/lb/ca.pem", sni="backend.example")
    assert b.tls == ServerTls(verify=Verify.NONE)
    assert c.tls is None
    assert pool.fallback is not None
    assert pool.fallback.tls is None


def test_defaults_verify_against_the_system_cas() -> None:
    text = POOL_TLS.replace("tls: {ca: ca.pem, sni: Backend.Example}", "tls: true")
    text = text.replace("{address: 127.0.0.1:9000, tls: false}", "127.0.0.1:9000")
    pool = pool_of(text)
    assert pool.real_servers[0].tls == ServerTls(verify=Verify.REQUIRED, ca=None, sni=None)
    assert pool.fallback is not None
    assert pool.fallback.tls == ServerTls()


def test_sni_host_takes_the_request_host() -> None:
    pool = pool_of(POOL_TLS.replace("sni: Backend.Example", "sni: host"))
    tls = pool.real_servers[0].tls
    assert tls is not None
    assert tls.sni_from_host
    assert tls.sni is None


@pytest.mark.parametrize(
    ("tls", "where", "message"),
    [
        ("{verify: optional}", "4:19: virtual_servers[0].tls.verify", "'optional'"),
        ("{sni: 10.0.0.1}", "4:16: virtual_servers[0].tls.sni", "SNI cannot carry an IP"),
        ("{sni: 'a b'}", "4:16: virtual_servers[0].tls.sni", "is not a host name"),
        ("{verify: none, ca: x.pem}", "4:25: virtual_servers[0].tls.ca", "no use with"),
        ("{cafile: x.pem}", "4:11: virtual_servers[0].tls.cafile", "unknown key"),
        ("[ca.pem]", "4:10: virtual_servers[0].tls", "expected a mapping"),
    ],
)
def test_bad_tls_settings_name_line_and_key(tls: str, where: str, message: str) -> None:
    problems = problems_of(POOL_TLS.replace("{ca: ca.pem, sni: Backend.Example}", tls))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"lb.yaml:{where}: "), problems
    assert message in problems[0]


def check_file(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        f"    real_servers: [{{label: a, address: 127.0.0.1:8443, tls: {tls}}}]\n"
    )
    return path


def test_check_loads_good_ca_and_client_certificate(
    tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("lbproxy.example").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "client.pem")
    )
    path = check_file(tmp_path, "{ca: ca.pem, certificate: client.pem}")
    assert main(["check", "-c", str(path)]) == 0
    assert "configuration is valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("files", "tls", "problem"),
    [
        ({}, "{ca: ca.pem}", "tls ca: {d}/ca.pem: cannot read: No such file or directory"),
        (
            {"ca.pem": "not a certificate\n"},
            "{ca: ca.pem}",
            "tls ca: {d}/ca.pem: no PEM block found (expected -----BEGIN CERTIFICATE-----)",
        ),
        (
            {"client.pem": "cert-only"},
            "{certificate: client.pem}",
            "tls certificate: {d}/client.pem: no private key in the file and no client.pem.key "
            "or client.key beside it",
        ),
    ],
    ids=["missing-ca", "bad-ca", "client-certificate-without-key"],
)
def test_check_names_the_bad_file_and_the_cause(
    tmp_path: Path,
    ca: trustme.CA,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    tls: str,
    problem: str,
) -> None:
    for name, content in files.items():
        if content == "cert-only":
            content = ca.issue_cert("lbproxy.example").cert_chain_pems[0].bytes().decode()
        (tmp_path / name).write_text(content)
    path = check_file(tmp_path, tls)
    assert main(["check", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    expected = f"{path}: pool www, server a: " + problem.format(d=tmp_path)
    assert err.splitlines() == [expected]
