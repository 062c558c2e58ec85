"""Build the runtime from a configuration and run it: listeners, checks, signals, shutdown.

``serve`` is the whole proxy as one trio task (tests start it in-process with port 0 binds and
get a ``ProxyHandle`` back); ``run`` adds logging, signals and the service duties (privileges,
pidfile, systemd notifications) for the ``lbproxy run`` command.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import trio

from balancing.state import carry_over, new_states
from config.model import Address, AdminSocketSettings, ProxyConfig
from tls.client_context import ClientContexts, build_client_contexts
from tls.server_tls import log_expiry_warnings

from . import admin, admin_socket, changes, stats
from .log_targets import DIAGNOSTIC_FORMAT, LogOutputError, LogOutputs, OutputsHandler
from .logsink import AccessLogSink
from .runtime import Runtime, ServedBind
from .server import (
    BindError,
    ConnectionGate,
    Handler,
    accept_loop,
    connection_gate,
    make_handler,
    open_listening_socket,
)
from .service import (
    Identity,
    Notifier,
    ServiceError,
    check_pidfile,
    drop_privileges,
    hand_over,
    remove_pidfile,
    resolve_identity,
    write_pidfile,
)
from .upstream import Connector, UpstreamPool, connect_tcp

if TYPE_CHECKING:
    from tls.server_tls import TlsServer
    from tls.status import CertificateStatus

log = logging.getLogger("lbproxy")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
CERT_CHECK_INTERVAL = 24 * 3600.0  # expiry warnings once a day, besides start and reload


class StartupError(Exception):
    """The proxy cannot start: a bind, a certificate or the state directory. One line."""


@dataclass
class ListeningSocket:
    served: ServedBind | None  # None for the stats page
    sock: socket.socket
    tls_server: TlsServer | None = None
    key: str = ""  # the configured address: what a reload matches sockets by
    scope: trio.CancelScope | None = None  # the accept loop's, while it runs

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port


def _key(address: Address, stats: bool = False) -> str:
    return f"stats {address}" if stats else str(address)


@dataclass
class ProxyHandle:
    """What a running proxy exposes to its owner (the CLI, the demo, tests)."""

    runtime: Runtime
    bound: list[ListeningSocket]
    stop_event: trio.Event = field(default_factory=trio.Event)
    sink: AccessLogSink = field(default_factory=AccessLogSink)
    # Set when every server has had its first health check (systemd's READY=1 waits for it).
    first_checks: trio.Event = field(default_factory=trio.Event)
    _accepts: trio.Nursery | None = None
    _connections: trio.Nursery | None = None
    _checks: trio.Nursery | None = None
    _checks_scope: trio.CancelScope | None = None
    _admin_scope: trio.CancelScope | None = None
    _admin_settings: AdminSocketSettings | None = None
    gates: dict[str, ConnectionGate] = field(default_factory=dict)  # max_connections per vs
    # With worker processes (master.py): the master binds but leaves the traffic to its
    # workers, and the workers leave the health checks to the master.
    serves_traffic: bool = True
    runs_checks: bool = True

    def address(self, vs_label: str, index: int = 0) -> tuple[str, int]:
        """The real (host, port) of a virtual server's ``index``-th bind."""
        found = [b for b in self.bound if b.served and b.served.vs.label == vs_label]
        return found[index].address

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
            if b.tls_server is None or b.served is None or b.served.bind.tls is None:
                continue
            settings = b.served.bind.tls
            if not settings.certificates:
                continue
            try:
                b.tls_server.reload(load_certificates(settings.certificates, now=now))
            except (CertificateError, ValueError, OSError) as error:
                problems.append(str(error))
        return problems

    def reload(self, config: ProxyConfig) -> list[str]:
        """Switch to ``config`` without dropping anything (HAProxy's seamless reload, in one
        process): listening sockets that stay are kept, new ones opened, removed ones closed;
        certificates are loaded again; health, admin state, counters and source persistence
        carry over by pool and label. Connections already open finish with the virtual server
        they started with. Raises StartupError and changes nothing when the new configuration
        cannot be served (a bind or a certificate fails). Returns notes for the log.
        """
        contexts = _client_contexts(config)
        keep = {b.key: b.sock for b in self.bound}
        bound = _bind_all(config, reuse=keep)
        before = self.runtime.config
        served_before = _served(self.bound)
        pools = new_states(config.all_pools())
        notes = carry_over(self.runtime.pools, pools)
        runtime = self.runtime
        runtime.config = config
        runtime.pools = pools
        runtime.upstream.set_tls_contexts(contexts)
        runtime.access_log = self.sink if config.global_.access_log else None
        reused = {id(b.sock) for b in bound}
        for old in self.bound:
            if old.scope is not None:
                old.scope.cancel()
            if id(old.sock) not in reused:
                trio.lowlevel.notify_closing(old.sock)
                old.sock.close()
        self.bound = bound
        for b in bound:
            self._start_accepting(b)
        self._start_checks()
        try:
            self._start_admin()
        except StartupError as error:
            notes.append(f"{error}; the runtime API is off until the next reload")
        notes.append(changes.describe(before, config, served_before, _served(bound)))
        return notes

    def tls_binds(self) -> list[tuple[str, str, TlsServer]]:
        """Each TLS bind's virtual server, address and TLS server (for certificate expiry)."""
        return [
            (
                b.served.vs.label,
                str(replace(b.served.bind.address, port=b.served.port)),
                b.tls_server,
            )
            for b in self.bound
            if b.served is not None and b.tls_server is not None
        ]

    def _start_accepting(self, b: ListeningSocket) -> None:
        assert self._accepts is not None and self._connections is not None
        if b.served is not None and not self.serves_traffic:
            return
        runtime = self.runtime
        handler: Handler
        gate = None
        if b.served is None:
            handler = stats.make_handler(runtime, runtime.config.global_.stats, self.tls_binds)
        else:
            handler = make_handler(runtime, b.served, b.tls_server)
            gate = connection_gate(self.gates, b.served.vs)
        scope = trio.CancelScope()
        b.scope = scope
        connections = self._connections

        async def accepting() -> None:
            with scope:
                await accept_loop(b.sock, handler, connections, gate)

        self._accepts.start_soon(accepting)

    def bind_facts(self) -> tuple[admin.BindFact, ...]:
        """Every bind, open or not, for the runtime API's ``show health``."""
        facts = []
        for b in self.bound:
            kind = "stats" if b.served is None else b.served.vs.label
            host, port = b.address if b.sock.fileno() >= 0 else ("-", 0)
            accepting = b.scope is not None and not b.scope.cancel_called
            if b.served is not None and not self.serves_traffic:
                accepting = b.sock.fileno() >= 0  # the workers accept on it
            facts.append(admin.BindFact(f"{kind} {host}:{port}", accepting))
        return tuple(facts)

    def _start_admin(self) -> None:
        """Open the admin socket when configured; a reload keeps it when its settings are
        unchanged. Raises StartupError when it cannot be opened."""
        settings = self.runtime.config.global_.admin_socket
        previous = self._admin_settings
        if settings == previous:
            return
        if self._admin_scope is not None:
            self._admin_scope.cancel()
            self._admin_scope = None
        self._admin_settings = None
        if settings is None:
            return
        assert self._checks is not None
        try:
            same_path = previous is not None and previous.path == settings.path
            sock = admin_socket.open_admin_socket(settings, replace=same_path)
        except admin_socket.AdminSocketError as error:
            raise StartupError(str(error)) from error
        self._admin_settings = settings
        scope = self._admin_scope = trio.CancelScope()
        runtime = self.runtime

        async def serving() -> None:
            with scope:
                await admin_socket.serve_admin(sock, settings, runtime, self.bind_facts)

        self._checks.start_soon(serving)

    def _start_checks(self) -> None:
        assert self._checks is not None
        if not self.runs_checks:
            self.first_checks.set()
            return
        if self._checks_scope is not None:
            self._checks_scope.cancel()
        scope = self._checks_scope = trio.CancelScope()
        runtime = self.runtime

        async def checking() -> None:
            from balancing.checker import run_checks

            with scope:
                await run_checks(
                    runtime.pools,
                    log=logging.getLogger("lbproxy.health"),
                    on_change=runtime.server_changed,
                    on_first_round=self.first_checks.set,
                    tls=runtime.upstream.tls_target,
                )

        self._checks.start_soon(checking)


