"""What every client connection of one running proxy shares, and the facts of one accept.

No I/O happens here: these are values and the state the trio thread owns (docs/architecture.md,
"Frozen configuration, mutable runtime state"). Connections reach the shared state only through
the small protocols below, so this module imports nothing of ``connection.py``
(docs/architecture.md, "Import directions").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from balancing.state import (
    RESPONSE_CLASSES,
    Health,
    PoolState,
    RateCounter,
    ServerState,
    response_class,
)
from config.model import Bind, ProxyConfig, VirtualService

if TYPE_CHECKING:
    from .logsink import AccessLogSink
    from .upstream import UpstreamPool


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is on the other side of one client connection, recorded once at accept."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ServedBind:
    """One address a virtual server is served on; ``port`` is the real one (a config may say
    0, and the kernel picks)."""

    vs: VirtualService
    bind: Bind
    port: int


def _response_classes() -> dict[str, int]:
    return dict.fromkeys(RESPONSE_CLASSES, 0)


@dataclass(slots=True)
class FrontendCounters:
    """Per virtual server, what HAProxy's stats show on a FRONTEND row. The trio thread owns
    them: connections are counted at accept (server.py), requests when their log entry is
    made (connection.py), whether or not a real server was involved."""

    current: int = 0  # client connections open now (scur, %fc)
    max: int = 0  # smax
    total: int = 0  # client connections accepted (stot)
    requests: int = 0  # req_tot
    bytes_in: int = 0  # request bytes received from clients, heads and bodies
    bytes_out: int = 0  # response body bytes sent to clients
    request_errors: int = 0  # ereq: bad heads, 408s, bodies cut short by the client
    denied: int = 0  # dreq: refused by a rule (method filter, limits)
    responses: dict[str, int] = field(default_factory=_response_classes)  # hrsp_1xx..other
    session_rate: RateCounter = field(default_factory=RateCounter)  # rate, rate_max
    request_rate: RateCounter = field(default_factory=RateCounter)  # req_rate, req_rate_max

    def opened(self) -> None:
        self.current += 1
        self.total += 1
        if self.current > self.max:
            self.max = self.current
        self.session_rate.hit()

    def record(self, status: int, bytes_in: int, bytes_out: int) -> None:
        self.requests += 1
        self.request_rate.hit()
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.responses[response_class(status)] += 1


class IdleClient(Protocol):
    """A client connection between two requests: a shutdown closes it at once."""

    def close_if_idle(self) -> None: ...


class AwaitedResponse(Protocol):
    """A request waiting for a real server's response head: cut short when that server goes
    DOWN (HAProxy ``on-marked-down shutdown-sessions``)."""

    def cut(self) -> None: ...


class ClientSession(Protocol):
    """One client connection as the runtime API sees it (``show sess``, ``shutdown
    sessions``)."""

    def served_by(self) -> tuple[str, str] | None:
        """(pool, server) while a request is being served, else None."""
        ...

    def shut(self) -> None:
        """Close the connection now, as a shutdown does (no answer, no timeout handling)."""
        ...


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A client connection registered while it runs (server.py), for the runtime API."""

    client: ClientInfo
    frontend: str  # the virtual server's label
    started: float  # trio clock
    connection: ClientSession

    def served_by(self) -> tuple[str, str] | None:
        return self.connection.served_by()

    def shut(self) -> None:
        self.connection.shut()


@dataclass
class Runtime:
    """What every connection shares. Owned by the trio thread."""

    config: ProxyConfig
    pools: dict[str, PoolState]
    upstream: UpstreamPool
    access_log: AccessLogSink | None = None
    shutting_down: bool = False
    idle_clients: set[IdleClient] = field(default_factory=set)
    connections: int = 0  # client connections open now (HAProxy %ac)
    frontends: dict[str, FrontendCounters] = field(default_factory=dict)  # per virtual server
    # Requests waiting for a response head, per server: cut when it goes DOWN.
    awaiting: dict[ServerState, set[AwaitedResponse]] = field(default_factory=dict)
    # Client connections open now, by id: the runtime API's ``show sess`` and ``shutdown``.
    sessions: dict[int, SessionInfo] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)  # wall clock, for ``show info``

    def server_changed(self, server: ServerState) -> None:
        """A health transition: when ``server`` went DOWN, the requests still waiting for its
        response head are cut short (idempotent ones are sent again elsewhere) instead of
        waiting for the server timeout."""
        if server.health is not Health.DOWN:
            return
        for waiting in list(self.awaiting.pop(server, ())):
            waiting.cut()

    def frontend(self, label: str) -> FrontendCounters:
        """The counters of virtual server ``label``; a reload keeps them by label."""
        counters = self.frontends.get(label)
        if counters is None:
            counters = self.frontends[label] = FrontendCounters()
        return counters

    def begin_shutdown(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.shutting_down = True
        for client in list(self.idle_clients):
            client.close_if_idle()
