"""Reading the service keys of ``global``: log targets, user, group and pidfile."""

from __future__ import annotations

from yaml.nodes import MappingNode, Node, ScalarNode

from .fields import FieldReader
from .model import (
    DEFAULT_SYSLOG_PORT,
    SYSLOG_FACILITIES,
    LogKind,
    LogTarget,
    SyslogFormat,
)
from .nodes import STR_TAG, Entry, Mapping
from .scalars import parse_address

LOG_KEYS = ("target", "format", "facility", "access")
SERVICE_GLOBAL_KEYS = ("log", "user", "group", "pidfile")
_SCHEMES = ("udp://", "unix://", "file://")
# HAProxy reads `log /dev/log` as the syslog socket; here a bare path is a file.
_SYSLOG_SOCKETS = ("/dev/log", "/run/systemd/journal/syslog")


def parse_log_target(text: str) -> tuple[LogKind, str | None, str | None]:
    """``stdout``, ``stderr``, ``udp://HOST[:PORT]``, ``unix:///PATH``, ``file://PATH`` or a path:
    the kind, the path (files relative as written) and the UDP address text. Raises ValueError.
    """
    for kind in (LogKind.STDOUT, LogKind.STDERR):
        if text == kind.value:
            return kind, None, None
    if text.startswith("udp://"):
        return LogKind.UDP, None, text.removeprefix("udp://")
    if text.startswith("unix://"):
        path = text.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: the socket path must be absolute, like unix:///dev/log")
        return LogKind.UNIX, path, None
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"{text!r}: unknown scheme {scheme!r}; expected stdout, stderr, a file path, "
            "udp://HOST:PORT or unix:///PATH"
        )
    path = text.removeprefix("file://")
    if not path:
        raise ValueError(f"{text!r}: empty file path")
    if path in _SYSLOG_SOCKETS:
        raise ValueError(f"{text!r} is the syslog socket; write unix://{path} to send to it")
    return LogKind.FILE, path, None


class ServiceReader(FieldReader):
    """``log`` (one target or a list), ``user``, ``group`` and ``pidfile``."""

    def log_targets(self, entry: Entry | None) -> tuple[LogTarget, ...] | None:
        if entry is None:
            return (LogTarget(LogKind.STDOUT),)
        node = entry.value
        items: list[tuple[Node, str]]
        if isinstance(node, ScalarNode | MappingNode):
            items = [(node, entry.path)]
        else:
            seq = self.sequence(node, entry.path, allow_empty=False)
            if seq is None:
                return None
            items = [(item, f"{entry.path}[{i}]") for i, item in enumerate(seq)]
        targets = [self.log_target(item, path) for item, path in items]
        found = [t for t in targets if t is not None]
        return tuple(found) if len(found) == len(items) else None

    def log_target(self, node: Node, path: str) -> LogTarget | None:
        if not isinstance(node, MappingNode):
            return self.log_target_text(node, path, SyslogFormat.RFC3164, "local0", True)
        m = self.mapping(node, path, LOG_KEYS, required=("target",))
        if m is None:
            return None
        fmt = self.opt_enum(m.get("format"), SyslogFormat, SyslogFormat.RFC3164)
        facility = self.opt_choice(m.get("facility"), tuple(SYSLOG_FACILITIES), "local0")
        access = self.opt_bool(m.get("access"), True)
        target_entry = m.get("target")
        if target_entry is None or fmt is None or facility is None or access is None:
            return None
        return self.log_target_text(target_entry.value, target_entry.path, fmt, facility, access)

    def log_target_text(
        self, node: Node, path: str, fmt: SyslogFormat, facility: str, access: bool
    ) -> LogTarget | None:
        text = self.string(node, path)
        if text is None:
            return None
        parsed = self.parsed(node, path, parse_log_target, text)
        if parsed is None:
            return None
        kind, file_path, address_text = parsed
        if kind is LogKind.FILE and file_path is not None:
            file_path = self.in_config_dir(file_path)
        address = None
        if address_text is not None:
            address = self.parsed(
                node, path, lambda v: parse_address(v, DEFAULT_SYSLOG_PORT), address_text
            )
            if address is None:
                return None
        return LogTarget(kind, file_path, address, fmt, facility, access)

    def user_and_group(self, m: Mapping) -> tuple[str | None, str | None]:
        user = self.identity(m.get("user"))
        group_entry = m.get("group")
        group = self.identity(group_entry)
        if group_entry is not None and "user" not in m:
            self.problem(group_entry.key, group_entry.path, "group needs user (whom to run as)")
        return user, group

    def identity(self, entry: Entry | None) -> str | None:
        """A user or group: a name, or a number (``65534``). Whether it exists is checked at
        start, on the machine that runs the proxy."""
        if entry is None:
            return None
        node = entry.value
        if isinstance(node, ScalarNode) and node.tag != STR_TAG:
            number = self.integer(node, entry.path, 0, 2**32 - 2)
            return None if number is None else str(number)
        text = self.string(node, entry.path)
        if text is not None and (text != text.strip() or ":" in text):
            self.problem(node, entry.path, f"{text!r} is not a user or group name")
            return None
        return text