def _client_contexts(config: ProxyConfig) -> ClientContexts:
    """The client TLS contexts of the real servers that re-encrypt; StartupError names the
    first file that fails."""
    contexts, problems = build_client_contexts(config.all_pools())
    if problems:
        raise StartupError(problems[0])
    return contexts


def _served(bound: Sequence[ListeningSocket]) -> dict[str, list[CertificateStatus]]:
    """What each TLS bind serves, by address: for the reload's log line."""
    return {b.key: b.tls_server.certificate_statuses() for b in bound if b.tls_server is not None}


def _bind_all(
    config: ProxyConfig, *, reuse: dict[str, socket.socket] | None = None
) -> list[ListeningSocket]:
    """Every listening socket (kept from ``reuse`` by address, else opened) and TLS context,
    before anything serves. On failure the sockets opened here are closed again."""
    from tls.server_tls import load_tls_server
    from tls.store import CertificateError

    reuse = reuse or {}
    bound: list[ListeningSocket] = []
    opened: list[socket.socket] = []
    now = datetime.datetime.now(datetime.UTC)
    tls_log = logging.getLogger("lbproxy.tls")

    def listening(key: str, address: Address) -> socket.socket:
        sock = reuse.get(key)
        if sock is None:
            vip = config.ha is not None and config.ha.is_vip(address.host)  # floating: ha.vips
            sock = open_listening_socket(address, freebind=vip)
            opened.append(sock)
        return sock

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
                key = _key(bind.address)
                sock = listening(key, bind.address)
                port = sock.getsockname()[1]
                bound.append(ListeningSocket(ServedBind(vs, bind, port), sock, tls_server, key))
        stats_settings = config.global_.stats
        if stats_settings is not None:
            if stats_settings.auth is not None:
                try:
                    stats.read_password(stats_settings.auth)
                except stats.StatsAuthError as error:
                    raise StartupError(str(error)) from None
            key = _key(stats_settings.bind, stats=True)
            try:
                stats_sock = listening(key, stats_settings.bind)
            except BindError as error:
                raise BindError(f"stats listener: {error}") from error
            bound.append(ListeningSocket(None, stats_sock, key=key))
    except BindError as error:
        for sock in opened:
            sock.close()
        raise StartupError(str(error)) from error
    except StartupError:
        for sock in opened:
            sock.close()
        raise
    return bound


