"""The YAML loader: a full good config, and one table row per kind of problem."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest

from config.conditions import AllOf, Header, HostSuffix, PathPrefix, PathRegex
from config.loader import ConfigError, load_file, load_text
from config.model import (
    Address,
    AdminState,
    Balance,
    Bind,
    CertificateSpec,
    CookiePersistence,
    GlobalSettings,
    HealthCheck,
    HttpCheck,
    HttpsRedirect,
    Pool,
    RealServer,
    Rule,
    SourcePersistence,
    StatsSettings,
    Timeouts,
    TlsSettings,
    Verify,
    VirtualService,
)

FULL = """\
global:
  state_dir: ./state
  grace: 10s
  log_level: debug
  access_log: false
  stats: {bind: 127.0.0.1:8404, path: /stats}
virtual_servers:
  - label: www
    bind:
      - 127.0.0.1:8080
      - address: "[::1]:8443"
        tls:
          certificate: [certs/www.pem, {path: /etc/lb/default.pem, default: true}, certs/dir]
          min_version: "1.3"
          ciphers: ECDHE+AESGCM
          ciphersuites: TLS_AES_128_GCM_SHA256
          client_ca: ca.pem
          verify: optional
          strict_sni: true
          handshake_timeout: 5s
    balance: leastconn
    forwardfor: false
    fallback: 127.0.0.1:9000
    timeouts: {connect: 500ms, header: 3s, client_idle: 1m, server: 2m, tunnel: 1h}
    persistence: {cookie: LB, httponly: true, secure: true, samesite: Strict,
                  domain: Example.COM, path: /app}
    health_check:
      interval: 3s
      rise: 1
      fall: 5
      timeout: 2s
      enabled: true
      http: {path: /health, expect: 204, body: OK, method: HEAD, host: example.com}
    redirect_to_https: true
    hsts: 365d
    rewrite_location: false
    real_servers:
      - {label: web1, address: 127.0.0.1:8081, weight: 1}
      - {label: web2, address: backend.local:8082, weight: 0, state: drain,
         check_address: 127.0.0.1:9082}
      - {label: web3, address: "[::1]:8083", weight: 256, state: maint, check_address: 10.0.0.3}
    rules:
      - {path_prefix: /api/, pool: api}
      - {host: "*.Example.com", path_regex: "^/img/.*\\\\.png$", pool: static}
      - {header: {name: X-Canary, value: "1"}, pool: api}
      - {header: {name: X-Debug}, pool: static}
  - label: plain
    bind: 0.0.0.0:80
    real_servers:
      - {label: p1, address: 127.0.0.1:8181}
pools:
  api:
    balance: source
    persistence: {source: {timeout: 10m, mask: 16, mask6: 48, size: 1000}}
    health_check: {enabled: false}
    real_servers:
      - {label: api1, address: 127.0.0.1:8091}
  static:
    persistence: {cookie: SERVERID}
    real_servers:
      - {label: static1, address: 127.0.0.1:8092, weight: 3}
