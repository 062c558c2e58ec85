"""The page lbproxy answers with for a status: the virtual server's own (``error_pages``, read
at load by config/error_pages) or the built-in one (errors.canned)."""

from __future__ import annotations

from collections.abc import Mapping

from config.actions import ErrorPage

from .errors import REASONS, CannedResponse, canned


def page(status: int, pages: Mapping[int, ErrorPage], *, close: bool = True) -> CannedResponse:
    custom = pages.get(status) if pages else None
    if custom is None:
        return canned(status, close=close)
    headers = [
        *custom.headers,
        (b"content-length", str(len(custom.body)).encode("ascii")),
    ]
    if close:
        headers.append((b"connection", b"close"))
    reason = custom.reason or REASONS.get(custom.status, "Error").encode("ascii")
    return CannedResponse(custom.status, reason, headers, custom.body)
