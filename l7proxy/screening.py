"""What lbproxy answers itself before asking a server, from a virtual server's request policy:
the method filter (405, or 501 for a method it does not know), ``deny`` rules (403 or their
status), a Content-Length over ``limits.max_body`` (413), then ``redirects``. Pure: the
connection sends the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.actions import KNOWN_METHODS, Redirect, RedirectKind, RequestPolicy

from .exchange import local_authority
from .header_rules import Values, expand
from .matching import RequestView, matches


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer instead of the server's: ``denied`` counts it in the frontend's dreq."""

    status: int
    termination: str
    denied: bool = True
    location: bytes | None = None  # a redirect
    allow: bytes | None = None  # the Allow field of a 405


def screen(
    policy: RequestPolicy, view: RequestView, content_length: bytes | None
) -> Refusal | None:
    methods = policy.methods
    if methods is not None and view.method not in methods:
        if view.method in KNOWN_METHODS:
            allow = b", ".join(sorted(methods))
            return Refusal(405, "PR", allow=allow)
        return Refusal(501, "PR")
    for deny in policy.deny:
        if deny.condition is None or matches(deny.condition, view):
            return Refusal(deny.status, "PR")
    limit = policy.max_body
    if limit is not None and content_length is not None and int(content_length) > limit:
        return Refusal(413, "PR")
    for redirect in policy.redirects:
        if redirect.condition is None or matches(redirect.condition, view):
            location = redirect_location(redirect, view)
            return Refusal(redirect.code, "LR", denied=False, location=location)
    return None


def redirect_location(redirect: Redirect, view: RequestView) -> bytes:
    """HAProxy ``redirect location|prefix|scheme``: the Location header's value."""
    value = expand(redirect.value, Values(view))
    if redirect.kind is RedirectKind.LOCATION:
        return value
    target = view.target
    if target[:1] != b"/":  # absolute-form or *: only the path and query
        target = view.path.encode("latin-1") + (
            b"?" + view.query_string if view.query_string else b""
        )
    if redirect.drop_query:
        target = target.split(b"?", 1)[0]
    if redirect.kind is RedirectKind.PREFIX:
        return value.rstrip(b"/") + target
    host = view.host_header or local_authority(view.client)
    return value + b"://" + host + target