async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[ProxyHandle] = trio.TASK_STATUS_IGNORED,
    on_started: Callable[[ProxyHandle], None] | None = None,
    connector: Connector = connect_tcp,
    outputs: LogOutputs | None = None,
    before_serving: Callable[[ProxyHandle], None] | None = None,
    inherited: dict[str, socket.socket] | None = None,
    serves_traffic: bool = True,
) -> None:
    """Run the proxy until ``handle.stop()``; then drain within the grace period and return.

    ``connector`` opens connections to real servers (tests pass scripted in-memory ones).
    Access lines go to ``outputs`` (opened here from ``global.log`` when not given, and closed
    at the end). ``before_serving`` runs once every socket is bound and every key read, before
    anything is accepted: where ``run`` drops privileges. Raises StartupError (nothing was
    started) when a bind, a certificate or a log target fails.

    Worker processes (master.py): a worker passes the master's listening sockets as
    ``inherited`` (by bind key) and runs no health checks of its own; the master passes
    ``serves_traffic=False`` and accepts on the stats listener only.
    """
    owned = outputs is None
    if outputs is None:
        try:
            outputs = LogOutputs.open(config.global_.log)
        except LogOutputError as error:
            raise StartupError(str(error)) from error
    sink = AccessLogSink(outputs=outputs)
    access_log = sink if config.global_.access_log else None
    upstream = UpstreamPool(connector)
    upstream.set_tls_contexts(_client_contexts(config))
    runtime = Runtime(config, new_states(config.all_pools()), upstream, access_log)
    try:
        handle = ProxyHandle(runtime, _bind_all(config, reuse=inherited), sink=sink)
        handle.serves_traffic = serves_traffic
        handle.runs_checks = inherited is None
    except StartupError:
        if owned:
            outputs.close()
        raise
    try:
        admin_socket.load_state(runtime)
        if before_serving is not None:
            before_serving(handle)
        async with trio.open_nursery() as root:
            root.start_soon(sink.run)
            handle._checks = root
            handle._start_admin()
            handle._start_checks()
            with trio.CancelScope() as grace_scope:
                async with trio.open_nursery() as connections:
                    handle._connections = connections
                    async with trio.open_nursery() as accepts:
                        handle._accepts = accepts
                        for b in handle.bound:
                            handle._start_accepting(b)
                        task_status.started(handle)
                        if on_started is not None:
                            on_started(handle)
                        await handle.stop_event.wait()
                        accepts.cancel_scope.cancel()
                    for b in handle.bound:
                        b.sock.close()
                    grace = runtime.config.global_.grace
                    log.info("stopped accepting; finishing in-flight requests (grace %ss)", grace)
                    runtime.begin_shutdown()
                    grace_scope.deadline = trio.current_time() + grace
            if grace_scope.cancelled_caught:
                log.warning("grace period over: closed the connections still open")
            root.cancel_scope.cancel()
    finally:
        for b in handle.bound:
            b.sock.close()
        admin_socket.save_state(runtime)
        runtime.upstream.close_all()
        sink.flush()
        if owned:
            outputs.close()


