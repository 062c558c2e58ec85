"""Config sync between the two nodes of the pair: the sender and the receiver (I/O edge).

The channel is TLS 1.3 both ways. Each node has its own sync key and certificate; the peer's
certificate file is the only trust anchor and its SHA-256 fingerprint is compared after the
handshake (the ``fingerprint`` in ``ha.nodes`` when given, else the file's own), so nothing but
the peer's key opens it. The receiver stages what it got next to its configuration, runs
``lbproxy check`` on the staged copy, and only then renames the files in place, signals the
proxy to reload (SIGHUP, through the pid the admin socket reports) and applies the server
states through the admin socket. Anything that fails is answered with its lines; the receiver
keeps its files then.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Iterable

import trio

from config.loader import ConfigError, load_file
from config.model import HaNode, HaSettings, ProxyConfig

from . import admin_state, ctl
from .ha_bundle import (
    LENGTH_BYTES,
    Bundle,
    BundleError,
    SyncAnswer,
    SyncedFile,
    decode_answer,
    decode_bundle,
    encode_answer,
    encode_bundle,
    frame_length,
    relative_name,
    state_commands,
)
from .ha_keepalived import HaConfigError, read_auth_pass, this_node

log = logging.getLogger("lbproxy.ha")

CONNECT_TIMEOUT = 10.0  # the peer is on the same segment; this only bounds a dead one
EXCHANGE_TIMEOUT = 60.0  # the receiver checks certificates and reloads before it answers
RELOAD_WAIT = 10.0  # how long the receiver waits for the proxy to show the new servers
MAX_FILE = 1024 * 1024  # as tls.store's certificate file cap


class SyncError(Exception):
    """A sync that could not be made; the message says why, in one line."""


# ---- who is who ------------------------------------------------------------------------------


def local_addresses(candidates: Iterable[str]) -> set[str]:
    """Those of ``candidates`` that are on this machine (a bind without FREEBIND succeeds)."""
    found: set[str] = set()
    for address in candidates:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        found.add(address)
    return found


def nodes_of(config: ProxyConfig, name: str | None) -> tuple[HaSettings, HaNode, HaNode]:
    """The ``ha`` settings, this node and its peer; SyncError when the file says no pair."""
    ha = config.ha
    if ha is None:
        raise SyncError(f"{config.source} has no ha: section")
    try:
        node = this_node(ha, local_addresses(n.address for n in ha.nodes), name)
    except HaConfigError as error:
        raise SyncError(str(error)) from None
    return ha, node, ha.peer_of(node)


# ---- the pinned TLS channel ------------------------------------------------------------------


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _certificate_der(path: str) -> bytes:
    try:
        with open(path, encoding="ascii") as handle:
            return ssl.PEM_cert_to_DER_cert(handle.read(MAX_FILE))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a PEM certificate"
        raise SyncError(f"{path}: {reason}") from None


def expected_fingerprint(node: HaNode) -> str:
    """What the peer must present: the configured fingerprint, else its certificate file's."""
    if node.fingerprint is not None:
        return node.fingerprint
    assert node.sync_cert is not None
    return fingerprint_of(_certificate_der(node.sync_cert))


def _context(ha: HaSettings, node: HaNode, peer: HaNode, purpose: ssl.Purpose) -> ssl.SSLContext:
    if ha.sync is None or node.sync_cert is None or peer.sync_cert is None:
        raise SyncError("ha.sync is not configured")
    context = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # the pin below names the peer, not a host name
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(node.sync_cert, ha.sync.key)
        context.load_verify_locations(cafile=peer.sync_cert)
    except (OSError, ssl.SSLError) as error:
        raise SyncError(f"sync key or certificate: {error}") from None
    return context


def check_pin(peer: HaNode, der: bytes | None) -> None:
    if der is None or fingerprint_of(der) != expected_fingerprint(peer):
        raise SyncError(f"the peer did not present {peer.name}'s pinned sync certificate")


# ---- lbproxy check's part ---------------------------------------------------------------------


