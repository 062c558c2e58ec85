"""What a virtual server does to requests besides routing them: header rules, redirects, deny
rules, the method filter, the body limit and its own error pages. Frozen values the loader
builds once; the proxy applies them (l7proxy/header_rules, l7proxy/screening,
l7proxy/errorpages)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .conditions import Condition, Template


class HeaderAction(enum.Enum):
    SET = "set"  # remove every field of that name, then add one
    ADD = "add"
    DELETE = "delete"
    REPLACE = "replace"  # regex over each value of that name


@dataclass(frozen=True, slots=True)
class HeaderRule:
    action: HeaderAction
    name: bytes  # lower case
    value: Template | None = None  # set, add: the value; replace: the replacement (\1 allowed)
    pattern: re.Pattern[bytes] | None = None  # replace
    condition: Condition | None = None  # None: always


class RedirectKind(enum.Enum):
    LOCATION = "location"  # Location is the value
    PREFIX = "prefix"  # the value, then the request's path and query
    SCHEME = "scheme"  # the value as scheme, then the Host and the request target


DEFAULT_REDIRECT_CODE = 302  # HAProxy `redirect` without `code`


@dataclass(frozen=True, slots=True)
class Redirect:
    kind: RedirectKind
    value: Template
    code: int = DEFAULT_REDIRECT_CODE
    drop_query: bool = False
    condition: Condition | None = None


DEFAULT_DENY_STATUS = 403  # HAProxy `http-request deny`


@dataclass(frozen=True, slots=True)
class Deny:
    condition: Condition | None = None
    status: int = DEFAULT_DENY_STATUS


# Pound's xHTTP levels: each adds to the one before (Pound's default is 0).
XHTTP_LEVELS: tuple[tuple[str, ...], ...] = (
    ("GET", "POST", "HEAD"),
    ("PUT", "PATCH", "DELETE"),
    (
        "LOCK",
        "UNLOCK",
        "PROPFIND",
        "PROPPATCH",
        "SEARCH",
        "MKCOL",
        "MOVE",
        "COPY",
        "OPTIONS",
        "TRACE",
        "MKACTIVITY",
        "CHECKOUT",
        "MERGE",
        "REPORT",
    ),
    (
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "NOTIFY",
        "BPROPFIND",
        "BPROPPATCH",
        "POLL",
        "BMOVE",
        "BCOPY",
        "BDELETE",
        "CONNECT",
    ),
    ("RPC_IN_DATA", "RPC_OUT_DATA"),
)


def xhttp_methods(level: int) -> frozenset[bytes]:
    return frozenset(m.encode("ascii") for group in XHTTP_LEVELS[: level + 1] for m in group)


# A method outside this set is "unknown": 501 rather than 405 when it is not allowed. Pound's
# levels, and the rest of IANA's HTTP method registry.
KNOWN_METHODS = xhttp_methods(len(XHTTP_LEVELS) - 1) | {
    m.encode("ascii")
    for m in [
        "ACL",
        "BASELINE-CONTROL",
        "BIND",
        "CHECKIN",
        "LABEL",
        "LINK",
        "MKCALENDAR",
        "MKREDIRECTREF",
        "MKWORKSPACE",
        "ORDERPATCH",
        "PRI",
        "QUERY",
        "REBIND",
        "UNBIND",
        "UNCHECKOUT",
        "UNLINK",
        "UPDATE",
        "UPDATEREDIRECTREF",
        "VERSION-CONTROL",
    ]
}


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """A page lbproxy answers with instead of its built-in one, read from a file at load."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # lower-case names; no framing fields
    body: bytes


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """Everything a virtual server checks or changes in a request besides routing; the
    connection looks at it only when ``active`` (decided once, at load)."""

    methods: frozenset[bytes] | None = None  # None: every method
    deny: tuple[Deny, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    max_body: int | None = None  # bytes; None: unlimited
    request_headers: tuple[HeaderRule, ...] = ()
    response_headers: tuple[HeaderRule, ...] = ()
    error_pages: dict[int, ErrorPage] = field(default_factory=dict)

    @property
    def screens(self) -> bool:
        """Something may answer a request before any server is asked."""
        return (
            self.methods is not None
            or bool(self.deny)
            or bool(self.redirects)
            or self.max_body is not None
        )
