"""Choose a real server for one request and get a connection to it: a kept-alive one from the
pool, or a new one under the connect timeout. A refused connect moves on to the next server
(nothing was sent, so this is safe for every method); when no other server can take the request,
the same ones are tried again after a short back-off, up to the pool's ``retries`` (HAProxy
``retries``, ``option redispatch``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import trio

from balancing.health import report_passive_failure
from balancing.scheduler import Choice, NoServerAvailable, choose
from balancing.state import PoolState, ServerState

from .errors import Failure
from .exchange_state import ExchangeState
from .relay import ExchangeFailed
from .runtime import Runtime
from .upstream import ConnectError, UpstreamConnection

health_log = logging.getLogger("lbproxy.health")

# How many connects one request may try in all before giving up with 503.
MAX_CONNECT_ATTEMPTS = 8
# The pause before the same servers are tried again: a server that is restarting refuses for a
# moment. HAProxy waits a turn-around of up to one second between retries; shorter here, and
# doubled each round, so three retries cost at most 0.7 s.
RETRY_BACKOFF = 0.1


class Timekeeper(Protocol):
    """The client connection's deadline: paused while a connect keeps its own time."""

    def pause_deadline(self) -> None: ...

    def wait_for_server(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """What the choice depends on."""

    cookie_label: str | None
    client_ip: str
    connect_timeout: float
    retries: int
    host: bytes = b""  # the Host header: the SNI name of servers with ``sni: host``


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
    tls_failed = False
    for _ in range(MAX_CONNECT_ATTEMPTS):
        try:
            choice = choose(
                pool,
                cookie_label=request.cookie_label,
                client_ip=request.client_ip,
                now=trio.current_time(),
                exclude=frozenset(exclude | refused) if refused else frozenset(exclude),
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
        tls = upstream.tls_target(server.server, request.host) if server.server.tls else None
        conn = upstream.take_idle(server.address, tls)
        if conn is not None:
            ex.connect_time = 0.0
            return choice, conn
        started = trio.current_time()
        # A connect keeps its own time, per attempt; the server timeout starts after it.
        clock.pause_deadline()
        try:
            conn = await upstream.connect(server.address, request.connect_timeout, tls)
            ex.connect_time = trio.current_time() - started
        except ConnectError as error:
            _connect_failed(runtime, server, error)
            tls_failed |= error.tls
            failures += 1
            refused.add(server.label)
            continue
        finally:
            clock.wait_for_server()
        if failures:
            ex.retries += failures
        return choice, conn
    if tls_failed:  # a server that could not be reached securely: 502, as a bad gateway
        raise ExchangeFailed(Failure.SERVER_TLS)
    raise ExchangeFailed(Failure.CONNECT_FAILED if failures else Failure.NO_SERVER)


def _connect_failed(runtime: Runtime, server: ServerState, error: ConnectError) -> None:
    server.counters.failures_connect += 1
    if error.tls:
        health_log.warning("%s/%s: %s", server.pool_name, server.label, error.cause)
        settings = server.server.tls
        if settings is not None and settings.sni_from_host:
            return  # the client's Host chose the name checked: no reason to take the server down
    message = report_passive_failure(server, trio.current_time(), error.cause)
    if message:
        health_log.warning("%s", message)
        runtime.server_changed(server)
