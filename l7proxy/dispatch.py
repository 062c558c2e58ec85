"""Choose a real server for one request and get a connection to it: a kept-alive one from the
pool, or a new one under the connect timeout. A refused connect moves on to the next server
(nothing was sent, so this is safe for every method); when no other server can take the request,
the same ones are tried again after a short back-off, up to the pool's ``retries`` (HAProxy
``retries``, ``option redispatch``). When the server for the request is at its ``maxconn``, the
request waits in a queue for a slot, up to the queue timeout (HAProxy ``timeout queue``)."""

from __future__ import annotations

import logging
from typing import NamedTuple, Protocol

import trio

from balancing.health import report_passive_failure
from balancing.scheduler import Choice, MustWait, NoServerAvailable, Wait, choose, granted
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
    queue_timeout: float | None = None  # None: the connect timeout
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
        excluded = frozenset(exclude | refused) if refused or exclude else NOBODY
        try:
            choice = choose(
                pool,
                cookie_label=request.cookie_label,
                client_ip=request.client_ip,
                now=trio.current_time(),
                exclude=excluded,
            )
        except MustWait as full:
            queued = trio.current_time()
            try:
                got = await wait_for_slot(pool, full.wait, excluded, request, clock)
            finally:
                ex.queue_time += trio.current_time() - queued
            if got is None:
                continue  # its server went away while it waited: choose again
            choice = got
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
        else:
            pool.take_slot(choice.server)
        # The request holds a slot of the server now; the exchange's end gives it back.
        server = choice.server
        upstream = runtime.upstream
        # A PROXY header ties a server connection to its client (UpstreamPool, "_private").
        version = server.server.send_proxy
        owner = request.client if version is not None else None
        tls = upstream.tls_target(server.server, request.host) if server.server.tls else None
        conn = upstream.take_idle(server.address, tls, owner)
        if conn is not None:
            ex.connect_time = 0.0
            return choice, conn
        started = trio.current_time()
        # A connect keeps its own time, per attempt; the server timeout starts after it.
        clock.pause_deadline()
        connected = False
        try:
            header = _proxy_header(version, owner)
            conn = await upstream.connect(
                server.address, request.connect_timeout, tls, header, owner
            )
            ex.connect_time = trio.current_time() - started
            connected = True
        except ConnectError as error:
            _connect_failed(runtime, server, error)
            tls_failed |= error.tls
            failures += 1
            refused.add(server.label)
            continue
        finally:
            clock.wait_for_server()
            if not connected:
                pool.release_slot(server)
        if failures:
            ex.retries += failures
        return choice, conn
    if tls_failed:  # a server that could not be reached securely: 502, as a bad gateway
        raise ExchangeFailed(Failure.SERVER_TLS)
    raise ExchangeFailed(Failure.CONNECT_FAILED if failures else Failure.NO_SERVER)


def _proxy_header(version: ProxyVersion | None, client: ClientInfo | None) -> bytes:
    if version is None or client is None:
        return b""
    return encode(version, (client.ip, client.port), (client.local_ip, client.local_port))


async def wait_for_slot(
    pool: PoolState, wait: Wait, exclude: frozenset[str], request: Request, clock: Timekeeper
) -> Choice | None:
    """Queue for a slot (HAProxy's pendconn): the choice holding it, None when the server it
    waited for can no longer take it (choose again), ExchangeFailed(QUEUE_TIMEOUT) after the
    queue timeout. The connection's own deadline pauses meanwhile."""
    woken = trio.Event()
    waiter = pool.enqueue(wait.server, woken.set, exclude)
    timeout = request.connect_timeout if request.queue_timeout is None else request.queue_timeout
    clock.pause_deadline()
    try:
        with trio.move_on_after(timeout):
            await woken.wait()
        server = waiter.server
        if server is not None:
            waiter.server = None  # the slot is the request's now
            return granted(pool, wait, server, trio.current_time())
        if waiter.queue is not None:
            raise ExchangeFailed(Failure.QUEUE_TIMEOUT)
        return None
    finally:
        pool.leave(waiter)
        clock.wait_for_server()


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