"""


def test_full_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(FULL)
    config = load_file(str(path))
    here = str(tmp_path)

    assert config.source == str(path)
    assert config.global_ == GlobalSettings(
        state_dir=os.path.join(here, "state"),
        grace=10.0,
        log_level="debug",
        access_log=False,
        stats=StatsSettings(bind=Address("127.0.0.1", 8404), path="/stats"),
    )
    www, plain = config.virtual_servers
    assert www.binds == (
        Bind(Address("127.0.0.1", 8080)),
        Bind(
            Address("::1", 8443),
            TlsSettings(
                certificates=(
                    CertificateSpec(os.path.join(here, "certs/www.pem")),
                    CertificateSpec("/etc/lb/default.pem", default=True),
                    CertificateSpec(os.path.join(here, "certs/dir")),
                ),
                min_version="1.3",
                ciphers="ECDHE+AESGCM",
                ciphersuites="TLS_AES_128_GCM_SHA256",
                client_ca=os.path.join(here, "ca.pem"),
                verify=Verify.OPTIONAL,
                strict_sni=True,
                handshake_timeout=5.0,
            ),
        ),
    )
    assert www.pool == Pool(
        name="www",
        real_servers=(
            RealServer("web1", Address("127.0.0.1", 8081)),
            RealServer(
                "web2",
                Address("backend.local", 8082),
                weight=0,
                state=AdminState.DRAIN,
                check_address=Address("127.0.0.1", 9082),
            ),
            RealServer(
                "web3",
                Address("::1", 8083),
                weight=256,
                state=AdminState.MAINT,
                check_address=Address("10.0.0.3", 8083),
            ),
        ),
        balance=Balance.LEASTCONN,
        fallback=RealServer("fallback", Address("127.0.0.1", 9000), backup=True),
        persistence=CookiePersistence(
            name="LB",
            httponly=True,
            secure=True,
            samesite="Strict",
            domain="example.com",
            path="/app",
        ),
        health_check=HealthCheck(
            enabled=True,
            interval=3.0,
            rise=1,
            fall=5,
            timeout=2.0,
            http=HttpCheck(
                path="/health",
                method="HEAD",
                expect=((204, 204),),
                body="OK",
                host="example.com",
            ),
        ),
    )
    assert www.forwardfor is False
    assert www.timeouts == Timeouts(
        connect=0.5, header=3.0, client_idle=60.0, server=120.0, tunnel=3600.0
    )
    assert www.redirect_to_https == HttpsRedirect()
    assert www.hsts == 365 * 86400.0
    assert www.rewrite_location is False
    assert www.rules == (
        Rule(pool="api", condition=PathPrefix("/api/")),
        Rule(
            pool="static",
            condition=AllOf((PathRegex(re.compile(r"^/img/.*\.png$")), HostSuffix(".example.com"))),
        ),
        Rule(pool="api", condition=Header(b"x-canary", b"1")),
        Rule(pool="static", condition=Header(b"x-debug")),
    )

    # Everything left out takes the model's defaults.
    assert plain == VirtualService(
        label="plain",
        binds=(Bind(Address("0.0.0.0", 80)),),
        pool=Pool(name="plain", real_servers=(RealServer("p1", Address("127.0.0.1", 8181)),)),
    )
    assert config.pools == {
        "api": Pool(
            name="api",
            real_servers=(RealServer("api1", Address("127.0.0.1", 8091)),),
            balance=Balance.SOURCE,
            persistence=SourcePersistence(timeout=600.0, mask4=16, mask6=48, size=1000),
            health_check=HealthCheck(enabled=False),
        ),
        "static": Pool(
            name="static",
            real_servers=(RealServer("static1", Address("127.0.0.1", 8092), weight=3),),
            persistence=CookiePersistence(name="SERVERID"),
        ),
    }


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        "    real_servers: [{label: a, address: 127.0.0.1:8081}]\n",
        str(tmp_path / "lb.yaml"),
    )
    assert config.global_ == GlobalSettings(state_dir=str(tmp_path / "lbproxy-state"))
    assert config.pools == {}
    assert config.virtual_servers[0].pool.health_check == HealthCheck()
    assert config.virtual_servers[0].binds[0].tls is None


# Each row: a config with one problem, the exact "LINE:COL: key.path:" it must be reported at,
# and a fragment of the message. GOOD_VS is a valid virtual server to splice rows into.
GOOD_VS = """\
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    real_servers:
      - {label: web1, address: 127.0.0.1:8081}
