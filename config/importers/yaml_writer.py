"""Writes the translated configuration as YAML with source-line comments.

PyYAML cannot write comments, so the structure is laid out here and every scalar is written by
PyYAML itself (``_scalar``), which quotes exactly what YAML would otherwise misread (``no``,
``1.0``, ``2024-01-01``, ``[::1]:80``...). Small mappings and lists go on one line in flow style,
as the examples in docs/configuration.md do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

FLOW_WIDTH = 100  # longest line written in flow style; longer values are written as blocks


@dataclass(frozen=True, slots=True)
class Commented:
    """A value preceded by ``# comment`` lines in the output (a virtual server, a rule...)."""

    value: Any
    comment: str


def _scalar(value: Any) -> str:
    text = yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True)
    return text.strip()[1:-1]


def _flow(value: Any) -> str | None:
    """The value on one line, or None when it holds a comment or is too long."""
    if isinstance(value, Commented):
        return None
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            inner = _flow(item)
            if inner is None:
                return None
            parts.append(f"{_scalar(key)}: {inner}")
        text = "{" + ", ".join(parts) + "}"
    elif isinstance(value, list):
        items = [_flow(item) for item in value]
        if any(item is None for item in items):
            return None
        text = "[" + ", ".join(str(item) for item in items) + "]"
    else:
        return _scalar(value)
    return text if len(text) <= FLOW_WIDTH else None


def _comment_lines(comment: str, indent: int) -> list[str]:
    return [
        " " * indent + "# " + line if line else " " * indent + "#" for line in comment.split("\n")
    ]


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, Commented):
                lines += _comment_lines(item.comment, indent)
                item = item.value
            flow = _flow(item)
            if flow is not None and not (isinstance(item, (dict, list)) and _has_comment(item)):
                lines.append(f"{pad}{_scalar(key)}: {flow}")
            else:
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _block(item, indent + 2)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Commented):
                lines += _comment_lines(item.comment, indent)
                item = item.value
            flow = _flow(item)
            if flow is not None:
                lines.append(f"{pad}- {flow}")
                continue
            inner = _block(item, indent + 2)
            first = next(i for i, line in enumerate(inner) if not line.lstrip().startswith("#"))
            inner[first] = f"{pad}- " + inner[first][indent + 2 :]
            lines += inner
    else:
        lines.append(pad + _scalar(value))
    return lines


def _has_comment(value: Any) -> bool:
    if isinstance(value, Commented):
        return True
    if isinstance(value, dict):
        return any(_has_comment(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_comment(item) for item in value)
    return False


def dump(document: dict[str, Any], header: str = "") -> str:
    """The YAML text of ``document`` (a mapping of plain values and ``Commented`` ones)."""
    lines = _comment_lines(header, 0) if header else []
    for key, value in document.items():
        if lines and not lines[-1].startswith("#"):
            lines.append("")
        if isinstance(value, (dict, list)) and value:
            lines.append(f"{_scalar(key)}:")
            lines += _block(value, 2)
        else:
            lines += _block({key: value}, 0)
    return "\n".join(lines) + "\n"


def plain(value: Any) -> Any:
    """The value without its comments (what a YAML reader of the output would get)."""
    if isinstance(value, Commented):
        return plain(value.value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
