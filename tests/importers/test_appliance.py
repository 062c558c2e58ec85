"""The appliance pair (HAProxy on the VIP's port 80, Pound terminating TLS on 443 and forwarding to
it) imports to one virtual server that `lbproxy check` passes, and that serves HTTPS with cookie
persistence and the client's address once in X-Forwarded-For."""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import ssl

import trustme
import yaml

from config.importers.pipeline import EXIT_CARRIED, import_configs
from l7proxy.cli import main

from .corpus import CORPUS
from .differential import Ask, echo_servers, free_port, run_haproxy, run_lbproxy, run_pound, send
from .test_differential import differences, haproxy, pound

__all__ = ["haproxy", "pound"]  # fixtures shared with the differential tests

REQUESTS = 4  # enough to see the cookie keep the client on one server


def localize(
    tmp: pathlib.Path, ports: dict[str, int], cert: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    """The corpus appliance files with the VIP, the real servers and the certificate on this
    machine: 127.0.0.1 and free ports."""
    haproxy = (CORPUS / "appliance" / "haproxy.cfg").read_text()
    haproxy = haproxy.replace("192.0.2.10:80", f"127.0.0.1:{ports['vip']}")
    for name, address in (
        ("web1", "10.0.0.11:80"),
        ("web2", "10.0.0.12:80"),
        ("backup", "10.0.0.99:80"),
    ):
        haproxy = haproxy.replace(address, f"127.0.0.1:{ports[name]}")
    pound = (CORPUS / "appliance" / "pound.cfg").read_text()
    pound = re.sub(
        r"Address 192\.0\.2\.10\n(\s*)Port 443",
        f"Address 127.0.0.1\n\\1Port {ports['https']}",
        pound,
    )
    pound = re.sub(
        r"Address 192\.0\.2\.10\n(\s*)Port 80", f"Address 127.0.0.1\n\\1Port {ports['vip']}", pound
    )
    pound = pound.replace("/etc/pound/www.pem", str(cert))
    # The appliance's service accounts do not exist here; running as them is not what is tested.
    haproxy = re.sub(r"(?m)^\s*(user|group) .*\n", "", haproxy)
    pound = re.sub(r"(?m)^(User|Group) .*\n", "", pound)
    (tmp / "haproxy.cfg").write_text(haproxy)
    (tmp / "pound.cfg").write_text(pound)
    return tmp / "haproxy.cfg", tmp / "pound.cfg"


def modernize(haproxy_1x: str) -> str:
    """The appliance's 1.x file in the 2.x spelling Debian's HAProxy 2.6 accepts (the import reads
    the 1.x file itself)."""
    text = re.sub(r"(?m)^(\s*)contimeout ", r"\1timeout connect ", haproxy_1x)
    text = re.sub(r"(?m)^(\s*)clitimeout ", r"\1timeout client ", text)
    text = re.sub(r"(?m)^(\s*)srvtimeout ", r"\1timeout server ", text)
    return re.sub(r"(?m)^listen (\S+) (\S+)$", r"listen \1\n    bind \2", text)


def certificate(tmp: pathlib.Path, ca: trustme.CA) -> pathlib.Path:
    leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")  # Pound wants a CN
    path = tmp / "www.pem"
    path.touch(mode=0o600)
    path.write_bytes(
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()
    )
    return path


def test_appliance_pair_imports_to_one_virtual_server(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    ports = {"vip": 8080, "https": 8443, "web1": 9001, "web2": 9002, "backup": 9009}
    haproxy, pound = localize(tmp_path, ports, certificate(tmp_path, ca))
    result = import_configs(str(haproxy), str(pound), env={})
    assert result.yaml_text is not None
    document = yaml.safe_load(result.yaml_text)
    [vs] = document["virtual_servers"]
    plain, tls = vs["bind"]
    assert plain == "127.0.0.1:8080"
    assert tls["address"] == "127.0.0.1:8443"
    assert tls["tls"]["certificate"] == str(tmp_path / "www.pem")
    assert vs["persistence"] == {"cookie": "SERVERID"}
    assert vs["forwardfor"] is True
    assert vs["health_check"]["http"]["path"] == "/health"
    assert vs["fallback"]["address"] == "127.0.0.1:9009"
    assert [s["label"] for s in vs["real_servers"]] == ["web1", "web2"]
    assert re.search(r"pound\.cfg:\d+: ListenHTTPS: forwarded to this", result.yaml_text)
    # Only process settings of HAProxy are left behind: nothing that changes traffic.
    assert result.status == EXIT_CARRIED, result.report
    out = tmp_path / "lb.yaml"
    out.write_text(result.yaml_text)
    assert main(["check", "-c", str(out)]) == 0


def test_appliance_pair_serves_https_with_persistence_and_one_forwarded_for(
    tmp_path: pathlib.Path, ca: trustme.CA
) -> None:
    with echo_servers(["web1", "web2", "backup"]) as servers:
        ports = {"vip": free_port(), "https": free_port(), **servers}
        haproxy, pound = localize(tmp_path, ports, certificate(tmp_path, ca))
        result = import_configs(str(haproxy), str(pound), env={})
        assert result.yaml_text is not None
        config = tmp_path / "lb.yaml"
        config.write_text(result.yaml_text)
        assert main(["check", "-c", str(config)]) == 0
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with run_lbproxy(config, ports["https"]):
            cookie = None
            answered = []
            for _ in range(REQUESTS):
                conn = http.client.HTTPSConnection(
                    "localhost", ports["https"], context=context, timeout=10
                )
                conn.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
                response = conn.getresponse()
                data = json.loads(response.read())
                conn.close()
                assert response.status == 200
                set_cookie = response.getheader("Set-Cookie")
                if cookie is None:
                    assert set_cookie is not None
                    assert set_cookie.startswith("SERVERID=")
                    cookie = set_cookie.split(";")[0]
                answered.append(data["server"])
                seen = dict(data["headers"])
                # The client's own address, once: not Pound's, not twice.
                assert [v for k, v in data["headers"] if k == "x-forwarded-for"] == ["127.0.0.1"]
                assert seen["x-forwarded-proto"] == "https"
            assert len(set(answered)) == 1
            assert cookie == f"SERVERID={answered[0]}"


def test_appliance_chain_and_its_import_agree_but_for_forwarded_for(
    tmp_path: pathlib.Path, ca: trustme.CA, haproxy: str, pound: str
) -> None:
    """Pound in front of HAProxy, as on the appliance, against lbproxy with the folded import:
    the same answers, cookies and headers, except X-Forwarded-For, where the chain shows Pound's
    address after the client's."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    asks = [
        Ask(path="/"),
        Ask(path="/a", keep_cookie=True),
        Ask(method="POST", path="/b", keep_cookie=True),
    ]
    with echo_servers(["web1", "web2", "backup"]) as servers:
        cert = certificate(tmp_path, ca)
        chain_dir, ours_dir = tmp_path / "chain", tmp_path / "ours"
        chain_dir.mkdir()
        ours_dir.mkdir()
        chain = {"vip": free_port(), "https": free_port(), **servers}
        ours = {"vip": free_port(), "https": free_port(), **servers}
        chain_haproxy, chain_pound = localize(chain_dir, chain, cert)
        our_haproxy, our_pound = localize(ours_dir, ours, cert)
        result = import_configs(str(our_haproxy), str(our_pound), env={})
        assert result.yaml_text is not None
        config = ours_dir / "lb.yaml"
        config.write_text(result.yaml_text)
        with (
            run_haproxy(chain_dir, modernize(chain_haproxy.read_text()), chain["vip"]),
            run_pound(chain_dir, pound, chain_pound.read_text(), chain["https"]),
        ):
            theirs = send(chain["https"], asks, context)
        with run_lbproxy(config, ours["https"]):
            mine = send(ours["https"], asks, context)
    found = differences(theirs, mine, asks)
    expected = [
        f"{ask.method} {ask.path} {{}}: server received x-forwarded-for: "
        "original ('127.0.0.1, 127.0.0.1',), lbproxy ('127.0.0.1',)"
        for ask in asks
    ]
    assert found == expected
