"""Running as a system service: dropping privileges, the pidfile, systemd notifications. [io]

The order at start (app.py): resolve the user and check the pidfile before anything binds;
bind every socket and read every key; write the pidfile, hand the state directory to the user,
drop privileges; serve. Each failure is a ServiceError with one line naming its cause.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import os
import pwd
import socket
import time
from dataclasses import dataclass

PIDFILE_MODE = 0o644
# Modules the proxy imports only when it needs them (a reload, the first check, a host name
# to encode). The user it drops to may not be able to read the interpreter's files (a Python
# installed under /root), so they are imported before the switch.
LATE_IMPORTS = (
    "config.loader",
    "tls.store",
    "tls.server_tls",
    "balancing.checker",
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
)


class ServiceError(Exception):
    """The service cannot start as configured: one line naming the setting and the cause."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom to run as once the sockets are bound."""

    user: str
    uid: int
    gid: int


def _user_entry(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return None


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServiceError(f"group {group!r} does not exist on this machine") from None


def resolve_identity(user: str, group: str | None) -> Identity:
    """``user`` (name or number) and ``group`` (default: the user's primary group) as ids;
    then check this process may become them: it is root, or it already is that user."""
    entry = _user_entry(user)
    if entry is None and not user.isdigit():
        raise ServiceError(f"user {user!r} does not exist on this machine")
    uid = entry.pw_uid if entry is not None else int(user)
    if group is not None:
        gid = _group_id(group)
    elif entry is not None:
        gid = entry.pw_gid
    else:
        raise ServiceError(f"user {user} has no passwd entry: give its group too")
    identity = Identity(user, uid, gid)
    check_can_become(identity, os.geteuid(), os.getegid())
    return identity


def check_can_become(identity: Identity, euid: int, egid: int) -> None:
    """Root may become anyone; anyone else only who it already is."""
    if euid != 0 and (euid, egid) != (identity.uid, identity.gid):
        raise ServiceError(
            f"user: {identity.user!r}: lbproxy runs as uid {euid}, not as root, so it cannot "
            "switch users; start it as root, or as that user without the user: setting"
        )


def hand_over(path: str, identity: Identity) -> None:
    """Make the state directory (0700) if needed and give it and its files to the user, so
    what the proxy writes there later (after dropping privileges) still works."""
    if os.geteuid() != 0:
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        for directory, _, files in os.walk(path):
            os.chown(directory, identity.uid, identity.gid)
            for name in files:
                os.chown(os.path.join(directory, name), identity.uid, identity.gid)
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"state_dir {path}: cannot give it to {identity.user}: {reason}"
        raise ServiceError(message) from None


def drop_privileges(identity: Identity) -> None:
    """setgroups([]), setgid, setuid, in that order (setuid first would lose the right to
    change groups); then check that root cannot be regained."""
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (
        identity.uid,
        identity.uid,
        identity.gid,
        identity.gid,
    ):
        return  # already that user (systemd's User=)
    for name in LATE_IMPORTS:
        importlib.import_module(name)
    try:
        os.setgroups([])
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as error:
        raise ServiceError(f"user {identity.user}: cannot switch to it: {error}") from None
    if identity.uid == 0:
        return
    if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (
        identity.uid,
        identity.uid,
        identity.gid,
        identity.gid,
    ) or os.getgroups():
        raise ServiceError(f"user {identity.user}: the switch did not take; refusing to serve")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise ServiceError(f"user {identity.user}: root could be regained; refusing to serve")


def _running_lbproxy(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            command = stream.read()
    except OSError:
        return True  # alive, and we cannot tell what it is: better refuse than run twice
    return b"lbproxy" in command or b"l7proxy" in command


def check_pidfile(path: str) -> None:
    """Refuse to start when ``path`` names a live lbproxy; a stale file is fine."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read(64).strip()
    except FileNotFoundError:
        return
    except OSError as error:
        raise ServiceError(f"pidfile {path}: cannot read it: {error.strerror}") from None
    if text.isdigit() and _running_lbproxy(int(text)):
        raise ServiceError(f"pidfile {path}: lbproxy is already running as pid {text}")


def write_pidfile(path: str) -> None:
    """Write our pid (through a temporary file, so a reader never sees half of it)."""
    check_pidfile(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PIDFILE_MODE)
        with os.fdopen(fd, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ServiceError(f"pidfile {path}: cannot write it: {error.strerror}") from None


def remove_pidfile(path: str) -> None:
    """Remove the pidfile if it is still ours. After dropping privileges its directory may
    not be ours to change: then it stays, and the next start sees it is stale."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            if stream.read(64).strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


class Notifier:
    """sd_notify(3) without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``
    (a path, or ``@name`` for an abstract socket). Without the variable every call does
    nothing. A failed send is not an error: the proxy serves whether systemd hears or not."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        self.sock: socket.socket | None = None
        if address and (address.startswith("/") or address.startswith("@")):
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    def send(self, *fields: str) -> bool:
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # systemd 253+ wants the monotonic time with RELOADING=1 to tell reloads apart.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