def check_files(config: ProxyConfig) -> list[str]:
    """The files ``ha:`` names, read as keepalived and the sync channel will read them."""
    ha = config.ha
    if ha is None:
        return []
    problems: list[str] = []
    if ha.auth_pass_file is not None:
        try:
            with open(ha.auth_pass_file, encoding="utf-8") as handle:
                read_auth_pass(handle.read(4096), ha.auth_pass_file)
        except HaConfigError as error:
            problems.append(f"ha.auth_pass_file: {error}")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not text"
            problems.append(f"ha.auth_pass_file: {ha.auth_pass_file}: {reason}")
    if ha.sync is not None:
        for node in ha.nodes:
            try:
                expected = expected_fingerprint(node)
                assert node.sync_cert is not None
                actual = fingerprint_of(_certificate_der(node.sync_cert))
            except SyncError as error:
                problems.append(f"ha.nodes.{node.name}.sync_cert: {error}")
                continue
            if expected != actual:
                problems.append(
                    f"ha.nodes.{node.name}.fingerprint: {node.sync_cert} has SHA-256 {actual}"
                )
        if not os.path.isfile(ha.sync.key):
            problems.append(f"ha.sync.key: {ha.sync.key}: no such file")
    return problems


# ---- the sender --------------------------------------------------------------------------------


def synced_paths(config: ProxyConfig) -> list[str]:
    """The certificate files the virtual servers name, with sidecar keys and folder contents."""
    from tls.store import SIDECAR_SUFFIXES, STEM_KEY_SUFFIXES

    paths: list[str] = []
    for vs in config.virtual_servers:
        for bind in vs.binds:
            if bind.tls is None:
                continue
            named = [spec.path for spec in bind.tls.certificates]
            if bind.tls.client_ca is not None:
                named.append(bind.tls.client_ca)
            for path in named:
                if os.path.isdir(path):
                    paths += sorted(
                        os.path.join(path, entry)
                        for entry in os.listdir(path)
                        if not entry.startswith(".") and os.path.isfile(os.path.join(path, entry))
                    )
                    continue
                paths.append(path)
                stem, suffix = os.path.splitext(path)
                sidecars = [path + s for s in SIDECAR_SUFFIXES]
                if suffix in STEM_KEY_SUFFIXES:
                    sidecars.append(stem + ".key")
                paths += [p for p in sidecars if os.path.isfile(p)]
    return list(dict.fromkeys(paths))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as error:
        raise SyncError(f"{path}: {error.strerror or error}") from None
    if len(data) > MAX_FILE:
        raise SyncError(f"{path}: larger than {MAX_FILE} bytes")
    return data


def collect(config: ProxyConfig, config_path: str, sender: str) -> tuple[Bundle, list[str]]:
    """The bundle for the peer, and notes for the operator (what was left out and why)."""
    config_dir = os.path.dirname(os.path.abspath(config_path))
    files: list[SyncedFile] = []
    for path in synced_paths(config):
        try:
            name = relative_name(path, config_dir)
        except BundleError as error:
            raise SyncError(str(error)) from None
        files.append(SyncedFile(name, _read(path)))
    notes: list[str] = []
    states: str | None = None
    admin = config.global_.admin_socket
    if admin is None:
        notes.append("no global.admin_socket: server states are not sent")
    else:
        try:
            states = ctl.ask(admin.path, "show servers state")
        except ctl.Unreachable as error:
            # A node being set up has no proxy yet: the files still go, the peer keeps its states.
            notes.append(f"server states not sent: {error}")
    return Bundle(sender, _read(config_path), tuple(files), states), notes


