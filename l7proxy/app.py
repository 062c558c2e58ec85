"""Build the runtime from a configuration and run it: listeners, checks, signals, shutdown.

``serve`` is the whole proxy as one trio task (tests start it in-process with port 0 binds and
get a ``ProxyHandle`` back); ``run`` adds logging and signals for the ``lbproxy run`` command.
"""

from __future__ import annotations

import datetime
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from balancing.state import new_states
from config.model import ProxyConfig

from . import stats
from .connection import Listener, Runtime
from .server import BindError, Handler, accept_loop, make_handler, open_listening_socket
from .upstream import UpstreamPool

log = logging.getLogger("lbproxy")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


class StartupError(Exception):
    """The proxy cannot start: a bind, a certificate or the state directory. One line."""


@dataclass
class BoundListener:
    listener: Listener | None  # None for the stats page
    sock: socket.socket
    tls_server: Any | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port


@dataclass
class ProxyHandle:
    """What a running proxy exposes to its owner (the CLI, the demo, tests)."""

    runtime: Runtime
    bound: list[BoundListener]
    stop_event: trio.Event = field(default_factory=trio.Event)

    def address(self, vs_label: str, index: int = 0) -> tuple[str, int]:
        """The real (host, port) of a virtual server's ``index``-th bind."""
        found = [b for b in self.bound if b.listener and b.listener.vs.label == vs_label]
        return found[index].address

    def stats_address(self) -> tuple[str, int] | None:
        for b in self.bound:
            if b.listener is None:
                return b.address
        return None

    def stop(self) -> None:
        """Begin a graceful shutdown: stop accepting, finish in-flight requests."""
        self.stop_event.set()

    def reload_certificates(self) -> list[str]:
        """Load every TLS bind's certificate files again; new handshakes use them.

        Returns the problems (one line each); a bind whose files fail keeps its old ones.
        """
        from tls.store import CertificateError, load_certificates

        problems: list[str] = []
        now = datetime.datetime.now(datetime.UTC)
        for b in self.bound:
            if b.tls_server is None or b.listener is None or b.listener.bind.tls is None:
                continue
            settings = b.listener.bind.tls
            if not settings.certificates:
                continue
            try:
                b.tls_server.reload(load_certificates(settings.certificates, now=now))
            except (CertificateError, ValueError, OSError) as error:
                problems.append(str(error))
        return problems


def _bind_all(config: ProxyConfig, runtime: Runtime) -> list[BoundListener]:
    """Open every listening socket and TLS context before anything serves."""
    from tls.server_tls import load_tls_server
    from tls.store import CertificateError

    bound: list[BoundListener] = []
    now = datetime.datetime.now(datetime.UTC)
    tls_log = logging.getLogger("lbproxy.tls")
    try:
        for vs in config.virtual_servers:
            for bind in vs.binds:
                tls_server = None
                if bind.tls is not None:
                    try:
                        tls_server = load_tls_server(
                            bind.tls, state_dir=config.global_.state_dir, now=now, log=tls_log
                        )
                    except (CertificateError, ValueError, OSError) as error:
                        raise StartupError(
                            f"virtual server {vs.label}, bind {bind.address}: {error}"
                        ) from error
                sock = open_listening_socket(bind.address)
                port = sock.getsockname()[1]
                bound.append(BoundListener(Listener(vs, bind, port), sock, tls_server))
        if config.global_.stats is not None:
            bound.append(BoundListener(None, open_listening_socket(config.global_.stats.bind)))
    except BindError as error:
        for b in bound:
            b.sock.close()
        raise StartupError(str(error)) from error
    except StartupError:
        for b in bound:
            b.sock.close()
        raise
    return bound


