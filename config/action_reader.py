"""Reading a virtual server's request policy: ``request_headers``, ``response_headers``,
``redirects``, ``deny``, ``methods`` or ``xhttp``, ``limits.max_body`` and ``error_pages``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from yaml.nodes import MappingNode, Node, ScalarNode

from .actions import (
    DEFAULT_DENY_STATUS,
    DEFAULT_REDIRECT_CODE,
    XHTTP_LEVELS,
    Deny,
    ErrorPage,
    HeaderAction,
    HeaderRule,
    Redirect,
    RedirectKind,
    RequestPolicy,
    xhttp_methods,
)
from .condition_reader import Acls, ConditionReader
from .conditions import Condition, Template
from .error_pages import read_error_page
from .model import REDIRECT_CODES
from .nodes import Entry, Mapping

POLICY_KEYS = (
    "acls",
    "request_headers",
    "response_headers",
    "redirects",
    "deny",
    "methods",
    "xhttp",
    "error_pages",
    "limits",
)
HEADER_RULE_ACTIONS = tuple(action.value for action in HeaderAction)
REPLACE_KEYS = ("name", "match", "with")
REDIRECT_KINDS = tuple(kind.value for kind in RedirectKind)
REDIRECT_RULE_KEYS = ("if", "code", "drop_query", *REDIRECT_KINDS)
DENY_KEYS = ("if", "status")
LIMITS_KEYS = ("max_body", "max_connections")  # max_connections: loader.max_connections

# Fields a header rule may not touch: the framing and what h11 tracks on each side (Host,
# Expect, Upgrade) and the hop-by-hop fields lbproxy removes anyway (docs/configuration.md,
# "Header rules").
REFUSED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "host",
        "expect",
        "upgrade",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "http2-settings",
    }
)
_SIZE_RE = re.compile(r"([0-9]+)\s*([kmg]?)b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
T = TypeVar("T")


class ActionReader(ConditionReader):
    def policy(self, m: Mapping) -> tuple[Acls | None, RequestPolicy | None]:
        """The acls (for the routing rules too) and the request policy of a virtual server."""
        acls = self.acls(m.get("acls"))
        if acls is None:
            return None, None
        request_headers = self.header_rules(m.get("request_headers"), acls)
        response_headers = self.header_rules(m.get("response_headers"), acls)
        redirects = self.listed(m.get("redirects"), acls, self.redirect)
        deny = self.listed(m.get("deny"), acls, self.deny_rule)
        methods = self.allowed_methods(m.get("methods"), m.get("xhttp"))
        max_body = self.limits(m.get("limits"))
        pages = self.error_pages(m.get("error_pages"))
        if (
            request_headers is None
            or response_headers is None
            or redirects is None
            or deny is None
            or isinstance(methods, bool)
            or isinstance(max_body, bool)
            or pages is None
        ):
            return acls, None
        return acls, RequestPolicy(
            methods=methods,
            deny=deny,
            redirects=redirects,
            max_body=max_body,
            request_headers=request_headers,
            response_headers=response_headers,
            error_pages=pages,
        )

    def listed(
        self, entry: Entry | None, acls: Acls, read: Callable[[Node, str, Acls], T | None]
    ) -> tuple[T, ...] | None:
        if entry is None:
            return ()
        items = self.sequence(entry.value, entry.path)
        if items is None:
            return None
        values = [read(item, f"{entry.path}[{i}]", acls) for i, item in enumerate(items)]
        kept = tuple(value for value in values if value is not None)
        return kept if len(kept) == len(values) else None

    def one_of(
        self, m: Mapping | None, node: Node, path: str, keys: tuple[str, ...]
    ) -> Entry | None:
        """The one entry of ``m`` among ``keys``; a problem unless there is exactly one."""
        if m is None:
            return None
        present = [entry for key in keys if (entry := m.get(key)) is not None]
        if len(present) != 1:
            self.problem(node, path, "give exactly one of: " + ", ".join(keys))
            return None
        return present[0]

    # -- header rules -------------------------------------------------------------------------

    def header_rules(self, entry: Entry | None, acls: Acls) -> tuple[HeaderRule, ...] | None:
        """Each item: ``{set|add: {Name: value}, if: c}``, ``{delete: Name, if: c}`` or
        ``{replace: {name: N, match: regex, with: replacement}, if: c}``."""
        groups = self.listed(entry, acls, self.header_rule_group)
        return None if groups is None else tuple(rule for group in groups for rule in group)

    def header_rule_group(self, node: Node, path: str, acls: Acls) -> tuple[HeaderRule, ...] | None:
        m = self.mapping(node, path, (*HEADER_RULE_ACTIONS, "if"))
        entry = self.one_of(m, node, path, HEADER_RULE_ACTIONS)
        if m is None or entry is None:
            return None
        ok, condition = self.opt_condition(m.get("if"), acls)
        action = HeaderAction(entry.key.value)
        rules: list[HeaderRule] | None
        if action is HeaderAction.DELETE:
            name = self.header_name(entry)
            rules = None if name is None else [HeaderRule(action, name, condition=condition)]
        elif action is HeaderAction.REPLACE:
            rule = self.replace_rule(entry, condition)
            rules = None if rule is None else [rule]
        else:
            rules = self.set_or_add(entry, action, condition)
        return tuple(rules) if ok and rules is not None else None

    def header_name(self, entry: Entry) -> bytes | None:
        name = self.token(entry, None)
        if name is None:
            return None
        if name.lower() in REFUSED_HEADERS:
            self.problem(
                entry.value,
                entry.path,
                f"{name} may not be changed by a header rule: lbproxy keeps the framing and "
                "the connection's own fields itself",
            )
            return None
        return name.lower().encode("ascii")

    def set_or_add(
        self, entry: Entry, action: HeaderAction, condition: Condition | None
    ) -> list[HeaderRule] | None:
        m = self.mapping(entry.value, entry.path, None)
        if m is None:
            return None
        if not m.entries:
            self.problem(entry.value, entry.path, "give at least one {Name: value}")
            return None
        rules: list[HeaderRule] = []
        for item in m:
            name = self.header_name(Entry(item.key, item.key, item.path))
            value = self.header_value(item)
            if name is not None and value is not None:
                rules.append(HeaderRule(action, name, value, condition=condition))
        return rules if len(rules) == len(m.entries) else None

    def header_value(self, entry: Entry) -> Template | None:
        value = self.template(entry)
        literal = value.literal if value is not None else None
        if literal is not None and literal != literal.strip(" \t"):
            self.problem(
                entry.value, entry.path, "a header value must not start or end with spaces"
            )
            return None
        return value

    def replace_rule(self, entry: Entry, condition: Condition | None) -> HeaderRule | None:
        m = self.mapping(entry.value, entry.path, REPLACE_KEYS, required=REPLACE_KEYS)
        if m is None:
            return None
        name_entry, match_entry, with_entry = (m.get(key) for key in REPLACE_KEYS)
        if name_entry is None or match_entry is None or with_entry is None:
            return None
        name = self.header_name(name_entry)
        pattern = self.bytes_regex(match_entry)
        replacement = self.template(with_entry)
        if name is None or pattern is None or replacement is None:
            return None
        literals = [part.encode("latin-1") for part in replacement.parts if isinstance(part, str)]
        try:  # parses the replacement's \1 and \g<name> now, not at the first request
            for literal in literals:
                pattern.sub(literal, b"")
        except re.error as exc:
            self.problem(with_entry.value, with_entry.path, f"invalid replacement: {exc}")
            return None
        return HeaderRule(HeaderAction.REPLACE, name, replacement, pattern, condition)

    # -- redirects and deny -------------------------------------------------------------------

    def redirect(self, node: Node, path: str, acls: Acls) -> Redirect | None:
        m = self.mapping(node, path, REDIRECT_RULE_KEYS)
        entry = self.one_of(m, node, path, REDIRECT_KINDS)
        if m is None or entry is None:
            return None
        ok, condition = self.opt_condition(m.get("if"), acls)
        kind = RedirectKind(entry.key.value)
        value = self.template(entry, allow_empty=False)
        literal = value.literal if value is not None else None
        if (
            kind is RedirectKind.SCHEME
            and literal is not None
            and not _SCHEME_RE.fullmatch(literal)
        ):
            self.problem(entry.value, entry.path, f"{literal!r} is not a URL scheme like https")
            return None
        if value is not None and any(
            c in "".join(p for p in value.parts if isinstance(p, str)) for c in " \t"
        ):
            self.problem(entry.value, entry.path, "a Location must contain no spaces")
            return None
        code = self.status_in(m.get("code"), REDIRECT_CODES, DEFAULT_REDIRECT_CODE)
        drop_query = self.opt_bool(m.get("drop_query"), False)
        if not ok or value is None or code is None or drop_query is None:
            return None
        return Redirect(kind, value, code, drop_query, condition)

    def deny_rule(self, node: Node, path: str, acls: Acls) -> Deny | None:
        m = self.mapping(node, path, DENY_KEYS)
        if m is None:
            return None
        ok, condition = self.opt_condition(m.get("if"), acls)
        status_entry = m.get("status")
        status = DEFAULT_DENY_STATUS
        if status_entry is not None:
            status = self.integer(status_entry.value, status_entry.path, 400, 599) or 0
        return Deny(condition, status) if ok and status else None

    def status_in(self, entry: Entry | None, allowed: tuple[int, ...], default: int) -> int | None:
        if entry is None:
            return default
        code = self.integer(entry.value, entry.path, 0)
        if code is not None and code not in allowed:
            self.problem(
                entry.value, entry.path, f"{code} is not one of: " + ", ".join(map(str, allowed))
            )
            return None
        return code

    # -- methods, limits, error pages ---------------------------------------------------------

    def allowed_methods(
        self, methods_entry: Entry | None, xhttp_entry: Entry | None
    ) -> frozenset[bytes] | bool | None:
        """The allowed methods, None for all, False after a problem."""
        if methods_entry is not None and xhttp_entry is not None:
            self.problem(xhttp_entry.key, xhttp_entry.path, "give methods or xhttp, not both")
            return False
        if xhttp_entry is not None:
            level = self.integer(xhttp_entry.value, xhttp_entry.path, 0, len(XHTTP_LEVELS) - 1)
            return False if level is None else xhttp_methods(level)
        if methods_entry is not None:
            methods = self.methods(methods_entry)
            return False if methods is None else methods
        return None

    def limits(self, entry: Entry | None) -> int | bool | None:
        """``limits: {max_body: 10m}``: bytes, None for unlimited, False after a problem."""
        if entry is None:
            return None
        m = self.mapping(entry.value, entry.path, LIMITS_KEYS)
        if m is None:
            return False
        body_entry = m.get("max_body")
        if body_entry is None:
            return None
        node = body_entry.value
        text = node.value if isinstance(node, ScalarNode) else ""
        match = _SIZE_RE.fullmatch(text.strip())
        if match is None or not isinstance(node, ScalarNode):
            self.problem(
                node, body_entry.path, f"expected a size like 1048576, 512k or 10m, got {text!r}"
            )
            return False
        return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]

    def error_pages(self, entry: Entry | None) -> dict[int, ErrorPage] | None:
        """``error_pages: {503: FILE}``, each file read now (HAProxy errorfile, Pound
        ErrorFile)."""
        pages: dict[int, ErrorPage] = {}
        if entry is None:
            return pages
        if not isinstance(entry.value, MappingNode):
            self.problem(entry.value, entry.path, "expected a mapping of status: file")
            return None
        failed = False
        for key_node, value_node in entry.value.value:
            path = f"{entry.path}.{key_node.value}"
            status = self.integer(key_node, path, 400, 599)
            file = self.path_value(Entry(key_node, value_node, path), None)
            if status is None or file is None:
                failed = True
                continue
            try:
                pages[status] = read_error_page(file, status)
            except ValueError as exc:
                self.problem(value_node, path, str(exc))
                failed = True
        return None if failed else pages
