"""HAProxy ACLs and ``if``/``unless`` expressions as lbproxy conditions.

An ACL line is ``acl NAME FETCH[,converter] [flags] VALUE...``; its values are or-ed, and lines
with the same name are or-ed too. What cannot be expressed comes back as ``Unsupported`` with the
reason, and every directive that uses it is reported rather than carried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .conditions import ALWAYS, NEVER, Condition, all_of, any_of, negate


class Unsupported(Exception):
    """A fetch, match method or flag lbproxy's conditions do not have."""


@dataclass(frozen=True, slots=True)
class Context:
    """What is known of the virtual server when importing: ``ssl_fc`` is a constant when every
    bind is TLS (True) or none is (False)."""

    ssl: bool | None


PREDEFINED: dict[str, Condition] = {
    "TRUE": ALWAYS,
    "FALSE": NEVER,
    "HTTP": ALWAYS,
    "HTTP_1.0": NEVER,
    "HTTP_1.1": ALWAYS,
    "METH_CONNECT": {"method": ["CONNECT"]},
    "METH_DELETE": {"method": ["DELETE"]},
    "METH_GET": {"method": ["GET", "HEAD"]},
    "METH_HEAD": {"method": ["HEAD"]},
    "METH_OPTIONS": {"method": ["OPTIONS"]},
    "METH_POST": {"method": ["POST"]},
    "METH_PUT": {"method": ["PUT"]},
    "METH_TRACE": {"method": ["TRACE"]},
    "LOCALHOST": {"src": ["127.0.0.1/8", "::1"]},
    "HTTP_URL_SLASH": {"path_prefix": "/"},
}

# Match methods implied by a fetch's name (HAProxy's path_beg is path -m beg, and so on).
_SUFFIX_METHODS = {
    "beg": "beg",
    "end": "end",
    "reg": "reg",
    "sub": "sub",
    "dir": "dir",
    "dom": "dom",
    "len": "len",
    "cnt": "cnt",
    "found": "found",
}
_FLAGS_WITH_ARG = {"-m", "-f", "-M"}
_FETCH_RE = re.compile(r"([a-z0-9_.]+)(?:\(([^)]*)\))?((?:,[a-z0-9_]+(?:\([^)]*\))?)*)$")


def _split_fetch(text: str) -> tuple[str, str | None, list[str]]:
    match = _FETCH_RE.fullmatch(text)
    if match is None:
        raise Unsupported(f"cannot read the fetch {text!r}")
    converters = [c for c in match.group(3).split(",") if c]
    return match.group(1), match.group(2), converters


def _regex(values: list[str], icase: bool) -> str:
    joined = values[0] if len(values) == 1 else "|".join(f"(?:{v})" for v in values)
    pattern = f"(?i){joined}" if icase else joined
    try:
        re.compile(pattern)
    except re.error as error:
        raise Unsupported(
            f"{joined!r} is not a regular expression lbproxy reads: {error}"
        ) from None
    return pattern


def _literal_regex(values: list[str], method: str, icase: bool) -> str:
    escaped = [re.escape(v) for v in values]
    body = escaped[0] if len(escaped) == 1 else "(?:" + "|".join(escaped) + ")"
    pattern = {
        "beg": f"^{body}",
        "end": f"{body}$",
        "sub": body,
        "str": f"^{body}$",
        "dir": f"(?:^|/){body}(?:/|$)",
        "dom": f"(?:^|[./]){body}(?:[./:]|$)",
    }[method]
    return f"(?i){pattern}" if icase else pattern


def _path(method: str, values: list[str], icase: bool) -> Condition:
    if method == "found":
        return ALWAYS
    if icase or method in {"sub", "dir", "dom"}:
        if method == "reg":
            return {"path_regex": _regex(values, icase)}
        return {"path_regex": _literal_regex(values, method, icase)}
    key = {"str": "path", "beg": "path_prefix", "end": "path_suffix", "reg": "path_regex"}.get(
        method
    )
    if key is None:
        raise Unsupported(f"path -m {method}")
    if key == "path_regex":
        return {"path_regex": _regex(values, False)}
    return any_of([{key: v} for v in values])


def _host(method: str, values: list[str]) -> Condition:
    # The Host header's value may carry a port; lbproxy's host conditions ignore it.
    hosts = [v.lower().split(":")[0] if not v.startswith("[") else v.lower() for v in values]
    if method == "found":
        return {"header": {"name": "Host"}}
    if method == "str":
        return any_of([{"host": h} for h in hosts])
    if method == "beg":
        return any_of([{"host_prefix": h} for h in hosts])
    if method == "end":
        return any_of([{"host_suffix": h} for h in hosts])
    if method == "dom":
        return any_of([c for h in hosts for c in ({"host": h}, {"host_suffix": "." + h})])
    if method == "reg":
        return {"host_regex": _regex(values, True)}
    if method == "sub":
        return {"host_regex": _literal_regex(values, "sub", True)}
    raise Unsupported(f"hdr(host) -m {method}")


def _header(name: str, method: str, values: list[str], icase: bool) -> Condition:
    if method == "found" or (method == "cnt" and values in (["gt", "0"], ["ge", "1"])):
        return {"header": {"name": name}}
    if method == "cnt" and values in (["eq", "0"], ["lt", "1"], ["le", "0"]):
        return {"not": {"header": {"name": name}}}
    if method == "str" and not icase:
        return any_of([{"header": {"name": name, "value": v}} for v in values])
    if method == "reg":
        return {"header": {"name": name, "regex": _regex(values, icase)}}
    if method in {"str", "beg", "end", "sub", "dom", "dir"}:
        return {"header": {"name": name, "regex": _literal_regex(values, method, icase)}}
    raise Unsupported(f"hdr({name}) -m {method}")


