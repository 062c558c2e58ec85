"""haproxy.cfg as sections of tokenised lines, the way HAProxy's own line parser reads them.

Quotes, backslash escapes, ``#`` comments (also glued to a word: ``check#note``), environment
variables (``$VAR``, ``${VAR}``, ``${VAR-default}``; not inside single quotes), a missing final
newline, CRLF line ends. ``defaults`` sections, named or not, are resolved for each proxy section
(``frontend x from NAME`` or the last ``defaults`` above it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .report import Report, Where

SECTION_KEYWORDS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "userlist",
        "peers",
        "resolvers",
        "mailers",
        "program",
        "http-errors",
        "ring",
        "cache",
        "fcgi-app",
        "log-forward",
        "crt-store",
        "traces",
        "acme",
    }
)
PROXY_KINDS = frozenset({"frontend", "backend", "listen"})
_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class Line:
    where: Where
    words: tuple[str, ...]

    @property
    def keyword(self) -> str:
        return self.words[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.words[1:]

    def text(self) -> str:
        return " ".join(self.words)


@dataclass(slots=True)
class Section:
    kind: str
    name: str
    where: Where
    args: tuple[str, ...] = ()
    lines: list[Line] = field(default_factory=list)
    from_defaults: str | None = None
    inherited: list[Line] = field(default_factory=list)  # the defaults' lines, first

    @property
    def all_lines(self) -> list[Line]:
        return self.inherited + self.lines


def _expand_env(text: str, env: Mapping[str, str], missing: list[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in env:
            return env[name]
        if match.group(2) is not None:
            return match.group(2)
        missing.append(name)
        return ""

    return _ENV_RE.sub(repl, text)


def split_words(raw: str, env: Mapping[str, str], missing: list[str]) -> list[str]:
    """One line's words. Unset environment variables become empty, as in HAProxy, and their
    names are added to ``missing``."""
    words: list[str] = []
    quoted: list[bool] = []
    current: list[str] = []
    in_word = False
    was_quoted = False
    i = 0
    quote = ""
    n = len(raw)
    chunk: list[str] = []  # text that may still hold environment variables

    def flush_chunk() -> None:
        if chunk:
            current.append(_expand_env("".join(chunk), env, missing))
            chunk.clear()

    while i < n:
        ch = raw[i]
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                current.append(ch)
            i += 1
            continue
        if ch == "\\" and i + 1 < n:
            nxt = raw[i + 1]
            if nxt in " \t#\\'\"$":
                flush_chunk()
                current.append(nxt)
            elif nxt in _ESCAPES:
                flush_chunk()
                current.append(_ESCAPES[nxt])
            elif nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", raw[i + 2 : i + 4]):
                flush_chunk()
                current.append(chr(int(raw[i + 2 : i + 4], 16)))
                i += 2
            else:
                chunk.append(ch + nxt)
            in_word = True
            i += 2
            continue
        if quote == '"':
            if ch == '"':
                flush_chunk()
                quote = ""
            else:
                chunk.append(ch)
            i += 1
            continue
        if ch in "'\"":
            flush_chunk()
            quote = ch
            in_word = True
            was_quoted = True
            i += 1
            continue
        if ch == "#":
            break
        if ch in " \t":
            flush_chunk()
            if in_word:
                words.append("".join(current))
                quoted.append(was_quoted)
                current.clear()
                in_word = False
                was_quoted = False
            i += 1
            continue
        chunk.append(ch)
        in_word = True
        i += 1
    flush_chunk()
    if in_word:
        words.append("".join(current))
        quoted.append(was_quoted)
    # An unquoted variable that expands to nothing leaves no word, as in HAProxy.
    return [w for w, q in zip(words, quoted, strict=True) if w or q]


def read(text: str, file: str, env: Mapping[str, str], report: Report) -> list[Section]:
    """The sections of one haproxy.cfg, each proxy with its defaults' lines in ``inherited``."""
    sections: list[Section] = []
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        missing: list[str] = []
        words = split_words(raw.rstrip("\r"), env, missing)
        where = Where(file, number)
        for name in missing:
            report.add(
                where,
                f"${name}",
                "the environment variable is not set here, so it was read as empty (as HAProxy "
                "does) / set it when importing, or edit the value in the YAML",
                traffic=False,
            )
        if not words:
            continue
        if words[0] in SECTION_KEYWORDS:
            kind = words[0]
            rest = words[1:]
            from_name = None
            if "from" in rest:
                index = rest.index("from")
                from_name = rest[index + 1] if index + 1 < len(rest) else None
                rest = rest[:index] + rest[index + 2 :]
            name = rest[0] if rest and kind != "global" else ""
            current = Section(kind, name, where, tuple(rest[1:]), from_defaults=from_name)
            sections.append(current)
            continue
        if current is None:
            report.add(
                where, words[0], "outside any section; HAProxy refuses this line", traffic=False
            )
            continue
        current.lines.append(Line(where, tuple(words)))
    _inherit(sections, report)
    return sections


def _inherit(sections: list[Section], report: Report) -> None:
    named: dict[str, Section] = {}
    last: Section | None = None
    for section in sections:
        if section.kind not in PROXY_KINDS and section.kind != "defaults":
            continue
        # A defaults section starts afresh unless it names one with `from` (HAProxy resets them).
        parent = None if section.kind == "defaults" else last
        if section.from_defaults is not None:
            parent = named.get(section.from_defaults)
            if parent is None:
                report.add(
                    section.where,
                    f"from {section.from_defaults}",
                    "no defaults section of that name above this line; HAProxy refuses it",
                )
        if parent is not None:
            section.inherited = parent.all_lines
        if section.kind == "defaults":
            if section.name:
                named[section.name] = section
            last = section