def _recv_exact(sock: ssl.SSLSocket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        data = sock.recv(min(size, 1 << 16))
        if not data:
            raise SyncError("the peer closed the connection before answering")
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def send(config: ProxyConfig, config_path: str, node_name: str | None) -> tuple[SyncAnswer, str]:
    """Push the configuration to the peer; its answer and the peer's name."""
    ha, node, peer = nodes_of(config, node_name)
    if ha.sync is None:
        raise SyncError(f"{config.source} has no ha.sync section")
    bundle, notes = collect(config, config_path, node.name)
    context = _context(ha, node, peer, ssl.Purpose.SERVER_AUTH)
    try:
        with socket.create_connection((peer.address, ha.sync.port), CONNECT_TIMEOUT) as raw:
            raw.settimeout(EXCHANGE_TIMEOUT)
            with context.wrap_socket(raw) as sock:
                check_pin(peer, sock.getpeercert(binary_form=True))
                sock.sendall(encode_bundle(bundle))
                length = frame_length(_recv_exact(sock, LENGTH_BYTES))
                answer = decode_answer(_recv_exact(sock, length))
    except (OSError, BundleError) as error:
        where = f"{peer.name} ({peer.address}:{ha.sync.port})"
        raise SyncError(f"{where}: {getattr(error, 'strerror', None) or error}") from None
    return SyncAnswer(answer.ok, (*notes, *answer.lines)), peer.name


# ---- the receiver ------------------------------------------------------------------------------


def _run_check(path: str) -> tuple[bool, list[str]]:
    """``lbproxy check -c path`` in this process: its verdict and every line it printed."""
    from . import cli

    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(config=path, ha_files=False)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli._cmd_check(args)
    return status == 0, (err.getvalue() + out.getvalue()).splitlines()


def _stage(bundle: Bundle, staging: str, config_name: str) -> list[tuple[str, str, int]]:
    """Write the bundle under ``staging``; (staged path, relative name, mode) of each file."""
    placed: list[tuple[str, str, int]] = []
    for item in (*bundle.files, SyncedFile(config_name, bundle.config)):
        target = os.path.join(staging, item.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, item.mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(item.data)
        os.chmod(target, item.mode)  # the umask must not open a key
        placed.append((target, item.name, item.mode))
    return placed


def _keep_owner(path: str, like: str) -> None:
    """Give the new file the owner of the one it replaces (else of the folder): a proxy that
    dropped privileges must still read its key after the reload."""
    owner = os.stat(like)
    with contextlib.suppress(PermissionError):  # not root: the files are ours, as before
        os.chown(path, owner.st_uid, owner.st_gid)


def apply_bundle(bundle: Bundle, config_path: str, node: HaNode) -> SyncAnswer:
    """Stage, check, put in place, reload and apply the states; keep everything on a failure."""
    config_dir = os.path.dirname(os.path.abspath(config_path))
    config_name = os.path.basename(config_path)
    staging = tempfile.mkdtemp(prefix=".lbproxy-sync-", dir=config_dir)
    try:
        placed = _stage(bundle, staging, config_name)
        staged_config = os.path.join(staging, config_name)
        ok, lines = _run_check(staged_config)
        lines = [line.replace(staging, config_dir) for line in lines]
        if ok:
            staged = load_file(staged_config)
            if staged.ha is None or staged.ha.node_named(node.name) is None:
                ok = False
                lines.append(f"{config_name}: ha.nodes does not name this node ({node.name})")
        if not ok:
            return SyncAnswer(False, (f"{node.name} keeps its configuration:", *lines))
        for staged_path, name, _mode in placed:
            final = os.path.join(config_dir, name)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            _keep_owner(staged_path, final if os.path.exists(final) else config_dir)
            os.replace(staged_path, final)  # one rename each: never a half-written file
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = [f"{node.name}: {len(placed)} file(s) in place"]
    notes += reload_and_apply(load_file(config_path), bundle.states)
    return SyncAnswer(True, tuple(notes))


def reload_and_apply(config: ProxyConfig, states: str | None) -> list[str]:
    """SIGHUP the proxy (found through its admin socket) and give it the sender's states."""
    admin = config.global_.admin_socket
    if admin is None:
        return ["no global.admin_socket here: the proxy was not reloaded; reload it"]
    try:
        info = ctl.ask(admin.path, "show info")
    except ctl.Unreachable as error:
        return [f"the proxy is not running ({error}); it reads the new files when it starts"]
    pid = next(
        (int(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("Pid:")), 0
    )
    if pid <= 0:
        return ["the proxy did not say its pid; reload it"]
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        return [f"cannot signal the proxy ({pid}): {error.strerror}; reload it"]
    notes = [f"proxy {pid} reloaded"]
    if states is not None:
        try:
            notes += _apply_states(admin.path, config, states)
        except ctl.Unreachable as error:
            notes.append(f"server states not applied: {error}")
    return notes


def _apply_states(path: str, config: ProxyConfig, states: str) -> list[str]:
    notes: list[str] = []
    saved, _ = admin_state.parse(states)
    wanted = {(p.name, s.label) for p in config.all_pools() for s in p.real_servers}
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:  # the reload is asynchronous: wait for its servers
        shown, _ = admin_state.parse(ctl.ask(path, "show servers state"))
        if {(s.pool, s.label) for s in shown} == wanted:
            break
        time.sleep(0.1)
    known = [entry for entry in saved if (entry.pool, entry.label) in wanted]
    for line in state_commands(known):
        answer = ctl.ask(path, line)
        if ctl.answers_error(answer):
            notes.append(f"{line}: {answer.strip()}")
    changed = [e for e in known if e.admin.value != "ready"]
    notes.append(
        f"server states applied ({len(known)} server(s), {len(changed)} not ready: "
        + (", ".join(f"{e.pool}/{e.label} {e.admin.value}" for e in changed) or "none")
        + ")"
    )
    return notes


async def _handle(
    stream: trio.SSLStream[trio.SocketStream], config_path: str, node_name: str | None
) -> None:
    try:
        with trio.fail_after(EXCHANGE_TIMEOUT):
            await stream.do_handshake()
            config = load_file(config_path)
            _, node, peer = nodes_of(config, node_name)
            check_pin(peer, stream.getpeercert(binary_form=True))
            head = await _receive_exact(stream, LENGTH_BYTES)
            body = await _receive_exact(stream, frame_length(head))
            bundle = decode_bundle(body)
            log.info("sync from %s: %d file(s)", bundle.sender, len(bundle.files) + 1)
            try:
                answer = await trio.to_thread.run_sync(apply_bundle, bundle, config_path, node)
            except OSError as error:  # a full disk, a read-only folder: say so to the sender
                where = error.filename or config_path
                answer = SyncAnswer(False, (f"{node.name}: {where}: {error.strerror or error}",))
            for line in answer.lines:
                log.info("sync: %s", line)
            await stream.send_all(encode_answer(answer))
    except (SyncError, BundleError, ConfigError) as error:
        log.error("sync refused: %s", error)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(encode_answer(SyncAnswer(False, (str(error),))))
    except (trio.BrokenResourceError, trio.TooSlowError, OSError) as error:
        cause = error.__cause__ or error  # trio wraps the ssl error that says why
        log.error("sync connection lost: %s", cause or cause.__class__.__name__)
    except Exception:  # one sync's bug must not stop the receiver (DESIGN principle 5)
        log.exception("sync failed")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(encode_answer(SyncAnswer(False, ("internal error; see log",))))
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()


async def _receive_exact(stream: trio.SSLStream[trio.SocketStream], size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        data = await stream.receive_some(min(size, 1 << 16))
        if not data:
            raise SyncError("the sender closed the connection early")
        chunks.append(bytes(data))
        size -= len(data)
    return b"".join(chunks)


async def receive_forever(
    config_path: str,
    node_name: str | None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``ha.sync`` and apply what the peer sends, one sync at a time."""
    config = load_file(config_path)
    ha, node, peer = nodes_of(config, node_name)
    if ha.sync is None:
        raise SyncError(f"{config_path} has no ha.sync section")
    context = _context(ha, node, peer, ssl.Purpose.CLIENT_AUTH)
    host = ha.sync.bind or node.address
    listeners = await trio.open_tcp_listeners(ha.sync.port, host=host)
    lock = trio.Lock()  # two syncs at once would interleave their renames

    async def one(stream: trio.SocketStream) -> None:
        async with lock:
            ssl_stream = trio.SSLStream(stream, context, server_side=True)
            await _handle(ssl_stream, config_path, node_name)

    log.info("sync receiver for %s listening on %s port %d", node.name, host, ha.sync.port)
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(one, listeners, handler_nursery=nursery)
