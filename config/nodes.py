"""Typed reading of YAML nodes with positions: the building blocks of the loader.

``yaml.compose`` keeps every node's mark, so each problem can name FILE:LINE:COL and the key
path. Readers here never raise for bad input: they record a problem and return None, so the
loader can go on and report every problem of a file at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .model import Address
from .scalars import parse_address, parse_duration

T = TypeVar("T")
R = TypeVar("R")

_TAG = "tag:yaml.org,2002:"
STR_TAG = _TAG + "str"
MERGE_TAG = _TAG + "merge"

# How a resolved YAML type reads in a message.
_KIND = {
    _TAG + "bool": "a boolean",
    _TAG + "int": "a number",
    _TAG + "float": "a number",
    _TAG + "null": "null",
    _TAG + "timestamp": "a date",
    STR_TAG: "a string",
    _TAG + "seq": "a list",
    _TAG + "map": "a mapping",
}

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# One constructor to turn int/bool/float scalars into values exactly as yaml.safe_load would.
_CONSTRUCTOR = yaml.SafeLoader("")


def kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return _KIND.get(node.tag, f"a value tagged {node.tag}")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 1-based
    column: int  # 1-based
    text: str  # the full "FILE:LINE:COL: path: message"


class Problems:
    """Every problem found in one file, and every warning (a setting that is valid but has no
    effect), each in the order of their position once sorted."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []
        self.warnings: list[Problem] = []

    def _problem(self, line: int, column: int, path: str, message: str) -> Problem:
        text = f"{self.source}:{line}:{column}: {path or '(top level)'}: {message}"
        return Problem(line, column, text)

    def at(self, line: int, column: int, path: str, message: str) -> None:
        self.items.append(self._problem(line, column, path, message))

    def add(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.at(mark.line + 1, mark.column + 1, path, message)

    def warn(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.warnings.append(self._problem(mark.line + 1, mark.column + 1, path, message))

    def sorted_texts(self) -> list[str]:
        return _sorted(self.items)

    def sorted_warnings(self) -> list[str]:
        return _sorted(self.warnings)


def _sorted(items: list[Problem]) -> list[str]:
    return [p.text for p in sorted(items, key=lambda p: (p.line, p.column))]


@dataclass(frozen=True, slots=True)
class Entry:
    key: ScalarNode
    value: Node
    path: str


class Mapping:
    """A checked YAML mapping: string keys, no duplicates, only the allowed keys."""

    def __init__(self, node: MappingNode, path: str, entries: dict[str, Entry]) -> None:
        self.node = node
        self.path = path
        self.entries = entries

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())


class Reader:
    """Reads nodes into values, recording a problem (and returning None) for each bad one."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def problem(self, node: Node, path: str, message: str) -> None:
        self.problems.add(node, path, message)

    def warning(self, node: Node, path: str, message: str) -> None:
        """A valid setting that will not do what it says; the config still loads."""
        self.problems.warn(node, path, message)

    # -- containers ---------------------------------------------------------------------------

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Collection[str] | None,
        required: Collection[str] = (),
    ) -> Mapping | None:
        """``allowed`` None: any key (names chosen by the operator, like pool names)."""
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"expected a mapping, got {kind(node)}")
            return None
        entries: dict[str, Entry] = {}
        for key_node, value_node in self._pairs(node, path, {id(node)}):
            if not isinstance(key_node, ScalarNode) or key_node.tag != STR_TAG:
                self.problem(
                    key_node, path, f"keys must be strings, got {describe(key_node)}; quote it"
                )
                continue
            key = key_node.value
            key_path = join(path, key)
            first = entries.get(key)
            if first is not None:
                line = first.key.start_mark.line + 1
                self.problem(key_node, key_path, f"duplicate key (first given at line {line})")
                continue
            entries[key] = Entry(key_node, value_node, key_path)
            if allowed is not None and key not in allowed:
                self.problem(key_node, key_path, unknown_key_message(key, allowed))
        kept = {k: e for k, e in entries.items() if allowed is None or k in allowed}
        result = Mapping(node, path, kept)
        for key in required:
            if key not in entries:
                self.problem(node, join(path, key), "required key is missing")
        return result

    def _pairs(self, node: MappingNode, path: str, visited: set[int]) -> list[tuple[Node, Node]]:
        """Key/value pairs with YAML merge keys (``<<: *defaults``) expanded.

        Merged keys come first and explicit keys override them without a duplicate
        complaint, as in every YAML loader; duplicates among explicit keys are still caught.
        ``visited`` holds the mappings already expanded: aliases can form cycles, and a
        mapping merged twice adds nothing the second time.
        """
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.problem(source, path, "'<<' merges only mappings")
                    continue
                if id(source) in visited:
                    continue
                visited.add(id(source))
                merged.extend(self._pairs(source, path, visited))
        explicit_keys = {k.value for k, _ in explicit if isinstance(k, ScalarNode)}
        seen: set[str] = set()
        kept: list[tuple[Node, Node]] = []
        # Of several merged mappings the first one wins, as in PyYAML's flatten_mapping.
        for key_node, value_node in merged:
            name = key_node.value if isinstance(key_node, ScalarNode) else None
            if name is None or name in explicit_keys or name in seen:
                continue
            seen.add(name)
            kept.append((key_node, value_node))
        return kept + explicit

    def sequence(self, node: Node, path: str, *, allow_empty: bool = True) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.problem(node, path, f"expected a list, got {kind(node)}")
            return None
        if not allow_empty and not node.value:
            self.problem(node, path, "must not be empty")
            return None
        return list(node.value)

    # -- scalars ------------------------------------------------------------------------------

    def string(self, node: Node, path: str, *, allow_empty: bool = False) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == STR_TAG:
            if not allow_empty and not node.value.strip():
                self.problem(node, path, "must not be empty")
                return None
            control = _CONTROL_RE.search(node.value)
            if control is not None:
                # Strings end up in headers, paths and log lines, where these do harm.
                code = ord(control.group())
                self.problem(node, path, f"must not contain control characters (found {code:#04x})")
                return None
            return str(node.value)
        if isinstance(node, ScalarNode):
            # YAML 1.1 reads `no`, `on`, `1.0`, `~` as non-strings; say how to keep the text.
            if not node.value:
                self.problem(node, path, "expected a string, got nothing")
                return None
            self.problem(
                node,
                path,
                f"expected a string, got {kind(node)} ({node.value}); "
                f'put it in quotes if it is meant as text: "{node.value}"',
            )
            return None
        self.problem(node, path, f"expected a string, got {kind(node)}")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "bool":
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        self.problem(node, path, f"expected true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, path: str, low: int, high: int | None = None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "int"):
            self.problem(node, path, f"expected a whole number, got {describe(node)}")
            return None
        value = int(_CONSTRUCTOR.construct_yaml_int(node))
        if value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f"at least {low}"
            self.problem(node, path, f"{value} is out of range: must be {bound}")
            return None
        return value

    def choice(self, node: Node, path: str, options: Collection[str]) -> str | None:
        value = self.string(node, path)
        if value is None:
            return None
        if value not in options:
            self.problem(node, path, f"{value!r} is not one of: {', '.join(options)}")
            return None
        return value

    def duration(
        self, node: Node, path: str, *, positive: bool = True, maximum: float | None = None
    ) -> float | None:
        raw: str | int | float
        if isinstance(node, ScalarNode) and node.tag == STR_TAG:
            raw = node.value
        elif isinstance(node, ScalarNode) and node.tag == _TAG + "int":
            raw = int(_CONSTRUCTOR.construct_yaml_int(node))
        elif isinstance(node, ScalarNode) and node.tag == _TAG + "float":
            raw = float(_CONSTRUCTOR.construct_yaml_float(node))
        else:
            self.problem(node, path, f"expected a duration like 2s or 500ms, got {describe(node)}")
            return None
        seconds = self.parsed(node, path, parse_duration, raw)
        if seconds is None:
            return None
        if positive and seconds <= 0:
            self.problem(node, path, "must be greater than zero")
            return None
        if maximum is not None and seconds > maximum:
            self.problem(node, path, f"{node.value} is too long: at most {maximum:g}s")
            return None
        return seconds

    def address(self, node: Node, path: str, default_port: int | None = None) -> Address | None:
        if isinstance(node, ScalarNode) and node.tag != STR_TAG:
            self.problem(node, path, f"expected HOST:PORT, got {describe(node)}")
            return None
        if isinstance(node, SequenceNode):
            # `[::1]:80` unquoted starts a YAML flow list; the fix is quoting.
            self.problem(node, path, 'expected HOST:PORT; quote IPv6 addresses: "[::1]:80"')
            return None
        text = self.string(node, path)
        if text is None:
            return None
        return self.parsed(node, path, lambda v: parse_address(v, default_port), text)

    def parsed(self, node: Node, path: str, parse: Callable[[T], R], raw: T) -> R | None:
        try:
            return parse(raw)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None


def describe(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return f"{kind(node)} ({node.value})" if node.value else kind(node)
    return kind(node)


def unknown_key_message(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return f"unknown key; expected one of: {', '.join(sorted(allowed))}"