def setup_logging(level: str, outputs: LogOutputs | None = None) -> None:
    """Diagnostics to the log targets (``outputs``; without them, stderr); access log lines
    go to the same targets through the AccessLogSink."""
    # The logging module's documented savings: no thread, process or multiprocessing lookups.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger("lbproxy")
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if outputs is not None:
        for old in [h for h in root.handlers if isinstance(h, OutputsHandler)]:
            root.removeHandler(old)
        root.addHandler(OutputsHandler(outputs))
    elif not root.handlers:
        errors = logging.StreamHandler(sys.stderr)
        errors.setFormatter(logging.Formatter(DIAGNOSTIC_FORMAT))
        root.addHandler(errors)


def _teardown_logging(outputs: LogOutputs) -> None:
    root = logging.getLogger("lbproxy")
    for handler in [h for h in root.handlers if isinstance(h, OutputsHandler)]:
        if handler.outputs is outputs:
            root.removeHandler(handler)
    outputs.close()


def warn_expiring(handle: ProxyHandle) -> None:
    """The daily reminder: a warning per served certificate that is expired or has fewer than
    30 days left (loading certificates, at start and at reload, warns by itself)."""
    now = datetime.datetime.now(datetime.UTC)
    tls_log = logging.getLogger("lbproxy.tls")
    for b in handle.bound:
        if b.tls_server is not None:
            log_expiry_warnings(tls_log, b.tls_server.certificate_statuses(), now)


def status_text(handle: ProxyHandle) -> str:
    """systemd's STATUS= line: what is served and how many servers are up."""
    runtime = handle.runtime
    servers = [s for pool in runtime.pools.values() for s in pool.all_states()]
    up = sum(1 for s in servers if s.status_text() == "UP")
    count = len(runtime.config.virtual_servers)
    return f"serving {count} virtual server(s), {up}/{len(servers)} server(s) up"


@dataclass
class Service:
    """What ``run`` does besides serving: log targets, the user to become, the pidfile and
    systemd's notifications. Built before anything binds (so errors come first)."""

    outputs: LogOutputs
    identity: Identity | None = None
    pidfile: str | None = None
    notifier: Notifier = field(default_factory=Notifier)
    ready: bool = False

    def before_serving(self, handle: ProxyHandle) -> None:
        """Bound and keys read: pidfile, state directory, then privileges."""
        try:
            if self.pidfile is not None:
                write_pidfile(self.pidfile)
            if self.identity is not None:
                hand_over(handle.runtime.config.global_.state_dir, self.identity)
                drop_privileges(self.identity)
                log.info(
                    "running as user %s (uid %d, gid %d)",
                    self.identity.user,
                    self.identity.uid,
                    self.identity.gid,
                )
        except ServiceError as error:
            raise StartupError(str(error)) from error

    async def announce_ready(self, handle: ProxyHandle) -> None:
        """READY=1 once the first health checks are done: systemd then starts what depends on
        the proxy, and ``systemctl start`` returns."""
        await handle.first_checks.wait()
        self.ready = True
        status = status_text(handle)
        log.info("ready: %s", status)
        self.notifier.ready(status)


Companion = Callable[..., Awaitable[None]]


# Settings read once at start: a reload that changes them says so instead of half-applying.
RESTART_ONLY = ("log", "user", "group", "pidfile")


def _on_sighup(handle: ProxyHandle, config_path: str | None) -> None:
    """SIGHUP: reload the configuration file (certificates included); without a file (the
    demo), reload the certificate files. A file that fails to load changes nothing."""
    before = handle.runtime.config.global_
    _reload(handle, config_path)
    after = handle.runtime.config.global_
    for key in RESTART_ONLY:
        if getattr(before, key) != getattr(after, key):
            log.warning("SIGHUP: global.%s changed; it takes effect at the next restart", key)


