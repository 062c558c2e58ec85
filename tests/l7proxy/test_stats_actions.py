"""The stats page's action rules: Basic credentials, same-origin, the form token, the plan."""

from __future__ import annotations

import base64

import pytest

from balancing.state import PoolState
from config.model import Address, AdminState, Pool, RealServer
from l7proxy import statsactions


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("admin", "s3cret:x"), "admin"),  # the password may hold a colon
        (basic("admin", "wrong"), None),
        (basic("Admin", "s3cret:x"), None),
        (b"Bearer abc", None),
        (b"Basic not-base64!", None),
        (b"Basic " + base64.b64encode(b"nocolon"), None),
        (None, None),
    ],
)
def test_basic_credentials(header: bytes | None, expected: str | None) -> None:
    assert statsactions.authorized_user(header, "admin", b"s3cret:x") == expected


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, b"127.0.0.1:8404", True),  # not a browser: the token still guards
        (b"http://127.0.0.1:8404", b"127.0.0.1:8404", True),
        (b"http://LB.example:80", b"lb.example", True),
        (b"https://lb.example", b"lb.example:443", True),
        (b"http://127.0.0.1:9999", b"127.0.0.1:8404", False),
        (b"http://evil.example", b"lb.example", False),
        (b"null", b"lb.example", False),
        (b"http://lb.example", None, False),
    ],
)
def test_same_origin(origin: bytes | None, host: bytes | None, allowed: bool) -> None:
    assert statsactions.same_origin(origin, host) is allowed


def pools() -> dict[str, PoolState]:
    pool = Pool(
        "www",
        (RealServer("web1", Address("10.0.0.1", 80)), RealServer("web2", Address("10.0.0.2", 80))),
    )
    return {"www": PoolState(pool)}


def test_token_is_compared_whole() -> None:
    assert statsactions.token_ok({"token": ["abc"]}, "abc")
    assert not statsactions.token_ok({"token": ["ab"]}, "abc")
    assert not statsactions.token_ok({}, "abc")


def test_a_row_button_drains_one_server_and_logs_who() -> None:
    states = pools()
    form = statsactions.parse_form(b"token=t&b=www&one=web1%7Cdrain&s=web2&action=maint")
    changes = statsactions.plan(form, states)
    lines = statsactions.apply(changes, 7.0, "admin")
    assert lines == ["stats page: www/web1 -> drain by user admin"]
    web1, web2 = states["www"].servers
    assert (web1.admin, web1.counters.last_change, web2.admin) == (
        AdminState.DRAIN,
        7.0,
        AdminState.READY,
    )


def test_the_selection_gets_the_chosen_action_or_weight() -> None:
    states = pools()
    form = statsactions.parse_form(b"b=www&s=web1&s=web2&action=weight&weight=5")
    statsactions.apply(statsactions.plan(form, states), 1.0, "admin")
    assert [s.weight for s in states["www"].servers] == [5, 5]
    form = statsactions.parse_form(b"b=www&s=web2&action=maint")
    statsactions.apply(statsactions.plan(form, states), 1.0, "admin")
    assert states["www"].servers[1].status_text() == "MAINT"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"b=nope&s=web1&action=drain", "no pool 'nope'"),
        (b"b=www&s=web9&action=drain", "no server 'web9'"),
        (b"b=www&s=web1&action=explode", "unknown action"),
        (b"b=www&action=drain", "no server selected"),
        (b"b=www&s=web1&action=weight&weight=-1", "weight must be"),
        (b"b=www&s=web1&action=weight&weight=999", "weight must be"),
    ],
)
def test_bad_forms_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(statsactions.ActionError, match=message):
        statsactions.plan(statsactions.parse_form(body), pools())
