"""Differential tests: HAProxy (Debian's) and Pound (the anchors build) with an original file,
lbproxy with its import, in front of the same real servers; the same requests to both.

Compared: which server answered, the status, the redirect's Location, the cookies set (name and
value), chosen response headers, and the headers the server received, except the differences
listed in docs/migration.md (KNOWN_DIFFERENCES below, each with its reason).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from .differential import (
    HAPROXY,
    Ask,
    Reply,
    echo_servers,
    fill,
    find_pound,
    free_port,
    import_yaml,
    run_haproxy,
    run_lbproxy,
    run_pound,
    send,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Headers the real servers receive differently, on purpose (docs/migration.md, "Differences").
KNOWN_DIFFERENCES = {
    # lbproxy always sets these three from the listener, and removes what the client sent;
    # HAProxy adds none of them, Pound 4 adds -Proto and -Port.
    "x-forwarded-proto": "always set by lbproxy",
    "x-forwarded-port": "always set by lbproxy",
    "x-forwarded-host": "always set by lbproxy",
    # Hop-by-hop: each proxy manages its own connection to the server.
    "connection": "hop-by-hop",
    "keep-alive": "hop-by-hop",
}


def differences(theirs: list[Reply], ours: list[Reply], asks: list[Ask]) -> list[str]:
    found = []
    for ask, a, b in zip(asks, theirs, ours, strict=True):
        what = f"{ask.method} {ask.path} {dict(ask.headers)}"
        for name in ("status", "server", "location", "cookies"):
            if getattr(a, name) != getattr(b, name):
                found.append(
                    f"{what}: {name}: original {getattr(a, name)!r}, lbproxy {getattr(b, name)!r}"
                )
        names = (set(a.seen) | set(b.seen)) - set(KNOWN_DIFFERENCES)
        for header in sorted(names):
            if a.seen.get(header) != b.seen.get(header):
                found.append(
                    f"{what}: server received {header}: original {a.seen.get(header)!r}, lbproxy "
                    f"{b.seen.get(header)!r}"
                )
    return found


def compare(
    tmp_path: pathlib.Path,
    labels: list[str],
    template: str,
    asks: list[Ask],
    run_original: Callable[[pathlib.Path, str, int], AbstractContextManager[None]],
    kind: str,
) -> tuple[list[str], list[str]]:
    with echo_servers(labels) as ports:
        theirs_port, ours_port = free_port(), free_port()
        original = fill(template, {**ports, "fe": theirs_port})
        imported = fill(template, {**ports, "fe": ours_port})
        config, report = import_yaml(
            tmp_path, imported if kind == "haproxy" else None, imported if kind == "pound" else None
        )
        with run_original(tmp_path, original, theirs_port):
            theirs = send(theirs_port, asks)
        with run_lbproxy(config, ours_port):
            ours = send(ours_port, asks)
    return differences(theirs, ours, asks), report


DEFAULTS = """
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""

HAPROXY_SITE = (
    DEFAULTS
    + """
frontend www
    bind 127.0.0.1:{fe}
    option forwardfor
    acl is_api path_beg /api/
    acl is_static hdr(host) -i static.example.com
    http-request deny deny_status 403 if { path_beg /admin }
    http-request redirect location /new code 301 if { path /old }
    http-request redirect prefix http://www.example.net code 302 if { hdr(host) -i old.example.com }
    http-request set-header X-Env prod
    http-request add-header X-Client %[src]
    http-request del-header X-Debug
    http-response set-header X-Frame-Options DENY
    use_backend api if is_api
    use_backend static if is_static METH_GET
    default_backend www
backend www
    balance roundrobin
    cookie SERVERID insert indirect nocache
    option httpchk GET /health
    server web1 127.0.0.1:{web1} cookie web1 check inter 1s
    server web2 127.0.0.1:{web2} cookie web2 check inter 1s
    server spare 127.0.0.1:{spare} backup
backend api
    server api1 127.0.0.1:{api1}
backend static
    server static1 127.0.0.1:{static1}
"""
)

SITE_ASKS = [
    Ask(path="/"),
    Ask(path="/", keep_cookie=True),
    Ask(path="/again", keep_cookie=True),
    Ask(path="/api/items"),
    Ask(method="POST", path="/api/items"),
    Ask(path="/logo.png", headers=(("Host", "static.example.com"),)),
    Ask(method="POST", path="/form", headers=(("Host", "static.example.com"),), keep_cookie=True),
    Ask(path="/admin/users"),
    Ask(path="/old"),
    Ask(path="/page?x=1", headers=(("Host", "old.example.com"),)),
    Ask(path="/", headers=(("X-Debug", "1"), ("X-Forwarded-For", "192.0.2.7")), keep_cookie=True),
    Ask(path="/", headers=(("X-Env", "test"),), keep_cookie=True),
]


