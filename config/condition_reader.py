"""Reading conditions (``acls:``, ``if:``, the routing rules' inline form) and ``%[...]`` value
templates. Like every reader, a bad value is recorded as a problem and gives None."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import AnyStr

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .conditions import (
    VAR_ALIASES,
    AllOf,
    AnyOf,
    Condition,
    Header,
    HostIs,
    HostPrefix,
    HostRegex,
    HostSuffix,
    Method,
    Network,
    Not,
    PathIs,
    PathPrefix,
    PathRegex,
    PathSuffix,
    Query,
    Source,
    Template,
    Var,
)
from .fields import LABEL_RE, PATH_RE, TOKEN_RE, FieldReader
from .nodes import Entry, Mapping
from .scalars import parse_network

PRIMITIVES = (
    "path",
    "path_prefix",
    "path_suffix",
    "path_regex",
    "host",
    "host_prefix",
    "host_suffix",
    "host_regex",
    "header",
    "src",
    "method",
    "query",
)
COMBINATORS = ("and", "or", "not")
CONDITION_KEYS = (*PRIMITIVES, *COMBINATORS)
HEADER_KEYS = ("name", "value", "regex")
QUERY_KEYS = ("name", "value")

_HOST_RE = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_HOST_PART_RE = re.compile(r"[a-z0-9_.-]+")
_TEMPLATE_RE = re.compile(r"%\[([^\]]*)\]|%%|%")

Acls = dict[str, Condition]


class ConditionReader(FieldReader):
    # -- conditions ---------------------------------------------------------------------------

    def condition(self, node: Node, path: str, acls: Acls) -> Condition | None:
        """A mapping of primitives and combinators (several keys mean "and"), or the name of
        an acl, ``!name`` for its negation."""
        if isinstance(node, ScalarNode) and node.tag.endswith(":str"):
            return self.acl_reference(node, path, acls)
        if not isinstance(node, MappingNode):
            self.problem(node, path, "expected a condition: a mapping like {path_prefix: /api/}")
            return None
        m = self.mapping(node, path, CONDITION_KEYS)
        if m is None:
            return None
        if not m.entries:
            self.problem(node, path, "an empty condition; give at least one of: " + _KEYS_TEXT)
            return None
        return self.conditions_of(m, acls, (*PRIMITIVES, *COMBINATORS))

    def conditions_of(self, m: Mapping, acls: Acls, keys: tuple[str, ...]) -> Condition | None:
        """The ``keys`` of ``m`` that are there, joined by "and"; None after a problem."""
        parts: list[Condition] = []
        failed = False
        for key in keys:
            entry = m.get(key)
            if entry is None:
                continue
            part = self._part(key, entry, acls)
            if part is None:
                failed = True
            else:
                parts.append(part)
        if failed or not parts:
            return None
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def acl_reference(self, node: ScalarNode, path: str, acls: Acls) -> Condition | None:
        text = node.value.strip()
        name = text.removeprefix("!").strip()
        condition = acls.get(name)
        if condition is None:
            known = ", ".join(acls) if acls else "none are defined"
            self.problem(node, path, f"no acl named {name!r} under acls: (known: {known})")
            return None
        return Not(condition) if text.startswith("!") else condition

    def acls(self, entry: Entry | None) -> Acls | None:
        """``acls: {name: condition}``; an acl may use the ones defined before it."""
        acls: Acls = {}
        if entry is None:
            return acls
        m = self.mapping(entry.value, entry.path, None)
        if m is None:
            return None
        failed = False
        for item in m:
            name = item.key.value
            if not LABEL_RE.fullmatch(name):
                self.problem(item.key, item.path, f"acl name {name!r}: letters, digits, _ . : -")
                failed = True
                continue
            condition = self.condition(item.value, item.path, acls)
            if condition is None:
                failed = True
            else:
                acls[name] = condition
        return None if failed else acls

    def opt_condition(self, entry: Entry | None, acls: Acls) -> tuple[bool, Condition | None]:
        """An optional ``if:``: (ok, condition); no entry is (True, None), always."""
        if entry is None:
            return True, None
        condition = self.condition(entry.value, entry.path, acls)
        return condition is not None, condition

    def _part(self, key: str, entry: Entry, acls: Acls) -> Condition | None:
        if key in ("and", "or"):
            items = self.sequence(entry.value, entry.path, allow_empty=False)
            if items is None:
                return None
            parts = [
                self.condition(item, f"{entry.path}[{i}]", acls) for i, item in enumerate(items)
            ]
            kept = tuple(part for part in parts if part is not None)
            if len(kept) != len(parts):
                return None
            return AllOf(kept) if key == "and" else AnyOf(kept)
        if key == "not":
            inner = self.condition(entry.value, entry.path, acls)
            return None if inner is None else Not(inner)
        return _PRIMITIVE_READERS[key](self, entry)

    # -- primitives ---------------------------------------------------------------------------

    def _path(self, entry: Entry) -> Condition | None:
        text = self.url_path(entry, "/")
        return None if text is None else PathIs(text)

    def _path_prefix(self, entry: Entry) -> Condition | None:
        text = self.url_path(entry, "/")
        return None if text is None else PathPrefix(text)

    def _path_suffix(self, entry: Entry) -> Condition | None:
        text = self.string(entry.value, entry.path)
        if text is not None and not PATH_RE.fullmatch("/" + text):
            self.problem(entry.value, entry.path, f"{text!r} must contain no spaces")
            return None
        return None if text is None else PathSuffix(text)

    def _path_regex(self, entry: Entry) -> Condition | None:
        pattern = self.regex(entry)
        return None if pattern is None else PathRegex(pattern)

    def _host(self, entry: Entry) -> Condition | None:
        text = self.string(entry.value, entry.path)
        if text is None:
            return None
        host = text.lower().removesuffix(".")  # request hosts are compared without it
        literal = _ipv6(host)
        if literal is not None:  # a Host header holds an IPv6 address in brackets
            return HostIs(literal)
        if not _HOST_RE.fullmatch(host):
            self.problem(
                entry.value,
                entry.path,
                f"{host!r} is not a host name (no port, no path; '*.' only in front)",
            )
            return None
        # "*.example.com": one label or more in front, like a wildcard certificate's name.
        return HostSuffix(host[1:]) if host.startswith("*.") else HostIs(host)

    def _host_part(self, entry: Entry) -> str | None:
        text = self.string(entry.value, entry.path)
        if text is None:
            return None
        if not _HOST_PART_RE.fullmatch(text.lower()):
            self.problem(entry.value, entry.path, f"{text!r} is not part of a host name")
            return None
        return text.lower()

    def _host_prefix(self, entry: Entry) -> Condition | None:
        text = self._host_part(entry)
        return None if text is None else HostPrefix(text)

    def _host_suffix(self, entry: Entry) -> Condition | None:
        text = self._host_part(entry)
        return None if text is None else HostSuffix(text.removesuffix("."))

    def _host_regex(self, entry: Entry) -> Condition | None:
        pattern = self.regex(entry)
        return None if pattern is None else HostRegex(pattern)

    def _header(self, entry: Entry) -> Condition | None:
        m = self.mapping(entry.value, entry.path, HEADER_KEYS, required=("name",))
        if m is None:
            return None
        name = self.token(m.get("name"), None)
        value_entry, regex_entry = m.get("value"), m.get("regex")
        if value_entry is not None and regex_entry is not None:
            self.problem(m.node, entry.path, "give value or regex, not both")
            return None
        value: bytes | None = None
        if value_entry is not None:
            text = self.string(value_entry.value, value_entry.path, allow_empty=True)
            if text is not None and text != text.strip(" \t"):
                # Request header values are compared without their surrounding whitespace.
                self.problem(
                    value_entry.value, value_entry.path, "must not start or end with spaces"
                )
                return None
            value = self.latin1(value_entry, text)
            if value is None:
                return None
        regex = self.bytes_regex(regex_entry) if regex_entry is not None else None
        if name is None or (regex_entry is not None and regex is None):
            return None
        return Header(name.lower().encode("ascii"), value, regex)

    def _src(self, entry: Entry) -> Condition | None:
        networks: list[Network] = []
        nodes = self.scalar_list(entry)
        if nodes is None:
            return None
        for node, path in nodes:
            text = self.string(node, path)
            network = self.parsed(node, path, parse_network, text) if text is not None else None
            if network is None:
                return None
            networks.append(network)
        return Source(tuple(networks))

    def _method(self, entry: Entry) -> Condition | None:
        methods = self.methods(entry)
        return None if methods is None else Method(methods)

    def _query(self, entry: Entry) -> Condition | None:
        m = self.mapping(entry.value, entry.path, QUERY_KEYS, required=("name",))
        if m is None:
            return None
        name = self.opt_string(m.get("name"))
        value_entry = m.get("value")
        value = None
        if value_entry is not None:
            value = self.string(value_entry.value, value_entry.path, allow_empty=True)
            if value is None:
                return None
        return None if name is None else Query(name, value)

    # -- shared pieces ------------------------------------------------------------------------

    def scalar_list(self, entry: Entry) -> list[tuple[Node, str]] | None:
        """One scalar or a non-empty list of them, each with its key path."""
        if isinstance(entry.value, SequenceNode):
            items = self.sequence(entry.value, entry.path, allow_empty=False)
            if items is None:
                return None
            return [(item, f"{entry.path}[{i}]") for i, item in enumerate(items)]
        return [(entry.value, entry.path)]

    def methods(self, entry: Entry) -> frozenset[bytes] | None:
        nodes = self.scalar_list(entry)
        if nodes is None:
            return None
        methods: set[bytes] = set()
        for node, path in nodes:
            text = self.string(node, path)
            if text is None:
                return None
            if not TOKEN_RE.fullmatch(text):
                self.problem(node, path, f"{text!r} is not a method name (an HTTP token)")
                return None
            methods.add(text.encode("ascii"))
        return frozenset(methods)

    def regex(self, entry: Entry) -> re.Pattern[str] | None:
        text = self.string(entry.value, entry.path)
        return None if text is None else self._compiled(entry, text)

    def bytes_regex(self, entry: Entry) -> re.Pattern[bytes] | None:
        """For header values, which are bytes."""
        text = self.string(entry.value, entry.path)
        raw = self.latin1(entry, text)
        return None if raw is None else self._compiled(entry, raw)

    def _compiled(self, entry: Entry, pattern: AnyStr) -> re.Pattern[AnyStr] | None:
        try:
            return re.compile(pattern)
        except re.error as exc:
            self.problem(
                entry.value,
                entry.path,
                f"invalid regular expression: {exc.msg} at position {exc.pos}",
            )
            return None

    def latin1(self, entry: Entry, text: str | None) -> bytes | None:
        if text is None:
            return None
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            self.problem(entry.value, entry.path, "only ASCII and Latin-1 characters fit a header")
            return None

    def template(self, entry: Entry, *, allow_empty: bool = True) -> Template | None:
        """A value with HAProxy's ``%[fetch]`` spelling; ``%%`` is a literal ``%``."""
        text = self.string(entry.value, entry.path, allow_empty=allow_empty)
        if text is None or self.latin1(entry, text) is None:
            return None
        parts: list[str | Var] = []
        position = 0
        for match in _TEMPLATE_RE.finditer(text):
            parts.append(text[position : match.start()])
            position = match.end()
            token = match.group(0)
            if token == "%%":
                parts.append("%")
                continue
            name = match.group(1)
            var = VAR_ALIASES.get(name or "") if name is not None else None
            if var is None and name is not None:
                var = next((v for v in Var if v.value == name), None)
            if var is None:
                known = ", ".join(f"%[{v.value}]" for v in Var)
                what = f"%[{name}]" if name is not None else "a lone '%' (write %% for one)"
                self.problem(entry.value, entry.path, f"{what} is unknown; known: {known}")
                return None
            parts.append(var)
        parts.append(text[position:])
        return Template(tuple(part for part in parts if part != ""))


def _ipv6(text: str) -> str | None:
    try:
        return f"[{ipaddress.IPv6Address(text.removeprefix('[').removesuffix(']'))}]"
    except ValueError:
        return None


_PRIMITIVE_READERS: dict[str, Callable[[ConditionReader, Entry], Condition | None]] = {
    key: getattr(ConditionReader, f"_{key}") for key in PRIMITIVES
}
_KEYS_TEXT = ", ".join(CONDITION_KEYS)
