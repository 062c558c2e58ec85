"""What the client sees when lbproxy answers itself: the failure table (a failure and its facts
give the status, termination state, resend and close), canned error pages, and the status for an
h11 protocol error."""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass

REASONS: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    410: "Gone",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

REDIRECT_REASONS: dict[int, bytes] = {
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
}

# Same wording as HAProxy's built-in error pages, so operators recognise them.
_MESSAGES: dict[int, str] = {
    400: "Your browser sent an invalid request.",
    403: "Request forbidden by administrative rules.",
    429: "You have sent too many requests in a given amount of time.",
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
    505: "Only HTTP/1.0 and HTTP/1.1 are served here.",
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


def redirect_page(location: bytes, status: int, *, close: bool = False) -> CannedResponse:
    """``redirect_to_https`` (301 for GET and HEAD, 308 for the rest, or the configured code:
    a browser keeps the method and body only with 307 and 308) and ``redirects``."""
    # The location may carry the client's own path: escaped, it cannot add markup.
    href = html.escape(location.decode("latin-1")).encode("latin-1")
    body = b'<html><body>Moved to <a href="' + href + b'">' + href + b"</a></body></html>\n"
    headers = [
        (b"location", location),
        (b"content-type", b"text/html"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return CannedResponse(status, REDIRECT_REASONS[status], headers, body)


def status_for_protocol_error(hint: int) -> int:
    """h11's error_status_hint, limited to what we answer a broken request head with."""
    return hint if hint in (400, 405, 413, 414, 431, 501, 505) else 400


# ---- the failure table (docs/architecture.md, "Where decisions live") ------------------------


class Failure(enum.Enum):
    """Every way an exchange can end badly. The I/O shell names what happened; ``decide`` says
    what follows from it."""

    HEAD_TIMEOUT = "the request head did not arrive in time"
    BAD_REQUEST = "the request head was refused"
    BODY_TIMEOUT = "the client stalled in the middle of its request body"
    BAD_BODY = "the request body was malformed"
    CLIENT_GONE = "the client closed or reset the connection"
    NO_POOL = "a reload removed the pool this request was routed to"
    NO_SERVER = "no server could take the request"
    QUEUE_TIMEOUT = "the request waited for a free slot of a full server longer than allowed"
    CONNECT_FAILED = "every connect attempt failed"
    SERVER_TLS = "the real server's TLS handshake failed (certificate refused, or no TLS)"
    SERVER_CLOSED = "the server closed before any response byte"
    SERVER_DOWN = "the server was marked DOWN while the request waited for its response"
    BAD_RESPONSE = "the response head or its framing was invalid"
    SERVER_TIMEOUT = "the server did not answer in time"
    SERVER_ABORTED = "the server closed in the middle of its response"
    UPLOAD_FAILED = "the server closed while the request body was being sent"
    TOO_LARGE = "the chunked request body passed limits.max_body"
    INTERNAL = "a bug in lbproxy"


# Nothing of a response arrived: a resend may cure these, for a request that is safe to send
# twice and whose body (if any) nobody has read yet.
_RESENDABLE = frozenset({Failure.SERVER_CLOSED, Failure.SERVER_DOWN})
# The server's fault: counted against it (eresp) and never against the client.
_SERVER_SIDE = frozenset(
    {
        Failure.SERVER_CLOSED,
        Failure.SERVER_DOWN,
        Failure.BAD_RESPONSE,
        Failure.SERVER_TIMEOUT,
        Failure.SERVER_ABORTED,
        Failure.UPLOAD_FAILED,
    }
)
# The client's fault: a request error of the frontend (ereq), never the server's.
_CLIENT_SIDE = frozenset(
    {Failure.HEAD_TIMEOUT, Failure.BAD_REQUEST, Failure.BODY_TIMEOUT, Failure.BAD_BODY}
)

# (status when nothing was sent yet, HAProxy termination state: who/what, then the stage).
_ROWS: dict[Failure, tuple[int | None, str]] = {
    Failure.HEAD_TIMEOUT: (408, "cR"),
    Failure.BAD_REQUEST: (400, "PR"),
    Failure.BODY_TIMEOUT: (408, "cD"),
    Failure.BAD_BODY: (400, "PD"),
    Failure.CLIENT_GONE: (None, "CD"),
    Failure.NO_POOL: (503, "SC"),
    Failure.NO_SERVER: (503, "SQ"),
    Failure.QUEUE_TIMEOUT: (503, "sQ"),  # HAProxy `timeout queue`
    Failure.CONNECT_FAILED: (503, "SC"),
    Failure.SERVER_TLS: (502, "SC"),
    Failure.SERVER_CLOSED: (502, "SH"),
    Failure.SERVER_DOWN: (502, "SH"),
    Failure.BAD_RESPONSE: (502, "PH"),
    Failure.SERVER_TIMEOUT: (504, "sH"),
    Failure.SERVER_ABORTED: (502, "SD"),
    Failure.UPLOAD_FAILED: (502, "SD"),
    Failure.TOO_LARGE: (413, "PD"),  # counted as denied (dreq) where it is raised
    Failure.INTERNAL: (500, "PI"),
}
# After the response head went out, the stage is the data: sH becomes sD, PH becomes PD.
_STAGE_DATA = {"H": "D", "R": "D", "C": "D", "Q": "D"}


@dataclass(frozen=True, slots=True)
class Facts:
    """What matters about an exchange when it fails."""

    response_started: bool = False  # the client has bytes of a response: no other answer
    idempotent: bool = False  # RFC 9110 §9.2.2: safe to send twice
    body_sent: bool = False  # a byte of the request body reached a server
    resends: int = 0  # how often this request was sent again already
    max_resends: int = 3  # HAProxy ``retries``
    status_hint: int | None = None  # the status a refused head or body asked for


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None  # the answer to send, None when nothing can or need be sent
    termination: str  # HAProxy's two-character termination state
    resend: bool = False  # send the request again (to another server when it can)
    close: bool = True  # the client connection ends after this exchange
    abort: bool = False  # end the client connection at once so it sees a truncated response
    server_fault: bool = False  # counts as a failed response of the server
    client_fault: bool = False  # counts as a request error of the virtual server


def decide(failure: Failure, facts: Facts) -> Outcome:
    """The one place that maps a failure to what the client gets (docs/architecture.md,
    "Where decisions live"); pure, and tested as a table (docs/architecture.md, "Tests and
    seams")."""
    status, termination = _ROWS[failure]
    server_fault = failure in _SERVER_SIDE
    client_fault = failure in _CLIENT_SIDE
    if (
        failure in _RESENDABLE
        and not facts.response_started
        and facts.idempotent
        and not facts.body_sent
        and facts.resends < facts.max_resends
    ):
        return Outcome(None, termination, resend=True, close=False, server_fault=True)
    if facts.response_started:
        # Another answer cannot follow the one begun: the client must see it cut short.
        stage = _STAGE_DATA.get(termination[1], termination[1])
        gone = failure is Failure.CLIENT_GONE
        return Outcome(
            None,
            termination[0] + stage,
            abort=not gone,
            server_fault=server_fault,
            client_fault=client_fault,
        )
    if failure in (Failure.BAD_REQUEST, Failure.BAD_BODY) and facts.status_hint is not None:
        status = status_for_protocol_error(facts.status_hint)
    # Errors about the route or the servers leave the client's connection usable.
    keep = failure in (
        Failure.NO_POOL,
        Failure.NO_SERVER,
        Failure.QUEUE_TIMEOUT,
        Failure.CONNECT_FAILED,
        Failure.SERVER_TLS,
    )
    return Outcome(
        status, termination, close=not keep, server_fault=server_fault, client_fault=client_fault
    )
