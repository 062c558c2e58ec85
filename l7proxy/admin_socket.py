"""The admin socket: a unix stream socket speaking the runtime API (admin.py), the timer that
ends drains with a deadline, and the state file (HAProxy ``server-state-file``).

Owned by the proxy's trio thread (app.py starts it in ``serve``). Nothing here decides: lines go
to ``admin.CliSession``, drains to ``admin.finish_drains``; this module reads, writes, logs and
saves. A client that stalls or sends too long a line is closed; it never affects traffic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from importlib import metadata

import trio

from config.model import AdminSocketSettings

from . import admin, admin_state, stats
from .runtime import Runtime
from .stream import SockStream

log = logging.getLogger("lbproxy.admin")

LISTEN_BACKLOG = 16  # operators and scripts, not traffic
LINE_TIMEOUT = 10.0  # HAProxy's default `stats timeout` 10s: a one-shot client has this long
INTERACTIVE_TIMEOUT = 600.0  # a `prompt` session may think between commands this long
DRAIN_CHECK_INTERVAL = 1.0  # how often timed drains are looked at (seconds)

BindFacts = Callable[[], tuple[admin.BindFact, ...]]


class AdminSocketError(Exception):
    """The admin socket cannot be opened; one line naming the path and the cause."""


def _version() -> str:
    try:
        return metadata.version("lbproxy")
    except metadata.PackageNotFoundError:
        return "unknown"


def _in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def open_admin_socket(settings: AdminSocketSettings, *, replace: bool = False) -> socket.socket:
    """Bind and listen at ``settings.path`` with ``settings.mode``; ``replace``: the socket
    there is this process's own (a reload changed its mode), not another proxy's.

    The socket is bound under a temporary name, given its mode, then renamed into place (as
    HAProxy does), so it is never reachable with looser permissions. A stale socket file is
    replaced; a live one (another proxy answers) or a non-socket file is an error.
    """
    path = settings.path
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as error:
        raise AdminSocketError(f"admin socket {path}: {error.strerror}") from error
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise AdminSocketError(f"admin socket {path}: exists and is not a socket")
        if not replace and _in_use(path):
            raise AdminSocketError(f"admin socket {path}: another process is listening on it")
    temporary = f"{path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, settings.mode)
        sock.listen(LISTEN_BACKLOG)
        os.rename(temporary, path)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise AdminSocketError(f"admin socket {path}: {error.strerror or error}") from error
    return sock


def _remove_if_ours(path: str, sock: socket.socket, inode: int) -> None:
    """Unlink the socket file unless a newer socket (a reload with a new mode) took the path."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    sock.close()


# ---- the state file ----------------------------------------------------------------------------


def save_state(runtime: Runtime) -> None:
    """Write ``global.state_file`` atomically (temporary file, then rename); failures are
    logged, never raised: the proxy goes on serving."""
    path = runtime.config.global_.state_file
    if path is None:
        return
    uptime = max(int(time.time() - runtime.started_at), 0)
    text = admin_state.render(runtime.pools, trio.current_time(), uptime)
    temporary = f"{path}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as error:
        log.error("cannot write the state file %s: %s", path, error.strerror or error)


def load_state(runtime: Runtime) -> None:
    """Apply ``global.state_file`` at start: admin states and weights of servers that still
    exist; the rest is logged and ignored."""
    path = runtime.config.global_.state_file
    if path is None:
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
    except FileNotFoundError:
        log.info("state file %s: none yet; starting from the configuration", path)
        return
    except OSError as error:
        log.error("cannot read the state file %s: %s", path, error.strerror or error)
        return
    saved, notes = admin_state.parse(text)
    notes += admin_state.apply(saved, runtime.pools, trio.current_time())
    for note in notes:
        log.info("state file %s: %s", path, note)


# ---- serving -------------------------------------------------------------------------------------


def _context(runtime: Runtime, binds: BindFacts, version: str) -> admin.Context:
    return admin.Context(
        runtime=runtime,
        now=trio.current_time(),
        wall=time.time(),
        pid=os.getpid(),
        version=version,
        binds=binds(),
        stat_csv=lambda: stats.csv_text(runtime),
    )


def _applied(runtime: Runtime, lines: list[str], changed: bool) -> None:
    """Log every change (HAProxy logs its CLI's server changes too) and save the state."""
    for line in lines:
        log.info("%s", line)
    if changed:
        save_state(runtime)


async def _client(sock: socket.socket, runtime: Runtime, binds: BindFacts, version: str) -> None:
    stream = SockStream(sock)
    session = admin.CliSession()
    buffer = b""
    try:
        while True:
            timeout = INTERACTIVE_TIMEOUT if session.interactive else LINE_TIMEOUT
            ended = False
            with trio.move_on_after(timeout):
                while b"\n" not in buffer and len(buffer) <= admin.MAX_LINE:
                    data = await stream.receive_some()
                    if not data:
                        ended = True
                        break
                    buffer += data
            line, newline, buffer = buffer.partition(b"\n")
            if not newline and not ended:
                return  # timed out, or a line too long: close
            if not newline and not line:
                return  # the client closed between commands
            out = session.feed(line.decode("utf-8", "replace"), _context(runtime, binds, version))
            _applied(runtime, out.log, out.changed)
            if out.text:
                await stream.send_all(out.text.encode())
            if out.close or (ended and not buffer):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("admin socket client failed")  # a bug here must not stop the proxy
    finally:
        stream.close()


async def _finish_drains(runtime: Runtime) -> None:
    while True:
        await trio.sleep(DRAIN_CHECK_INTERVAL)
        lines = admin.finish_drains(runtime, trio.current_time())
        _applied(runtime, lines, bool(lines))


async def serve_admin(
    sock: socket.socket, settings: AdminSocketSettings, runtime: Runtime, binds: BindFacts
) -> None:
    """Serve the runtime API on ``sock`` (from ``open_admin_socket``) until cancelled, then
    remove the socket file."""
    try:
        inode = os.stat(settings.path).st_ino  # the file's, not the socket's (fstat gives that)
    except OSError:
        inode = -1  # removed by someone already: nothing of ours to remove at the end
    version = _version()
    log.info("admin socket on %s (mode %04o)", settings.path, settings.mode)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_finish_drains, runtime)
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as error:
                    log.error("admin socket accept failed: %s", error.strerror or error)
                    await trio.sleep(0.1)
                    continue
                conn.setblocking(False)
                nursery.start_soon(_client, conn, runtime, binds, version)
    finally:
        trio.lowlevel.notify_closing(sock)
        _remove_if_ours(settings.path, sock, inode)
