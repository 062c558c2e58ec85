"""One request's exchange as values: what the request head said (frozen, made once) and what
has happened to it so far (an explicit state the I/O shell advances). The access log line, the
counters and the failure table read these; nothing here does I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from balancing.scheduler import Choice

from .errors import Facts


class Phase(enum.Enum):
    """What the client connection's one deadline guards when it fires."""

    IDLE = "idle"  # between requests: close without a byte (HAProxy timeout http-keep-alive)
    HEAD = "head"  # a request head: 408, or a silent close when nothing of it arrived
    SERVER = "server"  # a request being served: 504, or truncation once the response began
    UPLOAD = "upload"  # the body is still coming: the client's stall timer runs, not the server's


class RequestFacts(NamedTuple):
    """What the request head said, for the log and the failure table. (A named tuple: made
    per request, and cheaper to make than a frozen dataclass.)"""

    method: bytes
    target: bytes
    http_version: bytes
    head_started: float  # trio clock: when the head began (the accept, for a first request)
    head_done: float  # trio clock: when the head was complete
    idempotent: bool = False


# What a refused head is logged as: no method, no target.
BAD_HEAD = b""


@dataclass(slots=True)
class ExchangeState:
    """What happened to one request so far; times are trio clock seconds."""

    request: RequestFacts
    pool: str = "-"
    server: str = "-"
    reason: str = "-"
    status: int = 0
    bytes_in: int = 0  # request head and body bytes from the client
    bytes_out: int = 0  # response body bytes to the client
    response_started: bool = False  # the client has bytes of the response
    body_started: bool = False  # a byte of the request body reached a server
    body_done: bool = True  # no request body, or all of it reached the server
    server_reusable: bool = True
    client_keepalive: bool = True
    upgrade_requested: bool = False  # the request asked for a protocol lbproxy may tunnel
    upgraded: bool = False  # the server answered 101: the connection became a tunnel
    termination: str = "--"
    queue_time: float = 0.0  # waiting for a slot of a full server (HAProxy %Tw)
    connect_time: float | None = None
    response_time: float | None = None
    client_cookie: str = "-"
    server_cookie: str = "-"
    retries: int = 0  # connects and sends tried again (HAProxy %rc)
    resends: int = 0  # of those, the request sent again after a server failed it
    redispatched: bool = False

    def facts(self, *, max_resends: int = 0, status_hint: int | None = None) -> Facts:
        return Facts(
            response_started=self.response_started,
            idempotent=self.request.idempotent,
            body_sent=self.body_started,
            resends=self.resends,
            max_resends=max_resends,
            status_hint=status_hint,
        )

    def note_cookie(self, label: str | None, known: bool) -> None:
        """What the persistence cookie said (HAProxy %CC): N none, V valid, I invalid."""
        self.client_cookie = "N" if label is None else "V" if known else "I"

    def note_choice(self, choice: Choice, cookie_label: str | None) -> None:
        """The server chosen for this attempt, and what that does to the cookie (%CS)."""
        self.server = choice.server.label
        self.reason = choice.reason.value
        if self.client_cookie == "V" and choice.server.label != cookie_label:
            self.client_cookie = "D"  # its server could not take it: redispatched
            self.redispatched = True
        if self.client_cookie != "-":
            self.server_cookie = (
                "D" if choice.clear_cookie else "I" if choice.insert_cookie else "N"
            )
