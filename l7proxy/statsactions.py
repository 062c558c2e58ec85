"""What the stats page's action forms may do, and to whom (HAProxy's ``stats admin``). Pure.

A POST changes servers only when it carries valid HTTP Basic credentials, the page's
anti-forgery token, and no ``Origin`` naming another site: a page elsewhere cannot make an
operator's browser drain servers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from balancing.state import PoolState, ServerState
from config.model import AdminState

from .runtime import ClientSession

MAX_FORM_BYTES = 64 * 1024  # a form names a pool, some servers, an action: a few hundred bytes
MAX_WEIGHT = 256  # HAProxy's server weight range is 0..256
REALM = 'Basic realm="lbproxy stats", charset="UTF-8"'


def authorized_user(header: bytes | None, user: str, password: bytes) -> str | None:
    """The user named by an ``Authorization: Basic`` header when it matches, else None.

    Both parts are compared in constant time, so a wrong guess says nothing about how close it
    was."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    given_user, colon, given_password = decoded.partition(b":")
    if not colon:
        return None
    user_ok = hmac.compare_digest(given_user, user.encode())
    password_ok = hmac.compare_digest(given_password, password)
    return user if user_ok and password_ok else None


def _authority(scheme: str, netloc: str) -> str:
    host = netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host.removesuffix(default)
    return host


def same_origin(origin: bytes | None, host: bytes | None) -> bool:
    """False when the request's ``Origin`` names a site other than the one in ``Host``.

    No Origin at all is a client that is not a browser (curl, a script): it still needs the
    token. ``Origin: null`` (a sandboxed frame, a local file) names no site we know: refused.
    """
    if origin is None:
        return True
    if host is None:
        return False
    try:
        parts = urlsplit(origin.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _authority(parts.scheme, parts.netloc) == _authority(
        parts.scheme, host.decode("latin-1").strip()
    )


def token_ok(form: Mapping[str, list[str]], token: str) -> bool:
    given = form.get("token", [""])[0]
    return hmac.compare_digest(given.encode(), token.encode())


def parse_form(body: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body; unreadable bytes are no form."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return {}
    return parse_qs(text, keep_blank_values=True, max_num_fields=1000)


@dataclass(frozen=True, slots=True)
class Change:
    server: ServerState
    action: str  # ready, drain, maint, weight or kill
    weight: int | None = None


class ActionError(Exception):
    """The form asks for something that cannot be done; the message says what."""


def plan(form: Mapping[str, list[str]], pools: Mapping[str, PoolState]) -> list[Change]:
    """The changes a form asks for: ``one=label|action`` (a row's button) or the servers
    ticked in ``s`` with ``action`` (and ``weight``), all in pool ``b``."""
    pool_name = form.get("b", [""])[0]
    pool = pools.get(pool_name)
    if pool is None:
        raise ActionError(f"no pool {pool_name!r}")
    one = form.get("one", [""])[0]
    if one:
        label, _, action = one.partition("|")
        labels = [label]
    else:
        labels = form.get("s", [])
        action = form.get("action", [""])[0]
    if action not in ("ready", "drain", "maint", "weight", "kill"):
        raise ActionError(f"unknown action {action!r}")
    if not labels:
        raise ActionError("no server selected")
    weight: int | None = None
    if action == "weight":
        text = form.get("weight", [""])[0].strip()
        if not text.isdigit() or int(text) > MAX_WEIGHT:
            raise ActionError(f"weight must be a whole number from 0 to {MAX_WEIGHT}")
        weight = int(text)
    changes = []
    for label in labels:
        server = pool.server(label)
        if server is None:
            raise ActionError(f"no server {label!r} in pool {pool_name!r}")
        changes.append(Change(server, action, weight))
    return changes


def apply(
    changes: list[Change], now: float, user: str, sessions: Iterable[ClientSession] = ()
) -> list[str]:
    """Make the changes; one log line each. ``now`` is the clock of the health transitions;
    ``sessions`` the client connections open now, for ``kill``."""
    lines = []
    open_now = list(sessions)
    for change in changes:
        server = change.server
        if change.action == "kill":
            target = (server.pool_name, server.label)
            killed = [s for s in open_now if s.served_by() == target]
            for session in killed:
                session.shut()
            what = f"kill {len(killed)} session(s)"
        elif change.weight is not None:
            server.set_weight(change.weight)
            what = f"weight {change.weight}"
        else:
            server.set_admin(AdminState(change.action), now)
            what = change.action
        lines.append(f"stats page: {server.pool_name}/{server.label} -> {what} by user {user}")
    return lines
