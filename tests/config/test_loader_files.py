"""The loader as operators meet it: files, several problems at once, paths, YAML idioms."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from config.conditions import HostIs, HostSuffix
from config.loader import MAX_CONFIG_BYTES, ConfigError, load_file, load_text
from config.model import (
    Address,
    AdminState,
    CertificateSpec,
    SourcePersistence,
    TlsSettings,
)

GOOD = """\
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    real_servers:
      - {label: web1, address: 127.0.0.1:8081}
"""


def problems_of(text: str, source: str = "lb.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, source)
    return caught.value.problems


def where(problem: str) -> str:
    """'lb.yaml:3:5: a.b: message' -> '3:5: a.b'"""
    _, line, column, path, _ = problem.split(":", 4)
    return f"{line}:{column}:{path}"


def test_every_problem_of_a_file_is_reported_in_order() -> None:
    text = """\
global:
  grace: soon
  log_levl: debug
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    balance: random
    real_servers:
      - {label: web1, address: 127.0.0.1:8081, weight: 1000}
      - {label: web1, address: "127.0.0.1:99999"}
    rules:
      - {path_prefix: /api, pool: api}
  - label: two
    bind: 127.0.0.1:8080
    real_servers: []
"""
    problems = problems_of(text)
    assert [where(p) for p in problems] == [
        "2:10: global.grace",
        "3:3: global.log_levl",
        "7:14: virtual_servers[0].balance",
        "9:56: virtual_servers[0].real_servers[0].weight",
        "10:17: virtual_servers[0].real_servers[1].label",
        "10:32: virtual_servers[0].real_servers[1].address",
        "12:35: virtual_servers[0].rules[0].pool",
        "14:11: virtual_servers[1].bind",
        "15:19: virtual_servers[1].real_servers",
    ]
    assert all(p.startswith("lb.yaml:") and "\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("snippet", "path", "suggestion"),
    [
        ("global: {stat_dir: x}\n", "global.stat_dir", "state_dir"),
        ("global: {acces_log: true}\n", "global.acces_log", "access_log"),
        ("    lable: x\n", "virtual_servers[0].lable", "label"),
        ("    helth_check: {}\n", "virtual_servers[0].helth_check", "health_check"),
        (
            "    health_check: {intreval: 2s}\n",
            "virtual_servers[0].health_check.intreval",
            "interval",
        ),
        ("    timeouts: {conect: 2s}\n", "virtual_servers[0].timeouts.conect", "connect"),
        ("    persistance: {}\n", "virtual_servers[0].persistance", "persistence"),
        (
            "    persistence: {cookie: A, http_only: true}\n",
            "virtual_servers[0].persistence.http_only",
            "httponly",
        ),
        (
            "    rewrite_locations: true\n",
            "virtual_servers[0].rewrite_locations",
            "rewrite_location",
        ),
        (
            "    rules: [{path_prefx: /a, pool: p}]\n",
            "virtual_servers[0].rules[0].path_prefx",
            "path_prefix",
        ),
    ],
)
def test_unknown_key_suggests_the_close_one(snippet: str, path: str, suggestion: str) -> None:
    text = snippet + GOOD if snippet.startswith("global") else GOOD + snippet
    problems = problems_of(text + "pools: {p: {real_servers: [{label: a, address: h:1}]}}\n")
    matching = [p for p in problems if f": {path}: " in p]
    assert len(matching) == 1, problems
    assert matching[0].endswith(f"unknown key (did you mean '{suggestion}'?)")


def test_relative_paths_are_resolved_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "lb.yaml").write_text(
        "global: {state_dir: ../var/state}\n"
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind:\n"
        "      - address: 127.0.0.1:8443\n"
        "        tls:\n"
        "          certificate: [certs/a.pem, /abs/b.pem, {path: ./c.pem, default: true}]\n"
        "          client_ca: ca/clients.pem\n"
        "          verify: required\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter

    config = load_file("../etc/lb.yaml")

    assert config.global_.state_dir == str(tmp_path / "var" / "state")
    tls = config.virtual_servers[0].binds[0].tls
    assert tls is not None
    assert tls.certificates == (
        CertificateSpec(str(conf_dir / "certs" / "a.pem")),
        CertificateSpec("/abs/b.pem"),
        CertificateSpec(str(conf_dir / "c.pem"), default=True),
    )
    assert tls.client_ca == str(conf_dir / "ca" / "clients.pem")
    assert all(os.path.isabs(spec.path) for spec in tls.certificates)


def test_load_text_resolves_against_the_source_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_text(GOOD, "lb.yaml").global_.state_dir == str(tmp_path / "lbproxy-state")
    assert load_text(GOOD, "/srv/lb/lb.yaml").global_.state_dir == "/srv/lb/lbproxy-state"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as caught:
        load_file(missing)
    assert caught.value.problems == [
        f"{missing}:1:1: (file): cannot read the file: No such file or directory"
    ]
    with pytest.raises(ConfigError) as caught:
        load_file(str(tmp_path))
    assert caught.value.problems == [
        f"{tmp_path}:1:1: (file): cannot read the file: Is a directory"
    ]


def test_not_utf8_is_reported_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_bytes(b"virtual_servers:\n  - label: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_file(str(path))
    assert caught.value.problems == [f"{path}:2:15: (file): not UTF-8 text (byte 0xe9)"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as caught:
        load_file(str(path))
    assert len(caught.value.problems) == 1
    assert "larger than" in caught.value.problems[0]


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    assert load_file(str(path)).virtual_servers[0].label == "www"


def test_merge_keys_share_settings_without_duplicate_complaints() -> None:
    text = """\
