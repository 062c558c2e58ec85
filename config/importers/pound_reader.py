"""pound.cfg (Pound 2.x and 4.x) as a tree of directives.

Keywords are case-insensitive; strings are double-quoted with backslash escapes; ``#`` starts a
comment outside quotes; blocks end with ``End``. ``Include "file"`` is read in place (relative
to the including file's folder, or to ``IncludeDir``), recursively, at most ``MAX_INCLUDE_DEPTH``
deep.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .report import Report, Where

MAX_INCLUDE_DEPTH = 16  # Pound itself allows deep nesting; a loop must still end
BLOCKS = frozenset(
    {
        "listenhttp",
        "listenhttps",
        "service",
        "backend",
        "emergency",
        "session",
        "match",
        "rewrite",
        "resolver",
        "combineheaders",
        "else",
    }
)
# Keywords that open a block only without arguments (with one, they name something).
BLOCK_WITHOUT_ARGS = frozenset({"acl", "trustedip"})

ReadText = Callable[[str], str]


class PoundReadError(Exception):
    """An included file that cannot be read."""


@dataclass(slots=True)
class Directive:
    keyword: str  # lower-case
    args: list[str]
    where: Where
    name: str  # as written, for the report
    children: list[Directive] | None = None

    def find(self, keyword: str) -> list[Directive]:
        return [d for d in self.children or [] if d.keyword == keyword]

    def first(self, keyword: str) -> Directive | None:
        found = self.find(keyword)
        return found[-1] if found else None

    def arg(self, keyword: str) -> str | None:
        d = self.first(keyword)
        return d.args[0] if d is not None and d.args else None


@dataclass(slots=True)
class PoundConfig:
    top: list[Directive] = field(default_factory=list)


def split_words(raw: str) -> list[str]:
    words: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch in " \t\r":
            i += 1
        elif ch == "#":
            break
        elif ch == '"':
            i += 1
            buf: list[str] = []
            while i < n and raw[i] != '"':
                if raw[i] == "\\" and i + 1 < n:
                    buf.append(raw[i + 1])
                    i += 2
                else:
                    buf.append(raw[i])
                    i += 1
            words.append("".join(buf))
            i += 1
        else:
            j = i
            while j < n and raw[j] not in ' \t\r#"':
                j += 1
            words.append(raw[i:j])
            i = j
    return words


def _lines(
    path: str, read_text: ReadText, report: Report, depth: int, include_dir: list[str]
) -> list[tuple[Where, list[str]]]:
    text = read_text(path)
    out: list[tuple[Where, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        words = split_words(raw)
        if not words:
            continue
        where = Where(path, number)
        key = words[0].lower()
        if key == "includedir" and len(words) > 1:
            include_dir[:] = [words[1]]
            continue
        if key == "include" and len(words) > 1:
            target = words[1]
            if not os.path.isabs(target):
                base = include_dir[0] if include_dir else os.path.dirname(path)
                target = os.path.join(base, target)
            if depth >= MAX_INCLUDE_DEPTH:
                report.add(
                    where, "Include", f"more than {MAX_INCLUDE_DEPTH} nested includes: a loop?"
                )
                continue
            try:
                out += _lines(target, read_text, report, depth + 1, include_dir)
            except (OSError, UnicodeDecodeError) as error:
                # Pound would refuse to start; the rest of the file is still worth importing.
                report.add(
                    where,
                    f"Include {target}",
                    f"{_cause(error)}: its directives were not read / import on the machine that "
                    f"has it",
                )
            continue
        out.append((where, words))
    return out


def _cause(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return "not UTF-8 text"


def read(path: str, read_text: ReadText, report: Report) -> PoundConfig:
    """The directive tree; raises OSError/UnicodeDecodeError for the main file,
    PoundReadError for an include."""
    lines = _lines(path, read_text, report, 0, [])
    root = Directive("", [], Where(path, 0), "", [])
    stack = [root]
    for where, words in lines:
        key = words[0].lower()
        if key == "end":
            if len(stack) > 1:
                stack.pop()
            else:
                report.add(where, "End", "an End without a block; Pound refuses it", traffic=False)
            continue
        if key == "else" and len(stack) > 1:
            # Rewrite ... Else ... End: the Else part is a sibling block of the same Rewrite.
            stack.pop()
        directive = Directive(key, words[1:], where, words[0])
        parent_children = stack[-1].children
        assert parent_children is not None
        parent_children.append(directive)
        # ``ACL "name"`` at the top defines a list of networks; inside a Service it names one.
        opens = key in BLOCKS or (key in BLOCK_WITHOUT_ARGS and not words[1:])
        opens = opens or (key == "acl" and len(stack) == 1)
        if opens:
            directive.children = []
            stack.append(directive)
    if len(stack) > 1:
        report.add(
            stack[-1].where,
            stack[-1].name,
            "block without End (Pound refuses the file); read to the end of the file",
            traffic=False,
        )
    return PoundConfig(root.children or [])
