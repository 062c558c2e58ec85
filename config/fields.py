"""Typed readers with defaults and the value rules shared by every section of the config.

Like ``nodes.Reader``, each method records a problem and returns None for a bad value.
"""

from __future__ import annotations

import enum
import os
import re
from typing import TypeVar

from yaml.nodes import Node, ScalarNode

from .nodes import Entry, Mapping, Problems, Reader

E = TypeVar("E", bound=enum.Enum)

# Labels end up in cookie values, log fields and stats rows (and "pool/label" names in the
# planned runtime API): no spaces, quotes, ';', ',', '/' or '=' that would need escaping.
LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
# RFC 9110 token: header names, cookie names, methods.
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
PATH_RE = re.compile(r"/[\x21-\x7e]*")  # printable, no spaces: it goes into a request line


class FieldReader(Reader):
    """Readers for optional keys (``entry`` None means: not given, use the default)."""

    def __init__(self, problems: Problems, base_dir: str) -> None:
        super().__init__(problems)
        self.base_dir = base_dir  # relative paths in the config are relative to its directory

    def failed_since(self, m: Mapping) -> bool:
        """True when a problem was recorded inside mapping ``m`` (by position)."""
        start, end = m.node.start_mark, m.node.end_mark
        lo = (start.line + 1, start.column + 1)
        hi = (end.line + 1, end.column + 1)
        return any(lo <= (p.line, p.column) <= hi for p in self.problems.items)

    def is_false(self, node: Node) -> bool:
        return (
            isinstance(node, ScalarNode)
            and node.tag.endswith(":bool")
            and not (self.boolean(node, ""))
        )

    def opt_bool(self, entry: Entry | None, default: bool) -> bool | None:
        return default if entry is None else self.boolean(entry.value, entry.path)

    def opt_int(
        self, entry: Entry | None, default: int, low: int, high: int | None = None
    ) -> int | None:
        return default if entry is None else self.integer(entry.value, entry.path, low, high)

    def opt_duration(
        self, entry: Entry | None, default: float, *, positive: bool = True
    ) -> float | None:
        if entry is None:
            return default
        return self.duration(entry.value, entry.path, positive=positive)

    def opt_string(self, entry: Entry | None) -> str | None:
        return None if entry is None else self.string(entry.value, entry.path)

    def opt_choice(
        self, entry: Entry | None, options: tuple[str, ...], default: str | None
    ) -> str | None:
        return default if entry is None else self.choice(entry.value, entry.path, options)

    def opt_enum(self, entry: Entry | None, enum_type: type[E], default: E) -> E | None:
        if entry is None:
            return default
        value = self.choice(entry.value, entry.path, [member.value for member in enum_type])
        return None if value is None else enum_type(value)

    def label(self, entry: Entry | None, what: str, seen: dict[str, Node]) -> str | None:
        if entry is None:
            return None
        text = self.string(entry.value, entry.path)
        if text is None or not self.label_text(entry.value, entry.path, text, what):
            return None
        first = seen.get(text)
        if first is not None:
            line = first.start_mark.line + 1
            self.problem(
                entry.value, entry.path, f"duplicate {what} {text!r} (first at line {line})"
            )
            return None
        seen[text] = entry.value
        return text

    def label_text(self, node: Node, path: str, text: str, what: str) -> bool:
        if LABEL_RE.fullmatch(text):
            return True
        self.problem(
            node,
            path,
            f"{what} {text!r} may use only letters, digits and _ . : - "
            "(it appears in cookie values and log lines)",
        )
        return False

    def token(self, entry: Entry | None, default: str | None) -> str | None:
        if entry is None:
            return default
        text = self.string(entry.value, entry.path)
        if text is not None and not TOKEN_RE.fullmatch(text):
            self.problem(entry.value, entry.path, f"{text!r} is not a valid HTTP token")
            return None
        return text

    def url_path(self, entry: Entry | None, default: str) -> str | None:
        if entry is None:
            return default
        text = self.string(entry.value, entry.path)
        if text is not None and not PATH_RE.fullmatch(text):
            self.problem(
                entry.value, entry.path, f"{text!r} must start with '/' and contain no spaces"
            )
            return None
        return text

    def path_value(self, entry: Entry | None, default: str | None) -> str | None:
        if entry is None:
            return self.in_config_dir(default) if default is not None else None
        text = self.string(entry.value, entry.path)
        return self.in_config_dir(text) if text is not None else None

    def in_config_dir(self, text: str) -> str:
        """Relative paths mean: next to the config file, whatever the working directory."""
        return os.path.abspath(os.path.join(self.base_dir, text))