async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[ProxyHandle] = trio.TASK_STATUS_IGNORED,
    on_started: Callable[[ProxyHandle], None] | None = None,
) -> None:
    """Run the proxy until ``handle.stop()``; then drain within the grace period and return.

    Raises StartupError (nothing was started) when a bind or certificate fails.
    """
    from balancing.checker import run_checks

    access_log = logging.getLogger("lbproxy.access") if config.global_.access_log else None
    runtime = Runtime(config, new_states(config.all_pools()), UpstreamPool(), access_log)
    bound = _bind_all(config, runtime)
    handle = ProxyHandle(runtime, bound)
    try:
        async with trio.open_nursery() as root:
            root.start_soon(_run_checks, run_checks, runtime)
            with trio.CancelScope() as grace_scope:
                async with trio.open_nursery() as connections:
                    async with trio.open_nursery() as accepts:
                        for b in bound:
                            handler: Handler
                            if b.listener is None:
                                handler = stats.make_handler(runtime, config.global_.stats)
                            else:
                                handler = make_handler(runtime, b.listener, b.tls_server)
                            accepts.start_soon(accept_loop, b.sock, handler, connections)
                        task_status.started(handle)
                        if on_started is not None:
                            on_started(handle)
                        await handle.stop_event.wait()
                        accepts.cancel_scope.cancel()
                    for b in bound:
                        b.sock.close()
                    log.info(
                        "stopped accepting; finishing in-flight requests (grace %ss)",
                        config.global_.grace,
                    )
                    runtime.begin_shutdown()
                    grace_scope.deadline = trio.current_time() + config.global_.grace
            if grace_scope.cancelled_caught:
                log.warning("grace period over: closed the connections still open")
            root.cancel_scope.cancel()
    finally:
        for b in bound:
            b.sock.close()
        runtime.upstream.close_all()


async def _run_checks(run_checks: Any, runtime: Runtime) -> None:
    await run_checks(
        runtime.pools, log=logging.getLogger("lbproxy.health"), on_change=runtime.server_changed
    )


def setup_logging(level: str) -> None:
    """Diagnostics to stderr, access log lines to stdout (one line per request)."""
    root = logging.getLogger("lbproxy")
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if not root.handlers:
        errors = logging.StreamHandler(sys.stderr)
        errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(errors)
    access = logging.getLogger("lbproxy.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    if not access.handlers:
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(out)


Companion = Callable[..., Awaitable[None]]


async def _main(
    config: ProxyConfig,
    on_started: Callable[[ProxyHandle], None] | None,
    companions: Sequence[Companion],
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:
            for companion in companions:
                await outer.start(companion)
            async with trio.open_nursery() as inner:
                handle: ProxyHandle = await inner.start(_serve_task, config)
                for b in handle.bound:
                    kind = "stats" if b.listener is None else b.listener.vs.label
                    tls = " (TLS)" if b.tls_server is not None else ""
                    host, port = b.address
                    log.info("listening: %s on %s:%s%s", kind, host, port, tls)
                if on_started is not None:
                    on_started(handle)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        problems = handle.reload_certificates()
                        for problem in problems:
                            log.error("certificate reload: %s", problem)
                        log.info("SIGHUP: certificates reloaded (%d problem(s))", len(problems))
                        continue
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    handle.stop()
                    break
            outer.cancel_scope.cancel()


async def _serve_task(
    config: ProxyConfig, *, task_status: trio.TaskStatus[ProxyHandle] = trio.TASK_STATUS_IGNORED
) -> None:
    await serve(config, task_status=task_status)


def _leaves(group: BaseExceptionGroup[StartupError]) -> list[BaseException]:
    """The exceptions inside nested nursery groups."""
    found: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        else:
            found.append(error)
    return found


def run(
    config: ProxyConfig,
    *,
    config_path: str | None = None,
    on_started: Callable[[ProxyHandle], None] | None = None,
    companions: Sequence[Companion] = (),
) -> int:
    """The ``lbproxy run`` command: serve until SIGTERM/SIGINT; exit status.

    ``companions`` are tasks started (``nursery.start``) before the proxy and cancelled after it
    stopped: the demo's built-in real servers.
    """
    setup_logging(config.global_.log_level)
    if config_path:
        log.info("configuration %s loaded", config_path)
    status = EXIT_OK
    try:
        trio.run(_main, config, on_started, companions)
    except* StartupError as group:
        for error in _leaves(group):
            print(f"lbproxy: {error}", file=sys.stderr)
        status = EXIT_STARTUP_FAILED
    return status
