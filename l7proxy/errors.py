"""What the client sees when lbproxy answers itself: canned error pages, and the status for
an h11 protocol error (DESIGN.md "Failure mapping")."""

from __future__ import annotations

import html
from dataclasses import dataclass

REASONS: dict[int, str] = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Same wording as HAProxy's built-in error pages, so operators recognise them.
_MESSAGES: dict[int, str] = {
    400: "Your browser sent an invalid request.",
    404: "The requested URL was not found on this server.",
    405: "A request was made of a resource using a method that is not supported.",
    408: "Your browser didn't send a complete request in time.",
    413: "The request body is larger than this server accepts.",
    414: "The request URL is too long.",
    431: "The request header fields are too large.",
    500: "An internal server error occurred.",
    501: "The request method or framing is not supported.",
    502: "The server returned an invalid or incomplete response.",
    503: "No server is available to handle this request.",
    504: "The server didn't respond in time.",
}


@dataclass(frozen=True, slots=True)
class CannedResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def canned(status: int, *, close: bool = True) -> CannedResponse:
    """A short HTML error response, like HAProxy's defaults."""
    reason = REASONS.get(status, "Error")
    message = html.escape(_MESSAGES.get(status, reason))
    body = f"<html><body><h1>{status} {reason}</h1>\n{message}\n</body></html>\n".encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-cache"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return CannedResponse(status, reason.encode("ascii"), headers, body)


def status_for_protocol_error(hint: int) -> int:
    """h11's error_status_hint, limited to what we answer a broken request head with."""
    return hint if hint in (400, 413, 414, 431, 501) else 400
