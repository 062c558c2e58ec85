"""One worker process: accepts on the master's listening sockets and proxies (docs/operations.md,
"Worker processes"). Started by master.py as ``python -m l7proxy.worker LINK_FD``.

The master sends two frames first: which inherited descriptor is which bind, and the
configuration. The worker then serves (``app.serve`` with the inherited sockets and no health
checks), applies the servers' health, admin state and weight the master pushes, and sends its
counters every ``COUNTER_INTERVAL``. SIGTERM (or the master going away) drains it within
``grace``; SIGUSR1 reopens its log files.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

import trio

from config.model import ProxyConfig

from . import app
from .log_targets import LogOutputError, LogOutputs
from .worker_link import Link, read_frames_blocking
from .worker_messages import (
    COUNTERS,
    MESSAGE,
    READY,
    STATES,
    apply_states,
    encode_message,
    snapshot,
)

log = logging.getLogger("lbproxy.worker")

COUNTER_INTERVAL = 0.5  # how stale the master's sums may be (seconds)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


def worker_config(config: ProxyConfig) -> ProxyConfig:
    """What a worker serves: the master keeps the stats listener, the admin socket and the
    state file."""
    settings = replace(config.global_, stats=None, admin_socket=None, state_file=None)
    return replace(config, global_=settings)


async def _apply_states(link: Link, handle: app.ProxyHandle) -> None:
    """The master's pushes, until it goes away; then stop (drain) like on SIGTERM."""
    runtime = handle.runtime
    async for kind, message in link.frames():
        if kind == MESSAGE and message.get("t") == STATES:
            for server in apply_states(runtime.pools, message["s"], trio.current_time()):
                runtime.server_changed(server)
    if not handle.stop_event.is_set():
        log.warning("worker %d: the master is gone; finishing in-flight requests", os.getpid())
        handle.stop()


async def _push_counters(link: Link, handle: app.ProxyHandle) -> None:
    while True:
        await trio.sleep(COUNTER_INTERVAL)
        await link.send(encode_message({"t": COUNTERS, "c": snapshot(handle.runtime)}))


async def _signals(signals: Any, handle: app.ProxyHandle, outputs: LogOutputs) -> None:
    """Read until the end (cancelled): a signal left unread when the receiver closes would be
    delivered again, and a second SIGTERM (a terminal's, then the master's) would kill."""
    async for signum in signals:
        if signum == signal.SIGUSR1:
            outputs.reopen()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            handle.stop()


async def _run(
    config: ProxyConfig, inherited: dict[str, socket.socket], link: Link, outputs: LogOutputs
) -> None:
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as duties:
            async with trio.open_nursery() as serving:
                handle: app.ProxyHandle = await serving.start(
                    lambda task_status: app.serve(
                        config, task_status=task_status, outputs=outputs, inherited=inherited
                    )
                )
                for pool in handle.runtime.pools.values():
                    pool.hash_new_sources = True
                duties.start_soon(_apply_states, link, handle)
                duties.start_soon(_push_counters, link, handle)
                duties.start_soon(_signals, signals, handle, outputs)
                await link.send(encode_message({"t": READY, "pid": os.getpid()}))
            # Drained: the last counts, then leave.
            await link.send(encode_message({"t": COUNTERS, "c": snapshot(handle.runtime)}))
            duties.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    link_sock = socket.socket(fileno=int(argv[0]))
    link_sock.setblocking(True)
    try:
        (_, hello), (_, config) = read_frames_blocking(link_sock, 2)
    except (EOFError, OSError) as error:
        print(f"lbproxy worker: {error}", file=sys.stderr)
        return app.EXIT_STARTUP_FAILED
    inherited = {key: socket.socket(fileno=fd) for key, fd in hello["listeners"].items()}
    try:
        outputs = LogOutputs.open(config.global_.log)
    except LogOutputError as refused:
        print(f"lbproxy worker: {refused}", file=sys.stderr)
        return app.EXIT_STARTUP_FAILED
    app.setup_logging(config.global_.log_level, outputs)
    status = app.EXIT_OK
    try:
        trio.run(_run, config, inherited, Link(link_sock), outputs)
    except* app.StartupError as group:
        for leaf in app._leaves(group):
            print(f"lbproxy worker: {leaf}", file=sys.stderr)
        status = app.EXIT_STARTUP_FAILED
    finally:
        outputs.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
