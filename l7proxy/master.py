"""The master process of ``global.workers`` > 1 (docs/operations.md, "Worker processes").

The master binds every listening socket, loads the certificates, writes the pidfile and drops
privileges exactly as the single process does (``app.serve`` with ``serves_traffic=False``),
then starts the workers, which inherit the listening sockets and accept on them. It keeps for
itself what must be one: the health checks, the admin socket, the stats listener, the state
file, sd_notify and the signals. Every ``STATE_POLL`` it pushes the servers' health, admin
state and weight to the workers when they changed (and every ``STATE_RESYNC`` anyway); the
workers send their counters back and the master's runtime holds the sums, which every stats
output reads. SIGHUP starts a new generation of workers on the new configuration, then retires
the old ones (they stop accepting and finish their connections). A worker that dies is logged
and replaced. SIGTERM drains every worker within ``grace``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from config.model import ProxyConfig

from . import app
from .worker import worker_config
from .worker_link import Link
from .worker_messages import (
    COUNTERS,
    MESSAGE,
    READY,
    STATES,
    CounterSums,
    encode_config,
    encode_message,
    server_states,
)

log = logging.getLogger("lbproxy.master")

STATE_POLL = 0.05  # a health or admin change reaches every worker within this (and a send)
STATE_RESYNC = 1.0  # the full view anyway: undoes a worker's own passive-failure verdicts
READY_TIMEOUT = 30.0  # a new generation that is not serving by then is given up (reload)
RESTART_PAUSE = 1.0  # a worker that dies this soon after its start is restarted after this
STOP_MARGIN = 5.0  # after grace, workers still running are killed


def _describe_exit(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


@dataclass(eq=False)
class Worker:
    proc: trio.Process
    link: Link
    started: float
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    retiring: bool = False
    requests: int = 0  # as of its last counters

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(eq=False)
class Master:
    handle: app.ProxyHandle
    service: app.Service
    config_path: str | None
    nursery: trio.Nursery
    workers: dict[int, Worker] = field(default_factory=dict)
    sums: CounterSums = field(default_factory=CounterSums)
    stopping: bool = False

    @property
    def count(self) -> int:
        return self.handle.runtime.config.global_.worker_count(app.available_cores())

    async def spawn(self) -> Worker:
        """Start one worker on the current configuration and listening sockets."""
        listeners = {b.key: b.sock.fileno() for b in self.handle.bound if b.served is not None}
        parent, child = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # the master's
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "l7proxy.worker", str(child.fileno())],
                pass_fds=(child.fileno(), *listeners.values()),
                env=env,
            )
        finally:
            child.close()
        worker = Worker(proc, Link(parent), trio.current_time())
        self.workers[worker.pid] = worker
        config = worker_config(self.handle.runtime.config)
        await worker.link.send(
            encode_message({"t": "hello", "listeners": listeners}) + encode_config(config)
        )
        self.nursery.start_soon(self._watch, worker)
        return worker

    async def start_generation(self) -> list[Worker]:
        """``count`` new workers; waits until they serve (or READY_TIMEOUT)."""
        new = [await self.spawn() for _ in range(self.count)]
        with trio.move_on_after(READY_TIMEOUT):
            for worker in new:
                await worker.ready.wait()
        return new

    async def _watch(self, worker: Worker) -> None:
        runtime = self.handle.runtime
        async for kind, message in worker.link.frames():
            if kind != MESSAGE:
                continue
            if message.get("t") == READY:
                states = server_states(runtime.pools)
                await worker.link.send(encode_message({"t": STATES, "s": states}))
                worker.ready.set()
            elif message.get("t") == COUNTERS:
                snap: dict[str, Any] = message["c"]
                worker.requests = sum(f.get("requests", 0) for f in snap["frontends"].values())
                self.sums.update(worker.pid, snap)
                self.sums.apply(runtime)
        status = await worker.proc.wait()
        worker.link.close()
        self.sums.gone(worker.pid)
        self.sums.apply(runtime)
        self.workers.pop(worker.pid, None)
        worker.exited.set()
        if worker.retiring or self.stopping:
            log.info(
                "worker %d finished (%s), %d request(s) served",
                worker.pid,
                _describe_exit(status),
                worker.requests,
            )
            return
        log.error(
            "worker %d died (%s) after %d request(s); starting a replacement",
            worker.pid,
            _describe_exit(status),
            worker.requests,
        )
        if not worker.ready.is_set() or trio.current_time() - worker.started < RESTART_PAUSE:
            await trio.sleep(RESTART_PAUSE)
        if not self.stopping:
            replacement = await self.spawn()
            log.info("worker %d started in place of %d", replacement.pid, worker.pid)

    async def push_states(self) -> None:
        last: list[list[Any]] = []
        sent_at = -STATE_RESYNC
        while True:
            await trio.sleep(STATE_POLL)
            states = server_states(self.handle.runtime.pools)
            now = trio.current_time()
            if states == last and now - sent_at < STATE_RESYNC:
                continue
            last, sent_at = states, now
            frame = encode_message({"t": STATES, "s": states})
            for worker in list(self.workers.values()):
                if worker.ready.is_set():  # a new one gets the states with its READY
                    await worker.link.send(frame)

    def signal_all(self, signum: int, workers: Sequence[Worker] | None = None) -> None:
        for worker in list(self.workers.values()) if workers is None else workers:
            if worker.proc.returncode is None:
                worker.proc.send_signal(signum)

    async def reload(self) -> None:
        """SIGHUP: the master reloads as one process does; when that worked, a new generation
        of workers starts on the new configuration and the old one finishes its connections."""
        before = self.handle.runtime.config
        app._on_sighup(self.handle, self.config_path)
        if self.config_path is not None and self.handle.runtime.config is before:
            return  # refused: the current workers go on
        old = [w for w in self.workers.values() if not w.retiring]
        new = await self.start_generation()
        if not all(w.ready.is_set() for w in new):
            log.error("SIGHUP: the new workers did not start; the previous ones go on")
            for worker in new:
                worker.retiring = True
            self.signal_all(signal.SIGKILL, new)
            return
        for worker in old:
            worker.retiring = True
        self.signal_all(signal.SIGTERM, old)
        log.info(
            "SIGHUP: workers %s serve the new configuration; %s finish their connections",
            ", ".join(str(w.pid) for w in new),
            ", ".join(str(w.pid) for w in old) or "none",
        )

    async def stop_workers(self) -> None:
        """SIGTERM every worker; they drain within ``grace``; whatever is left after it (and a
        margin) is killed."""
        self.stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            worker.retiring = True
        self.signal_all(signal.SIGTERM, workers)
        grace = self.handle.runtime.config.global_.grace
        with trio.move_on_after(grace + STOP_MARGIN):
            for worker in workers:
                await worker.exited.wait()
        left = [w for w in workers if not w.exited.is_set()]
        if left:
            log.warning("killing %d worker(s) still running after the grace period", len(left))
            self.signal_all(signal.SIGKILL, left)
            for worker in left:
                await worker.exited.wait()

    async def announce_ready(self, first: Sequence[Worker]) -> None:
        """READY=1 once the first health checks are done and every worker serves."""
        await self.handle.first_checks.wait()
        for worker in first:
            await worker.ready.wait()
        self.service.ready = True
        status = f"{app.status_text(self.handle)}, {len(first)} worker(s)"
        log.info("ready: %s", status)
        self.service.notifier.ready(status)

    async def handle_signals(self, signals: AsyncIterator[int]) -> None:
        """SIGHUP reloads, SIGUSR1 reopens the log files (here and in the workers), SIGTERM and
        SIGINT stop."""
        service = self.service
        async for signum in signals:
            if signum == signal.SIGHUP:
                if service.ready:
                    service.notifier.reloading()
                await self.reload()
                if service.ready:
                    service.notifier.ready(app.status_text(self.handle))
                continue
            if signum == signal.SIGUSR1:
                app.reopen_logs(service)
                self.signal_all(signal.SIGUSR1)
                continue
            log.info("%s: shutting down the workers", signal.Signals(signum).name)
            service.notifier.stopping()
            return


async def _serve_master(
    config: ProxyConfig,
    service: app.Service,
    *,
    task_status: trio.TaskStatus[app.ProxyHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    await app.serve(
        config,
        task_status=task_status,
        outputs=service.outputs,
        before_serving=service.before_serving,
        serves_traffic=False,
    )


async def master_main(
    config: ProxyConfig,
    config_path: str | None,
    on_started: Callable[[app.ProxyHandle], None] | None,
    companions: Sequence[app.Companion],
    service: app.Service,
) -> None:
    """``app.run``'s main with worker processes."""
    with trio.open_signal_receiver(*app.SIGNALS) as signals:
        async with trio.open_nursery() as outer:
            for companion in companions:
                await outer.start(companion)
            async with trio.open_nursery() as inner:
                handle: app.ProxyHandle = await inner.start(_serve_master, config, service)
                app.log_listening(handle)
                async with trio.open_nursery() as duties:
                    master = Master(handle, service, config_path, duties)
                    first = [await master.spawn() for _ in range(master.count)]
                    log.info(
                        "started %d worker(s): %s", len(first), " ".join(str(w.pid) for w in first)
                    )
                    if on_started is not None:
                        on_started(handle)
                    duties.start_soon(master.announce_ready, first)
                    duties.start_soon(master.push_states)
                    duties.start_soon(app._expiry_timer, handle)
                    await master.handle_signals(signals)
                    await master.stop_workers()
                    duties.cancel_scope.cancel()
                handle.stop()
            outer.cancel_scope.cancel()
