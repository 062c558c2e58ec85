"""The service keys of ``global``: log targets, user, group, pidfile."""

from __future__ import annotations

import pytest

from config.loader import load_text
from config.model import Address, LogKind, LogTarget, SyslogFormat
from tests.config.test_loader_files import GOOD, problems_of


def global_(text: str) -> str:
    return "global:\n" + "".join(f"  {line}\n" for line in text.splitlines()) + GOOD


def test_defaults_keep_todays_behaviour() -> None:
    settings = load_text(GOOD, "/etc/lb/lb.yaml").global_
    assert settings.log == (LogTarget(LogKind.STDOUT),)
    assert (settings.user, settings.group, settings.pidfile) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("stdout", LogTarget(LogKind.STDOUT)),
        ("stderr", LogTarget(LogKind.STDERR)),
        ("logs/access.log", LogTarget(LogKind.FILE, path="/etc/lb/logs/access.log")),
        ("/var/log/lb.log", LogTarget(LogKind.FILE, path="/var/log/lb.log")),
        ("file:///var/log/lb.log", LogTarget(LogKind.FILE, path="/var/log/lb.log")),
        ("udp://127.0.0.1", LogTarget(LogKind.UDP, address=Address("127.0.0.1", 514))),
        ('"udp://[::1]:1514"', LogTarget(LogKind.UDP, address=Address("::1", 1514))),
        (
            "udp://logs.example.com:515",
            LogTarget(LogKind.UDP, address=Address("logs.example.com", 515)),
        ),
        ("unix:///dev/log", LogTarget(LogKind.UNIX, path="/dev/log")),
        (
            "{target: unix:///dev/log, format: rfc5424, facility: daemon, access: false}",
            LogTarget(
                LogKind.UNIX,
                path="/dev/log",
                format=SyslogFormat.RFC5424,
                facility="daemon",
                access=False,
            ),
        ),
    ],
)
def test_log_targets(value: str, target: LogTarget) -> None:
    settings = load_text(global_(f"log: {value}"), "/etc/lb/lb.yaml").global_
    assert settings.log == (target,)


def test_a_list_of_targets() -> None:
    text = global_("log:\n  - stderr\n  - {target: udp://10.0.0.5, facility: local2}")
    assert load_text(text, "/etc/lb/lb.yaml").global_.log == (
        LogTarget(LogKind.STDERR),
        LogTarget(LogKind.UDP, address=Address("10.0.0.5", 514), facility="local2"),
    )


def test_user_group_and_pidfile() -> None:
    text = global_("user: lbproxy\ngroup: 65534\npidfile: run/lbproxy.pid")
    settings = load_text(text, "/etc/lb/lb.yaml").global_
    assert (settings.user, settings.group, settings.pidfile) == (
        "lbproxy",
        "65534",
        "/etc/lb/run/lbproxy.pid",
    )


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("log: /dev/log", "2:8: global.log", "is the syslog socket; write unix:///dev/log"),
        ("log: tcp://1.2.3.4:514", "2:8: global.log", "unknown scheme 'tcp'"),
        ("log: unix://dev/log", "2:8: global.log", "the socket path must be absolute"),
        ("log: udp://1.2.3.4:99999", "2:8: global.log", "port 99999 is not in 1..65535"),
        ("log: []", "2:8: global.log", "must not be empty"),
        ("log: {format: rfc5424}", "2:8: global.log.target", "required key is missing"),
        (
            "log: {target: stdout, facility: local8}",
            "2:35: global.log.facility",
            "'local8' is not",
        ),
        (
            "log: {target: stdout, format: json}",
            "2:33: global.log.format",
            "'json' is not one of",
        ),
        ("log: {target: stdout, level: info}", "2:25: global.log.level", "unknown key"),
        ("log: [stdout, 5]", "2:17: global.log[1]", "expected a string"),
        ("group: adm", "2:3: global.group", "group needs user"),
        ('user: "a:b"', "2:9: global.user", "is not a user or group name"),
        ("user: -1", "2:9: global.user", "-1 is out of range"),
        ("user: ''", "2:9: global.user", "must not be empty"),
        ("pidfile: [a]", "2:12: global.pidfile", "expected a string"),
    ],
)
def test_bad_service_keys_name_line_and_key(text: str, where: str, message: str) -> None:
    problems = problems_of(global_(text))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"lb.yaml:{where}: "), problems
    assert message in problems[0]