def _reload(handle: ProxyHandle, config_path: str | None) -> None:
    if config_path is None:
        problems = handle.reload_certificates()
        for problem in problems:
            log.error("certificate reload: %s", problem)
        log.info("SIGHUP: certificates reloaded (%d problem(s))", len(problems))
        return
    from config.loader import ConfigError, load_file

    try:
        config = load_file(config_path)
        notes = handle.reload(config)
    except ConfigError as error:
        for problem in error.problems:
            log.error("reload refused: %s", problem)
        log.error("SIGHUP: %s has errors; still serving the previous configuration", config_path)
        return
    except StartupError as error:
        log.error("SIGHUP: reload refused: %s; still serving the previous configuration", error)
        return
    for warning in config.warnings:
        log.warning("SIGHUP: %s", warning)
    for note in notes:
        log.info("SIGHUP: %s", note)


async def _expiry_timer(handle: ProxyHandle) -> None:
    while True:
        await trio.sleep(CERT_CHECK_INTERVAL)
        warn_expiring(handle)


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


async def _main(
    config: ProxyConfig,
    config_path: str | None,
    on_started: Callable[[ProxyHandle], None] | None,
    companions: Sequence[Companion],
    service: Service,
) -> None:
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as outer:
            for companion in companions:
                await outer.start(companion)
            async with trio.open_nursery() as inner:
                handle: ProxyHandle = await inner.start(_serve_task, config, service)
                log_listening(handle)
                if on_started is not None:
                    on_started(handle)
                async with trio.open_nursery() as duties:
                    duties.start_soon(service.announce_ready, handle)
                    duties.start_soon(_expiry_timer, handle)
                    await _handle_signals(signals, handle, config_path, service)
                    duties.cancel_scope.cancel()
            outer.cancel_scope.cancel()


def log_listening(handle: ProxyHandle) -> None:
    for b in handle.bound:
        kind = "stats" if b.served is None else b.served.vs.label
        tls = " (TLS)" if b.tls_server is not None else ""
        host, port = b.address
        log.info("listening: %s on %s:%s%s", kind, host, port, tls)


def reopen_logs(service: Service) -> None:
    """SIGUSR1: reopen the log files (after logrotate renamed them)."""
    failed = service.outputs.reopen()
    if failed:
        log.warning("SIGUSR1: %d log file(s) could not be reopened", failed)
    else:
        log.info("SIGUSR1: log files reopened")


async def _handle_signals(
    signals: AsyncIterator[int], handle: ProxyHandle, config_path: str | None, service: Service
) -> None:
    """SIGHUP reloads, SIGUSR1 reopens the log files, SIGTERM and SIGINT stop."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            if service.ready:
                service.notifier.reloading()
            _on_sighup(handle, config_path)
            if service.ready:
                service.notifier.ready(status_text(handle))
            continue
        if signum == signal.SIGUSR1:
            reopen_logs(service)
            continue
        log.info("%s: shutting down", signal.Signals(signum).name)
        service.notifier.stopping()
        handle.stop()
        return


async def _serve_task(
    config: ProxyConfig,
    service: Service,
    *,
    task_status: trio.TaskStatus[ProxyHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(
        config,
        task_status=task_status,
        outputs=service.outputs,
        before_serving=service.before_serving,
    )


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, as HAProxy counts them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    settings = config.global_
    try:
        outputs = LogOutputs.open(settings.log)
    except LogOutputError as problem:
        print(f"lbproxy: {problem}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    setup_logging(settings.log_level, outputs)
    service = Service(outputs, pidfile=settings.pidfile)
    try:
        if settings.user is not None:
            service.identity = resolve_identity(settings.user, settings.group)
        if settings.pidfile is not None:
            check_pidfile(settings.pidfile)
    except ServiceError as refused:
        print(f"lbproxy: {refused}", file=sys.stderr)
        _teardown_logging(outputs)
        return EXIT_STARTUP_FAILED
    if config_path:
        log.info("configuration %s loaded", config_path)
    for warning in config.warnings:
        log.warning("%s", warning)
    status = EXIT_OK
    main: Callable[..., Awaitable[None]] = _main
    if settings.worker_count(available_cores()) > 1:
        from .master import master_main

        main = master_main
    try:
        trio.run(main, config, config_path, on_started, companions, service)
    except* StartupError as group:
        for error in _leaves(group):
            print(f"lbproxy: {error}", file=sys.stderr)
        status = EXIT_STARTUP_FAILED
    finally:
        if settings.pidfile is not None:
            remove_pidfile(settings.pidfile)
        service.notifier.close()
        _teardown_logging(outputs)
    return status