"""

BAD: list[tuple[str, str, str, str]] = [
    ("syntax", "virtual_servers: [\n", "2:1: (yaml):", "expected the node content"),
    (
        "tab",
        "virtual_servers:\n\t- x\n",
        "2:1: (yaml):",
        "found a tab that cannot start any token (YAML indents with spaces only)",
    ),
    ("empty file", "", "1:1: (file):", "empty"),
    ("comments only", "# nothing\n", "1:1: (file):", "empty"),
    ("top is a list", "- a\n", "1:1: (top level):", "expected a mapping"),
    ("no virtual servers", "global: {}\n", "1:1: virtual_servers:", "required key is missing"),
    ("empty vs list", "virtual_servers: []\n", "1:18: virtual_servers:", "must not be empty"),
    ("unknown top key", GOOD_VS + "pool: {}\n", "6:1: pool:", "did you mean 'pools'?"),
    (
        "unknown key without a close match",
        GOOD_VS.replace("    bind:", "    zzz: 1\n    bind:"),
        "3:5: virtual_servers[0].zzz:",
        "expected one of: acls, balance, bind,",
    ),
    (
        "label: no is a boolean",
        GOOD_VS.replace("label: www", "label: no"),
        "2:12: virtual_servers[0].label:",
        'got a boolean (no); put it in quotes if it is meant as text: "no"',
    ),
    (
        "label: 1.0 is a number",
        GOOD_VS.replace("label: www", "label: 1.0"),
        "2:12: virtual_servers[0].label:",
        "got a number (1.0)",
    ),
    (
        "label: null",
        GOOD_VS.replace("label: www", "label: ~"),
        "2:12: virtual_servers[0].label:",
        "got null",
    ),
    (
        "empty label",
        GOOD_VS.replace("label: www", "label:"),
        "2:11: virtual_servers[0].label:",
        "expected a string, got nothing",
    ),
    (
        "label with a space",
        GOOD_VS.replace("label: web1", "label: web 1"),
        "5:17: virtual_servers[0].real_servers[0].label:",
        "may use only letters",
    ),
    (
        "duplicate yaml key",
        GOOD_VS.replace("    bind:", "    balance: leastconn\n    balance: source\n    bind:"),
        "4:5: virtual_servers[0].balance:",
        "duplicate key (first given at line 3)",
    ),
    (
        "missing address",
        GOOD_VS.replace(", address: 127.0.0.1:8081", ""),
        "5:9: virtual_servers[0].real_servers[0].address:",
        "required key is missing",
    ),
    (
        "no real servers",
        GOOD_VS.replace("    real_servers:\n      - {label: web1, address: 127.0.0.1:8081}\n", ""),
        "2:5: virtual_servers[0].real_servers:",
        "a virtual server needs at least one real server",
    ),
    (
        "empty real servers",
        GOOD_VS.replace(
            "    real_servers:\n      - {label: web1, address: 127.0.0.1:8081}\n",
            "    real_servers: []\n",
        ),
        "4:19: virtual_servers[0].real_servers:",
        "must not be empty",
    ),
    (
        "duplicate real server label",
        GOOD_VS + "      - {label: web1, address: 127.0.0.1:8082}\n",
        "6:17: virtual_servers[0].real_servers[1].label:",
        "duplicate real server label 'web1' (first at line 5)",
    ),
    (
        "fallback mapping without an address",
        GOOD_VS + "    fallback: {health_check: {}}\n",
        "6:15: virtual_servers[0].fallback.address:",
        "required key is missing",
    ),
    (
        "fallback mapping with an unknown key",
        GOOD_VS + "    fallback: {address: 127.0.0.1:9000, weight: 2}\n",
        "6:41: virtual_servers[0].fallback.weight:",
        "unknown key",
    ),
    (
        "fallback check with a bad value",
        GOOD_VS + "    fallback: {address: 127.0.0.1:9000, health_check: {rise: 0}}\n",
        "6:62: virtual_servers[0].fallback.health_check.rise:",
        "0 is out of range: must be at least 1",
    ),
    (
        "fallback bad address in the mapping",
        GOOD_VS + "    fallback: {address: 127.0.0.1}\n",
        "6:25: virtual_servers[0].fallback.address:",
        "missing ':PORT'",
    ),
    (
        "reserved fallback label",
        GOOD_VS.replace("label: web1", "label: fallback"),
        "5:17: virtual_servers[0].real_servers[0].label:",
        "reserved",
    ),
    (
        "duplicate virtual server label",
        GOOD_VS
        + "  - label: www\n    bind: 127.0.0.1:8090\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:1}]\n",
        "6:12: virtual_servers[1].label:",
        "duplicate virtual server label 'www' (first at line 2)",
    ),
    (
        "missing port",
        GOOD_VS.replace("127.0.0.1:8081", "127.0.0.1"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "missing ':PORT'",
    ),
    (
        "port zero",
        GOOD_VS.replace("127.0.0.1:8081", "127.0.0.1:0"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "port 0 is not in 1..65535",
    ),
    (
        "port too big",
        GOOD_VS.replace("127.0.0.1:8081", "127.0.0.1:65536"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "port 65536 is not in 1..65535",
    ),
    (
        "port not a number",
        GOOD_VS.replace("127.0.0.1:8081", "127.0.0.1:http"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "is not a number",
    ),
    (
        "ipv6 without brackets",
        GOOD_VS.replace("127.0.0.1:8081", '"::1:8081"'),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "needs brackets",
    ),
    (
        "unclosed bracket",
        GOOD_VS.replace("127.0.0.1:8081", '"[::1:8081"'),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "without a closing ']'",
    ),
    (
        "unquoted ipv6 in a bind",
        GOOD_VS.replace("bind: 127.0.0.1:8080", "bind:\n      - [::1]"),
        "4:10: (yaml):",
        'quote IPv6 addresses: "[::1]:80"',
    ),
    (
        "empty host",
        GOOD_VS.replace("127.0.0.1:8081", '":8081"'),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "empty host",
    ),
    (
        "bad ipv4",
        GOOD_VS.replace("127.0.0.1:8081", "127.0.0.300:8081"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "is not an IPv4 address",
    ),
    (
        "address as a number",
        GOOD_VS.replace("127.0.0.1:8081", "8081"),
        "5:32: virtual_servers[0].real_servers[0].address:",
        "expected HOST:PORT, got a number (8081)",
    ),
    (
        "bad duration",
        GOOD_VS + "    timeouts: {connect: 5 sec}\n",
        "6:25: virtual_servers[0].timeouts.connect:",
        "unknown unit 'sec'",
    ),
    (
        "negative duration",
        GOOD_VS + "    timeouts: {server: -1}\n",
        "6:24: virtual_servers[0].timeouts.server:",
        "must not be negative",
    ),
    (
        "zero timeout",
        GOOD_VS + "    timeouts: {server: 0s}\n",
        "6:24: virtual_servers[0].timeouts.server:",
        "must be greater than zero",
    ),
    (
        "boolean as duration",
        "global: {grace: yes}\n" + GOOD_VS,
        "1:17: global.grace:",
        "expected a duration",
    ),
    (
        "weight too big",
        GOOD_VS.replace("127.0.0.1:8081}", "127.0.0.1:8081, weight: 257}"),
        "5:56: virtual_servers[0].real_servers[0].weight:",
        "257 is out of range: must be in 0..256",
    ),
    (
        "negative weight",
        GOOD_VS.replace("127.0.0.1:8081}", "127.0.0.1:8081, weight: -1}"),
        "5:56: virtual_servers[0].real_servers[0].weight:",
        "must be in 0..256",
    ),
    (
        "weight as a string",
        GOOD_VS.replace("127.0.0.1:8081}", '127.0.0.1:8081, weight: "2"}'),
        "5:56: virtual_servers[0].real_servers[0].weight:",
        "expected a whole number, got a string (2)",
    ),
    (
        "rise zero",
        GOOD_VS + "    health_check: {rise: 0}\n",
        "6:26: virtual_servers[0].health_check.rise:",
        "must be at least 1",
    ),
    (
        "fall zero",
        GOOD_VS + "    health_check: {fall: 0}\n",
        "6:26: virtual_servers[0].health_check.fall:",
        "must be at least 1",
    ),
    (
        "check timeout above interval",
        GOOD_VS + "    health_check: {interval: 1s, timeout: 2s}\n",
        "6:43: virtual_servers[0].health_check.timeout:",
        "must not exceed the interval",
    ),
    (
        "expect status out of range",
        GOOD_VS + "    health_check: {http: {expect: 600}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "must be in 100..599",
    ),
    (
        "expect range reversed",
        GOOD_VS + "    health_check: {http: {expect: 399-200}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "'399-200' must be statuses in 100..599, the lower first",
    ),
    (
        "expect range out of bounds",
        GOOD_VS + "    health_check: {http: {expect: 200-600}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "must be statuses in 100..599",
    ),
    (
        "expect not a status",
        GOOD_VS + "    health_check: {http: {expect: 2xx}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "'2xx' is not a status or a range of statuses like 200-399",
    ),
    (
        "expect list item out of range",
        GOOD_VS + "    health_check: {http: {expect: [200, 600]}}\n",
        "6:41: virtual_servers[0].health_check.http.expect[1]:",
        "600 is out of range: must be in 100..599",
    ),
    (
        "expect empty list",
        GOOD_VS + "    health_check: {http: {expect: []}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "must not be empty",
    ),
    (
        "expect boolean",
        GOOD_VS + "    health_check: {http: {expect: true}}\n",
        "6:35: virtual_servers[0].health_check.http.expect:",
        "expected a whole number",
    ),
    (
        "retries out of range",
        GOOD_VS + "    retries: 101\n",
        "6:14: virtual_servers[0].retries:",
        "101 is out of range: must be in 0..100",
    ),
    (
        "retries not a number",
        GOOD_VS + "    retries: many\n",
        "6:14: virtual_servers[0].retries:",
        "expected a whole number",
    ),
    (
        "named pool retries negative",
        GOOD_VS
        + "pools:\n  api:\n    retries: -1\n    real_servers: [{label: a, address: 127.0.0.1:1}]\n",
        "8:14: pools.api.retries:",
        "-1 is out of range: must be in 0..100",
    ),
    (
        "forwardfor trusted host bits set",
        GOOD_VS + "    forwardfor: {trusted: [10.0.0.0/8, 10.0.0.1/8]}\n",
        "6:40: virtual_servers[0].forwardfor.trusted[1]:",
        "invalid network '10.0.0.1/8': host bits are set; did you mean 10.0.0.0/8?",
    ),
    (
        "forwardfor trusted not a network",
        GOOD_VS + "    forwardfor:\n      trusted:\n        - 192.0.2.0/33\n",
        "8:11: virtual_servers[0].forwardfor.trusted[0]:",
        "invalid network '192.0.2.0/33': expected an address or ADDRESS/PREFIX",
    ),
    (
        "forwardfor trusted not a list",
        GOOD_VS + "    forwardfor: {trusted: 10.0.0.0/8}\n",
        "6:27: virtual_servers[0].forwardfor.trusted:",
        "expected a list, got a string",
    ),
    (
        "forwardfor mapping without trusted",
        GOOD_VS + "    forwardfor: {}\n",
        "6:17: virtual_servers[0].forwardfor.trusted:",
        "required key is missing",
    ),
    (
        "forwardfor mapping with an unknown key",
        GOOD_VS + "    forwardfor: {trusted: [], except: [10.0.0.0/8]}\n",
        "6:31: virtual_servers[0].forwardfor.except:",
        "unknown key",
    ),
    (
        "forwardfor a string",
        GOOD_VS + "    forwardfor: always\n",
        "6:17: virtual_servers[0].forwardfor:",
        "expected true or false",
    ),
    (
        "redirect code not a redirect",
        GOOD_VS + "    redirect_to_https: {code: 200}\n",
        "6:31: virtual_servers[0].redirect_to_https.code:",
        "200 is not one of: 301, 302, 303, 307, 308",
    ),
    (
        "redirect port out of range",
        GOOD_VS + "    redirect_to_https: {port: 70000}\n",
        "6:31: virtual_servers[0].redirect_to_https.port:",
        "70000 is out of range: must be in 1..65535",
    ),
    (
        "redirect unknown key",
        GOOD_VS + "    redirect_to_https: {scheme: https}\n",
        "6:25: virtual_servers[0].redirect_to_https.scheme:",
        "unknown key",
    ),
    (
        "redirect a string",
        GOOD_VS + "    redirect_to_https: yes please\n",
        "6:24: virtual_servers[0].redirect_to_https:",
        "expected true or false",
    ),
    (
        "check path without slash",
        GOOD_VS + "    health_check: {http: {path: health}}\n",
        "6:33: virtual_servers[0].health_check.http.path:",
        "must start with '/'",
    ),
    (
        "mask out of range",
        GOOD_VS + "    persistence: {source: {mask: 33}}\n",
        "6:34: virtual_servers[0].persistence.source.mask:",
        "must be in 0..32",
    ),
    (
        "mask6 out of range",
        GOOD_VS + "    persistence: {source: {mask6: 129}}\n",
        "6:35: virtual_servers[0].persistence.source.mask6:",
        "must be in 0..128",
    ),
    (
        "samesite",
        GOOD_VS + "    persistence: {cookie: SERVERID, samesite: lax}\n",
        "6:47: virtual_servers[0].persistence.samesite:",
        "'lax' is not one of: Strict, Lax, None",
    ),
    (
        "samesite none without secure",
        GOOD_VS + "    persistence: {cookie: S, samesite: None, secure: false}\n",
        "6:40: virtual_servers[0].persistence.samesite:",
        "without Secure",
    ),
    (
        "cookie and source",
        GOOD_VS + "    persistence: {cookie: S, source: {}}\n",
        "6:19: virtual_servers[0].persistence.cookie:",
        "do not apply to source persistence",
    ),
    (
        "persistence without a kind",
        GOOD_VS + "    persistence: {httponly: true}\n",
        "6:18: virtual_servers[0].persistence:",
        "expected 'cookie: NAME'",
    ),
    (
        "bad cookie name",
        GOOD_VS + "    persistence: {cookie: 'A B'}\n",
        "6:27: virtual_servers[0].persistence.cookie:",
        "not a valid HTTP token",
    ),
    (
        "min_version",
        GOOD_VS.replace(
            "bind: 127.0.0.1:8080", "bind: {address: 127.0.0.1:8080, tls: {min_version: 1.1}}"
        ),
        "3:56: virtual_servers[0].bind.tls.min_version:",
        "expected one of: 1.2, 1.3",
    ),
    (
        "verify",
        GOOD_VS.replace(
            "bind: 127.0.0.1:8080", "bind: {address: 127.0.0.1:8080, tls: {verify: maybe}}"
        ),
        "3:51: virtual_servers[0].bind.tls.verify:",
        "'maybe' is not one of: none, optional, required",
    ),
    (
        "verify without client_ca",
        GOOD_VS.replace(
            "bind: 127.0.0.1:8080", "bind: {address: 127.0.0.1:8080, tls: {verify: required}}"
        ),
        "3:51: virtual_servers[0].bind.tls.verify:",
        "needs client_ca",
    ),
    (
        "two default certificates",
        GOOD_VS.replace(
            "bind: 127.0.0.1:8080",
            "bind: {address: 127.0.0.1:8080, tls: {certificate: "
            "[{path: a.pem, default: true}, {path: b.pem, default: true}]}}",
        ),
        "3:87: virtual_servers[0].bind.tls.certificate[1]:",
        "only one certificate can be the default",
    ),
    (
        "tls: null",
        GOOD_VS.replace("bind: 127.0.0.1:8080", "bind: {address: 127.0.0.1:8080, tls: }"),
        "3:41: virtual_servers[0].bind.tls:",
        "expected true or false",
    ),
    (
        "mode",
        GOOD_VS + "    mode: tcp\n",
        "6:11: virtual_servers[0].mode:",
        "'tcp' is not one of: http",
    ),
    (
        "balance",
        GOOD_VS + "    balance: random\n",
        "6:14: virtual_servers[0].balance:",
        "'random' is not one of: roundrobin, leastconn, source",
    ),
    (
        "state",
        GOOD_VS.replace("127.0.0.1:8081}", "127.0.0.1:8081, state: down}"),
        "5:55: virtual_servers[0].real_servers[0].state:",
        "'down' is not one of: ready, drain, maint",
    ),
    (
        "rule to an unknown pool",
        GOOD_VS + "    rules: [{path_prefix: /a, pool: api}]\n",
        "6:37: virtual_servers[0].rules[0].pool:",
        "no pool named 'api' under pools:",
    ),
    (
        "rule without a condition",
        GOOD_VS
        + "    rules: [{pool: api}]\n"
        + "pools: {api: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:13: virtual_servers[0].rules[0]:",
        "a rule needs one condition",
    ),
    (
        "invalid path_regex",
        GOOD_VS
        + "    rules: [{path_regex: '([a-z', pool: api}]\n"
        + "pools: {api: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:26: virtual_servers[0].rules[0].path_regex:",
        "invalid regular expression: unterminated character set at position 1",
    ),
    (
        "rule host with a port",
        GOOD_VS
        + "    rules: [{host: 'a.com:80', pool: api}]\n"
        + "pools: {api: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:20: virtual_servers[0].rules[0].host:",
        "is not a host name",
    ),
    (
        "header name",
        GOOD_VS
        + "    rules: [{header: {name: 'X Y'}, pool: api}]\n"
        + "pools: {api: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:29: virtual_servers[0].rules[0].header.name:",
        "not a valid HTTP token",
    ),
    (
        "header value with spaces around",
        GOOD_VS
        + "    rules: [{header: {name: X-A, value: ' 1'}, pool: api}]\n"
        + "pools: {api: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:41: virtual_servers[0].rules[0].header.value:",
        "must not start or end with spaces",
    ),
    (
        "same bind in two virtual servers",
        GOOD_VS
        + "  - label: two\n    bind: 127.0.0.1:8080\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:1}]\n",
        "7:11: virtual_servers[1].bind:",
        "127.0.0.1:8080 is already bound by virtual server 'www' (line 3)",
    ),
    (
        "wildcard bind overlaps",
        GOOD_VS
        + "  - label: two\n    bind: 0.0.0.0:8080\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:1}]\n",
        "7:11: virtual_servers[1].bind:",
        "already bound by virtual server 'www'",
    ),
    (
        "stats bind overlaps",
        "global: {stats: {bind: 127.0.0.1:8080}}\n" + GOOD_VS,
        "4:11: virtual_servers[0].bind:",
        "already bound by the stats page (line 1)",
    ),
    (
        "pool without real servers",
        GOOD_VS + "pools: {api: {balance: leastconn}}\n",
        "6:14: pools.api.real_servers:",
        "a named pool needs at least one real server",
    ),
    (
        "pool named like a virtual server",
        GOOD_VS + "pools: {www: {real_servers: [{label: a, address: 127.0.0.1:1}]}}\n",
        "6:9: pools.www:",
        "also the label of a virtual server",
    ),
    (
        "state_dir not a string",
        "global: {state_dir: 1}\n" + GOOD_VS,
        "1:21: global.state_dir:",
        "expected a string, got a number",
    ),
    (
        "log_level",
        "global: {log_level: verbose}\n" + GOOD_VS,
        "1:21: global.log_level:",
        "'verbose' is not one of: debug, info, warning, error",
    ),
    (
        "boolean as a string",
        GOOD_VS + "    forwardfor: 'true'\n",
        "6:17: virtual_servers[0].forwardfor:",
        "expected true or false, got a string (true)",
    ),
    (
        "control character in a string",
        GOOD_VS + '    health_check: {http: {body: "a\\u0000b"}}\n',
        "6:33: virtual_servers[0].health_check.http.body:",
        "must not contain control characters (found 0x00)",
    ),
    (
        "two documents",
        GOOD_VS + "---\n" + GOOD_VS,
        "6:1: (yaml):",
        "expected a single document in the stream (line 1), but found another document",
    ),
    (
        "undefined alias",
        GOOD_VS + "    balance: *nope\n",
        "6:14: (yaml):",
        "found undefined alias 'nope'",
    ),
    (
        "merge of a scalar",
        GOOD_VS + "    timeouts: {<<: 5}\n",
        "6:20: virtual_servers[0].timeouts:",
        "'<<' merges only mappings",
    ),
    ("nested too deeply", "[" * 600 + "]" * 600, "1:1: (yaml):", "nested too deeply"),
    (
        "non-string key",
        GOOD_VS + "    1: x\n",
        "6:5: virtual_servers[0]:",
        "keys must be strings",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [pytest.param(text, where, fragment, id=name) for name, text, where, fragment in BAD],
)
def test_bad_config_is_reported_at_its_position(text: str, where: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "lb.yaml")
    problems = caught.value.problems
    matching = [p for p in problems if p.startswith(f"lb.yaml:{where} ")]
    assert matching, f"no problem at {where}; got {problems}"
    assert any(fragment in p for p in matching), f"{fragment!r} not in {matching}"
    assert str(caught.value) == "\n".join(problems)


def test_hsts_without_a_tls_bind_is_a_warning() -> None:
    config = load_text(GOOD_VS + "    hsts: 1y\n", "lb.yaml")
    assert config.virtual_servers[0].hsts == 365 * 86400.0
    assert config.warnings == (
        "lb.yaml:6:5: virtual_servers[0].hsts: hsts has no effect: no TLS bind",
    )


def test_hsts_with_a_tls_bind_and_no_hsts_give_no_warning() -> None:
    with_tls = GOOD_VS.replace(
        "bind: 127.0.0.1:8080", "bind: [127.0.0.1:8080, {address: 127.0.0.1:8443, tls: true}]"
    )
    assert load_text(with_tls + "    hsts: 1y\n", "lb.yaml").warnings == ()
    assert load_text(GOOD_VS + "    hsts: false\n", "lb.yaml").warnings == ()
    assert load_text(GOOD_VS, "lb.yaml").warnings == ()


HTTP_POOL_CHECK = "    health_check: {http: {path: /health}}\n"


def test_fallback_address_gets_a_tcp_check_whatever_the_pool_checks() -> None:
    pool = (
        load_text(GOOD_VS + HTTP_POOL_CHECK + "    fallback: 127.0.0.1:9000\n", "lb.yaml")
        .virtual_servers[0]
        .pool
    )
    assert pool.health_check.http == HttpCheck(path="/health")
    assert pool.fallback == RealServer("fallback", Address("127.0.0.1", 9000), backup=True)
    assert pool.fallback_check == HealthCheck()
    assert pool.fallback_check.http is None


def test_fallback_mapping_with_its_own_check() -> None:
    pool = (
        load_text(
            GOOD_VS
            + HTTP_POOL_CHECK
            + "    fallback:\n"
            + "      address: 127.0.0.1:9000\n"
            + "      health_check: {interval: 5s, fall: 1, http: {path: /sorry.html}}\n",
            "lb.yaml",
        )
        .virtual_servers[0]
        .pool
    )
    assert pool.fallback == RealServer("fallback", Address("127.0.0.1", 9000), backup=True)
    assert pool.fallback_check == HealthCheck(
        interval=5.0, fall=1, http=HttpCheck(path="/sorry.html")
    )
    bare = (
        load_text(GOOD_VS + "    fallback: {address: 127.0.0.1:9000}\n", "lb.yaml")
        .virtual_servers[0]
        .pool
    )
    assert bare.fallback_check == HealthCheck()


def test_named_pool_fallback_mapping() -> None:
    config = load_text(
        GOOD_VS
        + "pools:\n"
        + "  api:\n"
        + "    fallback: {address: 127.0.0.1:9000, health_check: {enabled: false}}\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:9001}]\n",
        "lb.yaml",
    )
    assert config.pools["api"].fallback_check == HealthCheck(enabled=False)


@pytest.mark.parametrize(
    ("written", "expect"),
    [
        ("200", ((200, 200),)),
        ("200-399", ((200, 399),)),
        ('"204"', ((204, 204),)),
        ("[200, 204]", ((200, 200), (204, 204))),
        ('[200, "300-302"]', ((200, 200), (300, 302))),
        ("[200 - 204, 404]", ((200, 204), (404, 404))),
    ],
)
def test_health_check_expect_forms(written: str, expect: tuple[tuple[int, int], ...]) -> None:
    config = load_text(GOOD_VS + f"    health_check: {{http: {{expect: {written}}}}}\n", "lb.yaml")
    http = config.virtual_servers[0].pool.health_check.http
    assert http is not None
    assert http.expect == expect


def test_health_check_expect_defaults_to_2xx_and_3xx() -> None:
    config = load_text(GOOD_VS + "    health_check: {http: {path: /health}}\n", "lb.yaml")
    http = config.virtual_servers[0].pool.health_check.http
    assert http == HttpCheck(path="/health", expect=((200, 399),))
    assert [s for s in (199, 200, 302, 399, 400) if http.expects(s)] == [200, 302, 399]


def test_retries_default_and_per_pool() -> None:
    config = load_text(
        GOOD_VS
        + "    retries: 0\n"
        + "  - label: two\n"
        + "    bind: 127.0.0.1:8081\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:9001}]\n"
        + "pools:\n"
        + "  api:\n"
        + "    retries: 100\n"
        + "    real_servers: [{label: a, address: 127.0.0.1:9002}]\n",
        "lb.yaml",
    )
    assert [vs.pool.retries for vs in config.virtual_servers] == [0, 3]
    assert config.pools["api"].retries == 100


def test_forwardfor_forms() -> None:
    def vs_of(text: str) -> VirtualService:
        return load_text(GOOD_VS + text, "lb.yaml").virtual_servers[0]

    assert (vs_of("").forwardfor, vs_of("").forwardfor_trusted) == (True, None)
    off = vs_of("    forwardfor: false\n")
    assert (off.forwardfor, off.forwardfor_trusted) == (False, None)
    on = vs_of("    forwardfor: true\n")
    assert (on.forwardfor, on.forwardfor_trusted) == (True, None)
    trusted = vs_of(
        '    forwardfor:\n      trusted: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32", "::1"]\n'
    )
    assert trusted.forwardfor is True
    assert trusted.forwardfor_trusted == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.0.2.7/32"),
        ipaddress.IPv6Network("2001:db8::/32"),
        ipaddress.IPv6Network("::1/128"),
    )
    nobody = vs_of("    forwardfor: {trusted: []}\n")
    assert (nobody.forwardfor, nobody.forwardfor_trusted) == (True, ())


TLS_VS = GOOD_VS.replace(
    "bind: 127.0.0.1:8080", "bind: [127.0.0.1:8080, {address: 127.0.0.1:8443, tls: true}]"
)


@pytest.mark.parametrize(
    ("base", "written", "redirect", "port"),
    [
        (TLS_VS, "false", None, 8443),
        (TLS_VS, "true", HttpsRedirect(), 8443),
        (TLS_VS, "{}", HttpsRedirect(), 8443),
        (TLS_VS, "{code: 302}", HttpsRedirect(code=302), 8443),
        (TLS_VS, "{code: 308, port: 443}", HttpsRedirect(code=308, port=443), 443),
        # No TLS bind here: TLS is served elsewhere (another box, a port forward).
        (GOOD_VS, "true", HttpsRedirect(), 443),
        (GOOD_VS, "{port: 8443}", HttpsRedirect(port=8443), 8443),
    ],
)
def test_redirect_to_https_forms(
    base: str, written: str, redirect: HttpsRedirect | None, port: int
) -> None:
    config = load_text(base + f"    redirect_to_https: {written}\n", "lb.yaml")
    vs = config.virtual_servers[0]
    assert vs.redirect_to_https == redirect
    assert vs.https_port() == port
    assert config.warnings == ()


def test_redirect_status_keeps_the_method_unless_told() -> None:
    default = HttpsRedirect()
    assert [default.status_for(m) for m in (b"GET", b"HEAD", b"POST", b"PUT")] == [
        301,
        301,
        308,
        308,
    ]
    assert HttpsRedirect(code=302).status_for(b"POST") == 302


def test_mode_http_is_accepted_with_a_warning() -> None:
    config = load_text(GOOD_VS + "    mode: http\n", "lb.yaml")
    assert config.warnings == (
        "lb.yaml:6:5: virtual_servers[0].mode: mode has no effect: lbproxy is HTTP only",
    )
