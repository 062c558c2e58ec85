"""pound.cfg reading and translation: 2.x and 4.x syntax, Include, services, sessions."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from config.importers.pipeline import EXIT_CARRIED, EXIT_DROPPED, import_configs
from config.importers.pound_reader import split_words


def translate(path: pathlib.Path, exists: bool = True) -> tuple[dict[str, Any], list[str], int]:
    result = import_configs(None, str(path), env={}, exists=lambda _: exists)
    assert result.yaml_text is not None, result.report
    return yaml.safe_load(result.yaml_text), result.report, result.status


def test_words() -> None:
    assert split_words('  HeadRequire "Host: .*\\"x\\"" # note') == ["HeadRequire", 'Host: .*"x"']
    assert split_words("Port 80#glued") == ["Port", "80"]


POUND2 = """User "www-data"
Alive 10
Client 20
TimeOut 30
ListenHTTPS
    Address 0.0.0.0
    Port 443
    Cert "/etc/pound/a.pem"
    Cert "/etc/pound/b.pem"
    Ciphers "HIGH:!aNULL"
    Disable TLSv1_2
    xHTTP 2
    RewriteLocation 0
    AddHeader "X-SSL: on"
    HeadRemove "^X-Forwarded-Proto"
    Err503 "/etc/pound/503.html"
    Include "services.cfg"
End
Service
    HeadRequire "Host: .*static.example.com"
    BackEnd
        Address 10.0.0.5
        Port 80
        Priority 3
    End
End
Service
    BackEnd
        Address 10.0.0.1
        Port 8080
        HAport 8081
    End
    BackEnd
        Address 10.0.0.2
        Port 8080
        HTTPS
    End
    Emergency
        Address 10.0.0.9
        Port 80
    End
    Session
        Type COOKIE
        ID "JSESSIONID"
        TTL 300
    End
End"""

INCLUDED = """Service "old"
    URL "^/old/"
    Redirect 301 "https://www.example.com"
End
Service "api"
    Host "api.example.com"
    Not URL "^/internal"
    BackEnd
        Address 10.0.0.7
        Port 9000
    End
    Session
        Type IP
        TTL 600
    End
End"""


def test_pound2_listener_services_include_emergency_and_sessions(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pound.cfg").write_text(POUND2)
    (tmp_path / "services.cfg").write_text(INCLUDED)
    doc, report, status = translate(tmp_path / "pound.cfg")
    assert doc["global"]["workers"] == "auto"  # Pound's threads use every core
    [vs] = doc["virtual_servers"]
    assert vs["bind"] == {
        "address": "0.0.0.0:443",
        "tls": {
            "ciphers": "HIGH:!aNULL",
            "min_version": "1.3",
            "certificate": ["/etc/pound/a.pem", "/etc/pound/b.pem"],
        },
    }
    assert vs["xhttp"] == 2
    assert vs["rewrite_location"] is False
    assert vs["timeouts"] == {"header": "20s", "client_idle": "20s", "server": "30s"}
    assert vs["request_headers"] == [{"add": {"X-SSL": "on"}}, {"delete": "X-Forwarded-Proto"}]
    assert vs["error_pages"] == {503: "/etc/pound/503.html"}
    # The included services come first (the listener's own), then the top-level ones.
    assert vs["redirects"] == [
        {"if": {"path_regex": "^/old/"}, "code": 301, "prefix": "https://www.example.com"}
    ]
    api_rule, static_rule = vs["rules"]
    assert api_rule["if"] == {
        "and": [{"host": "api.example.com"}, {"not": {"path_regex": "^/internal"}}]
    }
    assert static_rule["if"] == {"host_regex": "(?i).*static.example.com"}
    assert doc["pools"]["api"]["persistence"] == {
        "source": {"mask": 32, "mask6": 128, "timeout": "10m"}
    }
    assert vs["persistence"] == {"cookie": "SERVERID"}
    assert vs["fallback"]["address"] == "10.0.0.9:80"
    assert vs["real_servers"] == [
        {"label": "backend1", "address": "10.0.0.1:8080", "check_address": "10.0.0.1:8081"},
        {"label": "backend2", "address": "10.0.0.2:8080", "tls": {"verify": "none"}},
    ]
    assert vs["health_check"]["interval"] == "10s"
    assert any("Session COOKIE: not carried" in line for line in report)
    assert status == EXIT_CARRIED, report


def test_unknown_session_kinds_and_missing_include_are_reported(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pound.cfg").write_text(
        'Include "missing.cfg"\nListenHTTP\n Address 127.0.0.1\n Port 80\n Service\n  BackEnd\n   '
        'Address 127.0.0.1\n   Port 8080\n  End\n  Session\n   Type URL\n   ID "sid"\n   TTL '
        "60\n  End\n End\nEnd\n"
    )
    doc, report, status = translate(tmp_path / "pound.cfg")
    assert "persistence" not in doc["virtual_servers"][0]
    assert any("pound.cfg:1: Include" in line for line in report)
    assert any("Session URL: not carried" in line for line in report)
    assert status == EXIT_DROPPED


def test_missing_certificate_falls_back_to_self_signed_with_a_report(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "pound.cfg").write_text(
        'ListenHTTPS\n Address 127.0.0.1\n Port 443\n Cert "/nowhere.pem"\n Service\n  BackEnd\n   '
        "Address 127.0.0.1\n   Port 80\n  End\n End\nEnd"
    )
    doc, report, status = translate(tmp_path / "pound.cfg", exists=False)
    assert doc["virtual_servers"][0]["bind"] == {"address": "127.0.0.1:443", "tls": True}
    assert any(
        "pound.cfg:4: Cert: not carried: certificate /nowhere.pem cannot be read here" in line
        for line in report
    )
    assert status == EXIT_DROPPED


@pytest.mark.parametrize(
    "text",
    [
        "",
        "End",
        "ListenHTTP",
        "ListenHTTP\nService\nBackEnd\n",
        "Service\n Session\n Type\n End\nEnd",
        "ListenHTTP\n Port abc\nEnd",
        "ListenHTTP\n Service\n  Redirect\n  URL\n  Host -re\n End\nEnd",
        "\x00\xff",
    ],
)
def test_garbage_never_raises(tmp_path: pathlib.Path, text: str) -> None:
    (tmp_path / "pound.cfg").write_text(text, errors="replace")
    result = import_configs(None, str(tmp_path / "pound.cfg"), env={}, exists=lambda _: False)
    assert result.status in (EXIT_CARRIED, EXIT_DROPPED)


def test_pound4_named_backends_match_blocks_and_error_service(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pound.cfg").write_text(
        """Backend "app"
    Address 10.0.0.1
    Port 8080
End
ListenHTTP
    Address 127.0.0.1
    Port 8080
    Service
        Match OR
            Host -beg "www."
            Path -beg "/app/"
        End
        UseBackend "app"
    End
    Service
        Error 404
    End
End
"""
    )
    doc, _, _ = translate(tmp_path / "pound.cfg")
    [vs] = doc["virtual_servers"]
    [rule] = vs["rules"]
    assert rule["if"] == {"or": [{"host_prefix": "www."}, {"path_prefix": "/app/"}]}
    assert doc["pools"][rule["pool"]]["real_servers"][0]["address"] == "10.0.0.1:8080"
    assert vs["deny"] == [
        {"if": {"not": {"or": [{"host_prefix": "www."}, {"path_prefix": "/app/"}]}}, "status": 404}
    ]
    assert vs["xhttp"] == 0