def fetch_condition(words: list[str], ctx: Context) -> Condition:
    """One ACL's fetch, flags and values (the words after ``acl NAME``, or inside ``{ }``)."""
    if not words:
        raise Unsupported("empty condition")
    fetch, arg, converters = _split_fetch(words[0])
    icase = False
    method: str | None = None
    values: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        if word == "--":
            values += words[i + 1 :]
            break
        if word == "-i":
            icase = True
        elif word == "-m" and i + 1 < len(words):
            method = words[i + 1]
            i += 1
        elif word == "-f":
            raise Unsupported("values read from a file (-f): write them into the YAML")
        elif word in _FLAGS_WITH_ARG:
            raise Unsupported(f"flag {word}")
        elif word in {"-n", "-u"}:
            pass
        else:
            values.append(word)
        i += 1
    for conv in converters:
        if conv == "lower":
            icase = True
        elif conv.startswith("field(") or conv.startswith("word("):
            raise Unsupported(f"converter {conv}")
        else:
            raise Unsupported(f"converter {conv}")
    base = fetch.removeprefix("req.").removeprefix("request.")
    implied = None
    for suffix in _SUFFIX_METHODS:
        if base.endswith("_" + suffix):
            implied = _SUFFIX_METHODS[suffix]
            base = base[: -len(suffix) - 1]
            break
    method = method or implied or ("reg" if base.endswith("_reg") else "str")
    if method == "found" and values:
        raise Unsupported("-m found with values")
    if "" in values:
        raise Unsupported(f"{words[0]} with an empty value (an unset environment variable?)")
    if not values and method not in {"found"}:
        if base in {"ssl_fc"}:
            if ctx.ssl is None:
                raise Unsupported(
                    "ssl_fc on a virtual server with both plain and TLS binds (lbproxy's "
                    "conditions cannot test TLS)"
                )
            return ALWAYS if ctx.ssl else NEVER
        if base in {"always_true"}:
            return ALWAYS
        if base in {"always_false"}:
            return NEVER
        if base in {"hdr", "fhdr", "hdr_cnt"} and arg:
            return {"header": {"name": arg}}
        if base in {"urlp", "url_param"} and arg:
            return {"query": {"name": arg}}
        raise Unsupported(f"{words[0]} without a value")
    if base == "path" or (base in {"url", "base"} and method in {"beg"} and base == "url"):
        return _path(method, values, icase)
    if base in {"url"} and method in {"reg", "sub", "end", "str"}:
        # The URL includes the query string; lbproxy's path conditions look at the path only.
        raise Unsupported(f"{words[0]}: the URL with its query string (use path conditions)")
    if base in {"hdr", "fhdr"} and arg:
        name = arg.split(",")[0]
        if name.lower() == "host":
            return _host(method, values)
        return _header(name, method, values, icase)
    if base == "hdr_cnt" and arg:
        return _header(arg, "cnt", values, icase)
    if base == "src" and method == "str":
        return {"src": values}
    if base == "method":
        return {"method": [v.upper() for v in values]}
    if base in {"urlp", "url_param"} and arg and method == "str":
        return any_of([{"query": {"name": arg, "value": v}} for v in values])
    if base == "ssl_fc_sni" or base == "ssl_sni":
        return _host(method, values)
    raise Unsupported(f"{words[0]}" + (f" -m {method}" if method not in {"str", implied} else ""))


@dataclass(slots=True)
class AclTable:
    """The named ACLs of one proxy (its own ``acl`` lines, in order)."""

    entries: dict[str, list[Condition | Unsupported]]

    def condition(self, name: str) -> Condition:
        if name in self.entries:
            parts = self.entries[name]
            for part in parts:
                if isinstance(part, Unsupported):
                    raise Unsupported(f"acl {name}: {part}")
            return any_of(list(parts))
        if name in PREDEFINED:
            return PREDEFINED[name]
        raise Unsupported(f"no acl named {name!r}")


def parse_expression(words: list[str], acls: AclTable, ctx: Context, use_names: bool) -> Condition:
    """``if``/``unless`` words: terms and-ed, ``or``/``||`` between groups, ``!`` negates.

    With ``use_names``, named ACLs stay names (the virtual server's ``acls:``); else they are
    inlined (used for folding constants).
    """
    if not words:
        raise Unsupported("if/unless without a condition")
    keyword, rest = words[0], list(words[1:])
    groups: list[list[Condition]] = [[]]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in {"or", "||"}:
            groups.append([])
            i += 1
            continue
        negated = False
        while word.startswith("!"):
            negated = not negated
            word = word[1:]
            if not word:
                i += 1
                if i >= len(rest):
                    raise Unsupported("'!' at the end of the condition")
                word = rest[i]
        if word == "{":
            end = rest.index("}", i) if "}" in rest[i:] else -1
            if end < 0:
                raise Unsupported("'{' without '}'")
            cond = fetch_condition(rest[i + 1 : end], ctx)
            i = end + 1
        else:
            inlined = acls.condition(word)  # raises Unsupported for what cannot be expressed
            cond = (
                word
                if use_names and word in acls.entries and inlined not in (ALWAYS, NEVER)
                else inlined
            )
            i += 1
        groups[-1].append(negate(cond) if negated else cond)
    cond = any_of([all_of(group) for group in groups])
    if keyword == "unless":
        cond = negate(cond)
    return cond


def split_condition(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """A directive's words before ``if``/``unless``, and the condition words (with the keyword)."""
    for i, word in enumerate(words):
        if word in {"if", "unless"}:
            return list(words[:i]), list(words[i:])
    return list(words), []
