"""Header rules (``request_headers``, ``response_headers``) and ``%[...]`` value templates, as
pure functions over h11's header lists (lower-case names, bytes values).

The loader refused every name that frames a message or that h11 tracks, and checked the
literal text of each value; what a template adds (addresses, ports, a server label, parts of a
request head h11 accepted) holds no CR, LF or NUL either, so the results can be spliced as they
are (request_writer, response_writer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from config.actions import HeaderAction, HeaderRule
from config.conditions import Template, Var

from .matching import RequestView, matches

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Values:
    """What the variables of one request stand for; ``server`` once a server is chosen."""

    view: RequestView
    server: str = ""

    def get(self, var: Var) -> str:
        view, client = self.view, self.view.client
        if var is Var.SRC:
            return client.ip
        if var is Var.SRC_PORT:
            return str(client.port)
        if var is Var.DST:
            return client.local_ip
        if var is Var.DST_PORT:
            return str(client.local_port)
        if var is Var.SSL_FC:
            return "1" if client.tls else "0"
        if var is Var.SRV_NAME:
            return self.server
        if var is Var.HOST:
            return view.host_header.decode("latin-1")
        if var is Var.PATH:
            return view.path
        if var is Var.QUERY:
            return view.query_string.decode("latin-1")
        if var is Var.METHOD:
            return view.method.decode("latin-1")
        return view.target.decode("latin-1")  # Var.URL


def expand(template: Template, values: Values) -> bytes:
    return "".join(
        part if isinstance(part, str) else values.get(part) for part in template.parts
    ).encode("latin-1")


def applicable(rules: Sequence[HeaderRule], view: RequestView) -> tuple[HeaderRule, ...]:
    """The rules whose condition this request meets, in order."""
    return tuple(rule for rule in rules if rule.condition is None or matches(rule.condition, view))


def apply_rules(headers: Headers, rules: Sequence[HeaderRule], values: Values) -> Headers:
    """``headers`` after ``rules`` (already filtered by ``applicable``), in declaration order
    like HAProxy's http-request/http-response rules."""
    out = headers
    for rule in rules:
        name = rule.name
        if rule.action is HeaderAction.DELETE:
            out = [item for item in out if item[0] != name]
        elif rule.action is HeaderAction.REPLACE:
            assert rule.pattern is not None and rule.value is not None
            out = [
                (key, _replace(rule.pattern, rule.value, value, values) if key == name else value)
                for key, value in out
            ]
        else:
            assert rule.value is not None
            if rule.action is HeaderAction.SET:
                out = [item for item in out if item[0] != name]
            elif out is headers:
                out = list(headers)
            out.append((name, expand(rule.value, values)))
    return out


@dataclass(frozen=True, slots=True)
class Edits:
    """Rules already chosen for one request, and their values: what a response gets."""

    rules: tuple[HeaderRule, ...]
    values: Values

    def apply(self, headers: Headers) -> Headers:
        return apply_rules(headers, self.rules, self.values)


def _replace(
    pattern: re.Pattern[bytes], replacement: Template, value: bytes, values: Values
) -> bytes:
    """The first match of ``pattern`` in ``value`` replaced; ``\\1`` in the literal text of
    ``replacement`` is a group, variables are inserted as they are."""

    def substitute(match: re.Match[bytes]) -> bytes:
        return b"".join(
            match.expand(part.encode("latin-1"))
            if isinstance(part, str)
            else values.get(part).encode("latin-1")
            for part in replacement.parts
        )

    return pattern.sub(substitute, value, count=1).strip(b" \t")
