"""haproxy.cfg reading and translation: 1.x and 2.x syntax, defaults, conditions, the report."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from config.importers.haproxy_reader import read, split_words
from config.importers.pipeline import EXIT_CARRIED, EXIT_DROPPED, import_configs
from config.importers.report import Report


def translate(
    text: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[str], int]:
    result = import_configs(
        "h.cfg", None, env=env or {}, read_text=lambda _: text, exists=lambda _: True
    )
    assert result.yaml_text is not None, result.report
    return yaml.safe_load(result.yaml_text), result.report, result.status


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("server web1 10.0.0.1:80 check#comment", ["server", "web1", "10.0.0.1:80", "check"]),
        ("server web1 10.0.0.1:80 check # comment", ["server", "web1", "10.0.0.1:80", "check"]),
        (r"reqrep ^Host:\ foo Host:\ bar\.com", ["reqrep", "^Host: foo", r"Host: bar\.com"]),
        ("acl a hdr(x) \"two words\" '$HOME'", ["acl", "a", "hdr(x)", "two words", "$HOME"]),
        ('bind "${IP}:80"', ["bind", "10.1.1.1:80"]),
        ("bind ${NOPE-0.0.0.0}:${PORT}", ["bind", "0.0.0.0:8080"]),
        ("timeout client $UNSET", ["timeout", "client"]),
        (
            r"option httpchk GET / HTTP/1.1\r\nHost:\ www",
            ["option", "httpchk", "GET", "/", "HTTP/1.1\r\nHost: www"],
        ),
    ],
)
def test_words_as_haproxy_reads_them(line: str, words: list[str]) -> None:
    missing: list[str] = []
    assert split_words(line, {"IP": "10.1.1.1", "PORT": "8080"}, missing) == words


def test_defaults_inheritance_named_and_last() -> None:
    text = (
        "defaults\n  timeout connect 1s\ndefaults web\n  timeout connect 2s\n"
        "frontend a from web\n  bind :80\nbackend b\n  server s 1.1.1.1:80"
    )
    sections = read(text, "h.cfg", {}, Report())
    front, back = sections[2], sections[3]
    assert [line.text() for line in front.inherited] == ["timeout connect 2s"]
    assert [line.text() for line in back.inherited] == ["timeout connect 2s"]  # the last one above


OLD_SYNTAX = """global
    daemon
defaults
    mode http
    contimeout 5000
    srvtimeout 50000
    clitimeout 50000
listen www 0.0.0.0:80
    cookie SERVERID insert indirect nocache
    option httpchk /health
    reqadd X-Forwarded-Proto:\\ http
    reqidel ^X-Debug:.*
    rspidel ^Server:.*
    reqrep ^Host:\\ old\\.example\\.com Host:\\ www.example.com
    reqrep ^([^\\ ]*)\\ /old/(.*) \\1\\ /new/\\2
    server web1 10.0.0.1:80 cookie w1 check inter 3000 rise 2 fall 5
    server web2 10.0.0.2:80 cookie w2 check inter 3000 rise 2 fall 5
    server sorry 10.0.0.9:80 backup"""


def test_old_syntax_listen_with_address_and_req_rsp() -> None:
    doc, report, status = translate(OLD_SYNTAX)
    [vs] = doc["virtual_servers"]
    assert vs["bind"] == "0.0.0.0:80"
    assert vs["timeouts"] == {"connect": "5s", "client_idle": "50s", "server": "50s"}
    # The cookie values clients already hold stay valid: they become the labels.
    assert [s["label"] for s in vs["real_servers"]] == ["w1", "w2"]
    assert vs["health_check"] == {
        "interval": "3s",
        "rise": 2,
        "fall": 5,
        "http": {"path": "/health"},
    }
    assert vs["fallback"] == {
        "label": "sorry",
        "address": "10.0.0.9:80",
        "health_check": {"enabled": False},
    }
    assert vs["forwardfor"] is False
    assert {"delete": "X-Debug"} in vs["request_headers"]
    # X-Forwarded-Proto is lbproxy's own: not a rule, reported as not needed.
    assert all("X-Forwarded-Proto" not in str(rule) for rule in vs["request_headers"])
    assert {
        "replace": {"name": "Host", "match": r"old\.example\.com", "with": "www.example.com"}
    } not in vs["request_headers"]
    assert vs["response_headers"] == [{"delete": "Server"}]
    assert any(":15: reqrep: not carried: " in line and "request-line" in line for line in report)
    assert any(":14: reqrep: not carried: " in line and "Host" in line for line in report)
    assert status == EXIT_DROPPED


MODERN = """defaults
    mode http
    timeout connect 5s
frontend fe
    bind :80
    bind :443 ssl crt /etc/ssl/site.pem alpn h2,http/1.1
    acl api path_beg /api/
    acl api path_beg /v2/
    acl static hdr_end(host) -i .cdn.example.com
    acl office src 10.0.0.0/8 192.168.0.0/16
    http-request redirect scheme https code 301 unless { ssl_fc }
    http-request deny deny_status 429 if { hdr_reg(User-Agent) -i bot } !office
    http-request set-header X-Client %[src]
    http-response del-header Server
    use_backend api if api
    use_backend static if static || { path_end .png }
    default_backend www