x-defaults: &server {weight: 5, state: drain}
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    real_servers:
      - {<<: *server, label: a, address: 127.0.0.1:1}
      - {<<: *server, label: b, address: 127.0.0.1:2, weight: 7}
"""
    # A top-level extension key is still an unknown key: the merge source must live elsewhere.
    problems = problems_of(text)
    assert [where(p) for p in problems] == ["1:1: x-defaults"]

    text = text.replace("x-defaults: &server {weight: 5, state: drain}\n", "")
    text = text.replace("<<: *server", "<<: {weight: 5, state: drain}")
    servers = load_text(text, "lb.yaml").virtual_servers[0].pool.real_servers
    assert [(s.label, s.weight, s.state) for s in servers] == [
        ("a", 5, AdminState.DRAIN),
        ("b", 7, AdminState.DRAIN),
    ]


def test_merge_from_an_anchor_inside_the_config() -> None:
    text = """\
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    health_check: &checks {interval: 5s, rise: 3}
    real_servers: [{label: a, address: 127.0.0.1:1}]
  - label: two
    bind: 127.0.0.1:8090
    health_check: {<<: *checks, rise: 4}
    real_servers: [{label: a, address: 127.0.0.1:2}]
"""
    first, second = load_text(text, "lb.yaml").virtual_servers
    assert (first.pool.health_check.interval, first.pool.health_check.rise) == (5.0, 3)
    assert (second.pool.health_check.interval, second.pool.health_check.rise) == (5.0, 4)


@pytest.mark.parametrize(
    ("bind", "tls"),
    [
        ("{address: 127.0.0.1:8443, tls: true}", TlsSettings()),
        ("{address: 127.0.0.1:8443, tls: {}}", TlsSettings()),
        ("{address: 127.0.0.1:8443, tls: false}", None),
        ("{address: 127.0.0.1:8443}", None),
        ("{address: 127.0.0.1:8443, tls: {min_version: 1.3}}", TlsSettings(min_version="1.3")),
        ("{address: 127.0.0.1:8443, tls: {min_version: '1.2'}}", TlsSettings(min_version="1.2")),
        (
            "{address: 127.0.0.1:8443, tls: {certificate: /a.pem}}",
            TlsSettings(certificates=(CertificateSpec("/a.pem"),)),
        ),
        (
            "{address: 127.0.0.1:8443, tls: {certificate: {path: /a.pem, default: true}}}",
            TlsSettings(certificates=(CertificateSpec("/a.pem", default=True),)),
        ),
    ],
)
def test_tls_forms(bind: str, tls: TlsSettings | None) -> None:
    config = load_text(GOOD.replace("bind: 127.0.0.1:8080", f"bind: {bind}"), "/lb.yaml")
    assert config.virtual_servers[0].binds[0].tls == tls


@pytest.mark.parametrize(
    ("persistence", "expected"),
    [
        ("{source: true}", SourcePersistence()),
        ("{source: {}}", SourcePersistence()),
        ("{source: {mask: 0, mask6: 128}}", SourcePersistence(mask4=0, mask6=128)),
    ],
)
def test_source_persistence_forms(persistence: str, expected: SourcePersistence) -> None:
    config = load_text(GOOD + f"    persistence: {persistence}\n", "/lb.yaml")
    assert config.virtual_servers[0].pool.persistence == expected


@pytest.mark.parametrize(
    ("hsts", "expected"),
    [("false", None), ("0", 0.0), ("1y", 365 * 86400.0), ("31536000", 31536000.0)],
)
def test_hsts_forms(hsts: str, expected: float | None) -> None:
    config = load_text(GOOD + f"    hsts: {hsts}\n", "/lb.yaml")
    assert config.virtual_servers[0].hsts == expected


TWO_VS = """\
virtual_servers:
  - label: one
    bind: {first}
    real_servers: [{{label: a, address: 127.0.0.1:1}}]
  - label: two
    bind: {second}
    real_servers: [{{label: a, address: 127.0.0.1:2}}]