@pytest.fixture
def haproxy() -> str:
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip(f"HAProxy is not installed at {HAPROXY}")
    return HAPROXY


def _haproxy_runner(tmp: pathlib.Path, text: str, port: int) -> AbstractContextManager[None]:
    return run_haproxy(tmp, text, port)


def test_haproxy_site_agrees(tmp_path: pathlib.Path, haproxy: str) -> None:
    found, report = compare(
        tmp_path,
        ["web1", "web2", "spare", "api1", "static1"],
        HAPROXY_SITE,
        SITE_ASKS,
        _haproxy_runner,
        "haproxy",
    )
    assert found == [], "\n".join([*found, "report:", *report])


HAPROXY_PERSISTENCE = (
    DEFAULTS
    + """
frontend www
    bind 127.0.0.1:{fe}
    option forwardfor
    default_backend www
backend www
    balance roundrobin
    cookie SRV insert indirect nocache httponly
    option httpchk GET /health
    server web1 127.0.0.1:{web1} cookie w1 check inter 1s
    server web2 127.0.0.1:{web2} cookie w2 check inter 1s
    server spare 127.0.0.1:{spare} backup
"""
)


def test_haproxy_cookie_persistence_agrees(tmp_path: pathlib.Path, haproxy: str) -> None:
    asks = [
        Ask(path="/"),
        Ask(path="/next", keep_cookie=True),
        Ask(method="POST", path="/form", keep_cookie=True),
        Ask(path="/", headers=(("Cookie", "SRV=w2"),)),
        Ask(path="/", headers=(("Cookie", "SRV=unknown"),)),
        Ask(path="/", headers=(("X-Forwarded-For", "192.0.2.7"),), keep_cookie=True),
    ]
    found, report = compare(
        tmp_path, ["web1", "web2", "spare"], HAPROXY_PERSISTENCE, asks, _haproxy_runner, "haproxy"
    )
    assert found == [], "\n".join([*found, "report:", *report])


HAPROXY_SOURCE = (
    DEFAULTS
    + """
listen app
    bind 127.0.0.1:{fe}
    balance source
    http-request set-header X-Via lb
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b} disabled
"""
)


def test_haproxy_source_balance_and_disabled_server_agree(
    tmp_path: pathlib.Path, haproxy: str
) -> None:
    asks = [Ask(path="/1"), Ask(path="/2"), Ask(method="PUT", path="/3")]
    found, report = compare(tmp_path, ["a", "b"], HAPROXY_SOURCE, asks, _haproxy_runner, "haproxy")
    assert found == [], "\n".join([*found, "report:", *report])


POUND_SITE = """
Alive 1
ListenHTTP
    Address 127.0.0.1
    Port {fe}
    xHTTP 1
    Service
        URL "^/api/"
        BackEnd
            Address 127.0.0.1
            Port {api1}
        End
    End
    Service
        Host "static.example.com"
        BackEnd
            Address 127.0.0.1
            Port {static1}
        End
    End
    Service
        URL "^/old"
        Redirect 301 "http://www.example.net/new"
    End
    Service
        URL "^/moved"
        Redirect "http://www.example.net"
    End
    Service
        HeadRequire "X-Canary: .*"
        BackEnd
            Address 127.0.0.1
            Port {canary}
        End
    End
    Service
        BackEnd
            Address 127.0.0.1
            Port {web1}
        End
        Session
            Type IP
            TTL 300
        End
    End
End
"""

POUND_ASKS = [
    Ask(path="/"),
    Ask(path="/", keep_cookie=True),
    Ask(path="/api/items"),
    Ask(method="DELETE", path="/api/items/1"),
    Ask(method="PROPFIND", path="/"),
    Ask(path="/x.css", headers=(("Host", "static.example.com"),)),
    Ask(path="/old/page"),
    Ask(path="/moved/page?x=1"),
    Ask(path="/", headers=(("X-Canary", "yes"),)),
    Ask(path="/", headers=(("X-Forwarded-For", "192.0.2.7"),)),
]


@pytest.fixture(scope="module")
def pound() -> str:
    binary, why = find_pound(ROOT)
    if binary is None:
        pytest.skip(f"Pound is not available: {why}")
    return binary


def test_pound_site_agrees(tmp_path: pathlib.Path, pound: str) -> None:
    def runner(tmp: pathlib.Path, text: str, port: int) -> AbstractContextManager[None]:
        return run_pound(tmp, pound, text, port)

    found, report = compare(
        tmp_path, ["web1", "api1", "static1", "canary"], POUND_SITE, POUND_ASKS, runner, "pound"
    )
    assert found == [], "\n".join([*found, "report:", *report])
