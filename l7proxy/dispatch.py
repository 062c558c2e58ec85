"""Choose a real server for one request and get a connection to it: a kept-alive one from the
pool, or a new one under the connect timeout. A refused connect moves on to the next server
(nothing was sent, so this is safe for every method); when no other server can take the request,
the same ones are tried again after a short back-off, up to the pool's ``retries`` (HAProxy
``retries``, ``option redispatch``)."""

from __future__ import annotations

import logging
from typing import NamedTuple, Protocol

import trio

from balancing.health import report_passive_failure
from balancing.scheduler import Choice, NoServerAvailable, choose
from balancing.state import PoolState, ServerState
from config.model import ProxyVersion

from .errors import Failure
from .exchange_state import ExchangeState
from .proxy_protocol import encode
from .relay import ExchangeFailed
from .runtime import ClientInfo, Runtime
from .upstream import ConnectError, UpstreamConnection

health_log = logging.getLogger("lbproxy.health")

# How many connects one request may try in all before giving up with 503.
MAX_CONNECT_ATTEMPTS = 8
# The pause before the same servers are tried again: a server that is restarting refuses for a
# moment. HAProxy waits a turn-around of up to one second between retries; shorter here, and
# doubled each round, so three retries cost at most 0.7 s.
RETRY_BACKOFF = 0.1


NOBODY: frozenset[str] = frozenset()  # no server excluded: the usual case, made once


class Timekeeper(Protocol):
    """The client connection's deadline: paused while a connect keeps its own time."""

    def pause_deadline(self) -> None: ...

    def wait_for_server(self) -> None: ...


class Request(NamedTuple):
    """What the choice depends on (made per request)."""

    cookie_label: str | None
    client_ip: str
    connect_timeout: float
    retries: int
    client: ClientInfo | None = None  # for a server that wants a PROXY header


async def connect_server(
    runtime: Runtime,
    pool: PoolState,
    request: Request,
    exclude: set[str],
    ex: ExchangeState,
    clock: Timekeeper,
) -> tuple[Choice, UpstreamConnection]:
    """A chosen server and a connection to it; ExchangeFailed (NO_SERVER, CONNECT_FAILED)
    when there is none. ``exclude`` holds the servers this request must not go to again."""
    refused: set[str] = set()
    failures = rounds = 0
    for _ in range(MAX_CONNECT_ATTEMPTS):
        try:
            choice = choose(
                pool,
                cookie_label=request.cookie_label,
                client_ip=request.client_ip,
                now=trio.current_time(),
                exclude=frozenset(exclude | refused) if refused or exclude else NOBODY,
            )
        except NoServerAvailable:
            if not refused or failures > request.retries:
                break
            # No other server can take it: the same ones again, after a pause.
            clock.pause_deadline()
            await trio.sleep(RETRY_BACKOFF * 2**rounds)
            rounds += 1
            clock.wait_for_server()
            refused.clear()
            continue
        server = choice.server
        upstream = runtime.upstream
        # A PROXY header ties a server connection to its client (UpstreamPool, "_private").
        version = server.server.send_proxy
        owner = request.client if version is not None else None
        conn = upstream.take_idle(server.address, owner)
        if conn is not None:
            ex.connect_time = 0.0
            return choice, conn
        started = trio.current_time()
        # A connect keeps its own time, per attempt; the server timeout starts after it.
        clock.pause_deadline()
        try:
            header = _proxy_header(version, owner)
            conn = await upstream.connect(server.address, request.connect_timeout, header, owner)
            ex.connect_time = trio.current_time() - started
        except ConnectError as error:
            _connect_failed(runtime, server, error)
            failures += 1
            refused.add(server.label)
            continue
        finally:
            clock.wait_for_server()
        if failures:
            ex.retries += failures
        return choice, conn
    raise ExchangeFailed(Failure.CONNECT_FAILED if failures else Failure.NO_SERVER)


def _proxy_header(version: ProxyVersion | None, client: ClientInfo | None) -> bytes:
    if version is None or client is None:
        return b""
    return encode(version, (client.ip, client.port), (client.local_ip, client.local_port))


def _connect_failed(runtime: Runtime, server: ServerState, error: ConnectError) -> None:
    server.counters.failures_connect += 1
    message = report_passive_failure(server, trio.current_time(), error.cause)
    if message:
        health_log.warning("%s", message)
        runtime.server_changed(server)