backend www
    balance leastconn
    server w1 10.0.0.1:8080 check maxconn 100 send-proxy-v2
backend api
    stick-table type ip size 1m expire 30m
    stick on src
    server a1 10.0.0.5:8443 ssl verify none check
backend static
    server s1 10.0.0.6:80
"""


def test_modern_conditions_rules_and_redirect() -> None:
    doc, report, _ = translate(MODERN)
    [vs] = doc["virtual_servers"]
    assert vs["bind"] == [
        "0.0.0.0:80",
        {"address": "0.0.0.0:443", "tls": {"certificate": "/etc/ssl/site.pem"}},
    ]
    assert vs["redirect_to_https"] == {"code": 301}
    assert vs["acls"]["api"] == {"or": [{"path_prefix": "/api/"}, {"path_prefix": "/v2/"}]}
    assert vs["acls"]["office"] == {"src": ["10.0.0.0/8", "192.168.0.0/16"]}
    assert vs["deny"] == [
        {
            "if": {"and": [{"header": {"name": "User-Agent", "regex": "(?i)bot"}}, "!office"]},
            "status": 429,
        }
    ]
    assert vs["rules"] == [
        {"if": "api", "pool": "api"},
        {"if": {"or": ["static", {"path_suffix": ".png"}]}, "pool": "static"},
    ]
    assert vs["request_headers"] == [{"set": {"X-Client": "%[src]"}}]
    assert vs["real_servers"] == [
        {"label": "w1", "address": "10.0.0.1:8080", "maxconn": 100, "send_proxy": "v2"}
    ]
    api = doc["pools"]["api"]
    assert api["persistence"] == {
        "source": {"mask": 32, "mask6": 128, "timeout": "30m", "size": 1048576}
    }
    assert api["real_servers"][0]["tls"] == {"verify": "none"}
    assert any("alpn h2" in line for line in report)


def test_tcp_sections_are_reported_not_carried() -> None:
    text = (
        "frontend db\n  mode tcp\n  bind :3306\n  default_backend db\n"
        "backend db\n  mode tcp\n  server d 1.1.1.1:3306\n"
        "frontend web\n  mode http\n  bind :80\n  default_backend web\n"
        "backend web\n  mode http\n  server w 1.1.1.2:80"
    )
    doc, report, status = translate(text)
    assert [vs["label"] for vs in doc["virtual_servers"]] == ["web"]
    assert any("h.cfg:2: frontend db: not carried: mode tcp" in line for line in report)
    assert status == EXIT_DROPPED


def test_everything_carried_exits_zero() -> None:
    text = (
        "defaults\n  mode http\nfrontend web\n  bind 127.0.0.1:80\n  option forwardfor\n"
        "  default_backend web\nbackend web\n  server w 127.0.0.1:8080 check\n"
    )
    doc, report, status = translate(text)
    assert report == []
    assert status == EXIT_CARRIED
    assert doc["virtual_servers"][0]["forwardfor"] is True


def test_no_final_newline_and_crlf() -> None:
    text = "defaults\r\n  mode http\r\nlisten x\r\n  bind :80\r\n  server a 1.1.1.1:80"
    doc, _, _ = translate(text)
    assert doc["virtual_servers"][0]["real_servers"] == [{"label": "a", "address": "1.1.1.1:80"}]


def test_every_virtual_server_and_rule_names_its_line() -> None:
    result = import_configs(
        "h.cfg", None, env={}, read_text=lambda _: MODERN, exists=lambda _: True
    )
    assert result.yaml_text is not None
    assert "# h.cfg:4: frontend fe, default_backend www (h.cfg:18)" in result.yaml_text
    assert "# h.cfg:15: use_backend api if api" in result.yaml_text
    assert "# h.cfg:21: backend api" in result.yaml_text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "frontend",
        "listen\n",
        "backend b\n  server",
        "frontend f\n  bind\n",
        "\x00\x01garbage {{{",
        "frontend f\n  bind :80\n  use_backend\n  http-request\n  acl\n  redirect\n  errorfile\n",
        "backend b\n  server s 1.1.1.1:80 weight\n  cookie\n  stick-table\n  stick on src\n",
    ],
)
def test_garbage_never_raises(text: str) -> None:
    result = import_configs("h.cfg", None, env={}, read_text=lambda _: text, exists=lambda _: False)
    assert result.status in (EXIT_CARRIED, EXIT_DROPPED)


@pytest.mark.parametrize(
    ("global_lines", "workers"),
    [
        ("", "auto"),  # HAProxy 2.x: one thread per core
        ("  nbthread 4\n", 4),
        ("  nbthread 1\n", 1),
        ("  nbproc 1\n", "auto"),  # the old default says nothing about threads
        ("  nbthread 200\n", 64),
    ],
)
def test_an_appliance_keeps_its_cores(global_lines: str, workers: object) -> None:
    text = (
        f"global\n{global_lines}defaults\n  mode http\nfrontend f\n  bind :8080\n"
        "  default_backend b\nbackend b\n  server s1 127.0.0.1:80\n"
    )
    doc, _, _ = translate(text)
    assert doc["global"]["workers"] == workers
