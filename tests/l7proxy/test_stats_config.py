"""``global.stats.auth`` in the configuration file: read, and refused with file:line."""

from __future__ import annotations

import os

import pytest

from config.loader import ConfigError, load_text
from config.model import StatsAuth

VS = (
    "virtual_servers:\n"
    "  - label: www\n"
    "    bind: 127.0.0.1:8080\n"
    "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
)


def test_auth_is_read_with_the_password_file_next_to_the_config() -> None:
    config = load_text(
        "global:\n"
        "  stats: {bind: 127.0.0.1:8404, auth: {user: admin, password_file: stats.pass}}\n" + VS,
        "/etc/lbproxy/lb.yaml",
    )
    assert config.global_.stats is not None
    assert config.global_.stats.auth == StatsAuth(
        "admin", os.path.abspath("/etc/lbproxy/stats.pass")
    )


@pytest.mark.parametrize(
    ("auth", "where", "message"),
    [
        ("{user: admin}", "2:39: global.stats.auth.password_file:", "required key is missing"),
        ("{password_file: p}", "2:39: global.stats.auth.user:", "required key is missing"),
        (
            "{user: 'a:b', password_file: p}",
            "2:46: global.stats.auth.user:",
            "must not contain ':'",
        ),
        ("{user: a, password_file: p, pass: x}", "2:67: global.stats.auth.pass:", "unknown key"),
        ("yes", "2:39: global.stats.auth:", "expected a mapping"),
    ],
)
def test_bad_auth_names_file_line_and_key(auth: str, where: str, message: str) -> None:
    text = "global:\n  stats: {bind: 127.0.0.1:8404, auth: " + auth + "}\n" + VS
    with pytest.raises(ConfigError) as caught:
        load_text(text, "lb.yaml")
    problems = "\n".join(caught.value.problems)
    assert f"lb.yaml:{where}" in problems, problems
    assert message in problems, problems