"""


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        ("127.0.0.1:80", "127.0.0.1:80", True),
        ("127.0.0.1:80", "127.0.0.1:81", False),
        ("0.0.0.0:80", "10.0.0.1:80", True),
        ("10.0.0.1:80", "0.0.0.0:80", True),
        ('"[::]:80"', '"[::1]:80"', True),
        ('"[::1]:80"', '"[0:0:0:0:0:0:0:1]:80"', True),
        ('"[::]:80"', "0.0.0.0:80", True),  # the server opens [::] dual-stack
        ("127.0.0.1:80", '"[::]:80"', True),
        ("0.0.0.0:80", '"[::1]:80"', False),  # other IPv6 listeners are v6-only
        ("127.0.0.1:80", '"[::1]:80"', False),
        ("Web.Local:80", "web.local:80", True),
        ("localhost:80", "127.0.0.1:80", False),  # names are not resolved at load time
        ("[127.0.0.1:80, 127.0.0.2:80]", "127.0.0.2:80", True),
    ],
)
def test_bind_clashes(first: str, second: str, clash: bool) -> None:
    text = TWO_VS.format(first=first, second=second)
    if not clash:
        assert len(load_text(text, "/lb.yaml").virtual_servers) == 2
        return
    problems = problems_of(text)
    assert len(problems) == 1
    assert ": virtual_servers[1].bind: " in problems[0]
    assert "is already bound by virtual server 'one' (line 3)" in problems[0]


def test_same_bind_twice_in_one_virtual_server() -> None:
    problems = problems_of(
        GOOD.replace("bind: 127.0.0.1:8080", "bind: [127.0.0.1:80, 127.0.0.1:80]")
    )
    assert [where(p) for p in problems] == ["3:26: virtual_servers[0].bind[1]"]
    assert problems[0].endswith("127.0.0.1:80 is already bound by this virtual server (line 3)")


def test_check_address_defaults_to_the_server_port() -> None:
    config = load_text(
        GOOD.replace("127.0.0.1:8081}", "127.0.0.1:8081, check_address: '[::1]'}"), "/x"
    )
    assert config.virtual_servers[0].pool.real_servers[0].check_address == Address("::1", 8081)


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.Static.Example.com", "*.static.example.com"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_rule_hosts_are_normalised(host: str, stored: str) -> None:
    text = GOOD + f"    rules: [{{host: '{host}', pool: p}}]\n"
    text += "pools: {p: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n"
    condition = load_text(text, "/lb.yaml").virtual_servers[0].rules[0].condition
    assert condition == (HostSuffix(stored[1:]) if stored.startswith("*") else HostIs(stored))


def test_every_key_is_documented() -> None:
    from config import action_reader, condition_reader, listener_reader, loader, pool_reader

    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `(?:[a-z_\[\]]+\.)*([a-z_0-9]+)` \|", docs, re.MULTILINE))
    modules = (loader, pool_reader, listener_reader, condition_reader, action_reader)
    keys = {
        key
        for module in modules
        for name, value in vars(module).items()
        if name.endswith("_KEYS")
        for key in value
    }
    assert keys, "no key tables found"
    assert sorted(keys - documented) == []


def test_merge_cycles_end() -> None:
    text = "virtual_servers: [&a {b: &b {<<: *a}, <<: *b}]\n"
    problems = problems_of(text)
    assert any(": virtual_servers[0].b: unknown key" in p for p in problems)


def test_the_reference_example_loads() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    complete = [block for block in blocks if "virtual_servers:" in block]
    assert complete, "the reference has no complete example"
    for block in complete:
        config = load_text(block, "/etc/lbproxy/lb.yaml")
        assert config.virtual_servers


@pytest.mark.parametrize(
    ("checks", "interval", "timeout"),
    [
        ("{}", 2.0, 1.0),
        ("{interval: 500ms}", 0.5, 0.5),  # the default timeout follows a shorter interval
        ("{interval: 5s}", 5.0, 1.0),
        ("{interval: 1s, timeout: 1s}", 1.0, 1.0),
    ],
)
def test_check_timeout_fits_the_interval(checks: str, interval: float, timeout: float) -> None:
    config = load_text(GOOD + f"    health_check: {checks}\n", "/lb.yaml")
    health = config.virtual_servers[0].pool.health_check
    assert (health.interval, health.timeout) == (interval, timeout)
