"""One import: read haproxy.cfg and/or pound.cfg, translate, fold the appliance pair, write YAML.

Exit status (``ImportResult.status``): 0 when every directive that changes traffic was carried,
1 when one was not (the YAML is still written), 2 when a file cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import haproxy_reader, pound_reader
from .haproxy_translate import HaproxyTranslator
from .pound_translate import PoundTranslator
from .report import Report, Where
from .result import Translation, VirtualServerOut
from .yaml_writer import Commented, dump

EXIT_CARRIED = 0
EXIT_DROPPED = 1
EXIT_UNREADABLE = 2
XHTTP_EVERY_POUND_METHOD = 3  # Pound 4's highest xHTTP level: every method it knows


@dataclass(slots=True)
class ImportResult:
    status: int
    yaml_text: str | None = None
    report: list[str] = field(default_factory=list)
    error: str | None = None  # why a file could not be read


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _cause(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def import_configs(
    haproxy: str | None,
    pound: str | None,
    env: Mapping[str, str] | None = None,
    read_text: Callable[[str], str] = _read_text,
    exists: Callable[[str], bool] = os.path.exists,
) -> ImportResult:
    """Translate the files named; ``env`` expands HAProxy's ``$VARS`` (the process environment
    when None); ``exists`` says whether a certificate, CA or error file named in them is here."""
    report = Report()
    environment = os.environ if env is None else env
    translations: list[Translation] = []
    haproxy_out: Translation | None = None
    pound_out: Translation | None = None
    if haproxy is not None:
        try:
            text = read_text(haproxy)
        except (OSError, UnicodeDecodeError) as error:
            return ImportResult(EXIT_UNREADABLE, error=f"{haproxy}: cannot read: {_cause(error)}")
        sections = haproxy_reader.read(text, haproxy, environment, report)
        haproxy_out = HaproxyTranslator(sections, report, exists).translate()
        translations.append(haproxy_out)
    if pound is not None:
        try:
            tree = pound_reader.read(pound, read_text, report)
        except (OSError, UnicodeDecodeError) as error:
            return ImportResult(EXIT_UNREADABLE, error=f"{pound}: cannot read: {_cause(error)}")
        except pound_reader.PoundReadError as error:
            return ImportResult(EXIT_UNREADABLE, error=str(error))
        labels = {vs.data["label"] for vs in haproxy_out.virtual_servers} if haproxy_out else set()
        pools = set(haproxy_out.pools) if haproxy_out else set()
        pound_out = PoundTranslator(tree, report, exists, labels, pools).translate()
        translations.append(pound_out)
    if haproxy_out is not None and pound_out is not None:
        fold_appliance(haproxy_out, pound_out, report)
    document = assemble(translations, report)
    status = EXIT_DROPPED if report.dropped_traffic else EXIT_CARRIED
    if not document["virtual_servers"]:
        where = Where(haproxy or pound or "-", 0)
        report.add(where, "(file)", "no HTTP proxy to carry, so no YAML was written")
        return ImportResult(EXIT_DROPPED, None, report.lines())
    sources = " and ".join(p for p in (haproxy, pound) if p)
    header = (
        f"lbproxy configuration imported from {sources} by `lbproxy import`.\n"
        "Each virtual server, pool and rule names the line it came from. Directives that were\n"
        "not carried are listed in the import report; see docs/migration.md."
    )
    return ImportResult(status, dump(document, header), report.lines())


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _listens_on(binds: Any, target: str) -> bool:
    """Whether an HAProxy virtual server's plain binds accept a connection to ``target``."""
    host, port = _host_port(target)
    for bind in binds if isinstance(binds, list) else [binds]:
        if isinstance(bind, dict):
            if "tls" in bind:
                continue
            bind = bind["address"]
        bhost, bport = _host_port(bind)
        if bport != port:
            continue
        if bhost in {"0.0.0.0", "::"} or bhost == host:
            return True
        if host in {"localhost", "127.0.0.1"} and bhost.startswith("127."):
            return True
    return False


def fold_appliance(haproxy: Translation, pound: Translation, report: Report) -> None:
    """Pound's listeners that pass every request to an HAProxy virtual server become binds of
    that virtual server: TLS is terminated once, and the real servers see the client's address
    once in X-Forwarded-For instead of Pound's."""
    kept: list[VirtualServerOut] = []
    for listener in pound.virtual_servers:
        targets = listener.forwards_to or []
        matches = [
            vs
            for vs in haproxy.virtual_servers
            if targets and all(_listens_on(vs.data["bind"], t) for t in targets)
        ]
        if not matches:
            kept.append(listener)
            continue
        vs = matches[0]
        binds = vs.data["bind"] if isinstance(vs.data["bind"], list) else [vs.data["bind"]]
        binds.append(listener.data["bind"])
        vs.data["bind"] = binds
        vs.comment += f"\n+ {listener.comment}: forwarded to this virtual server; now a bind of it"
        for key in ("request_headers", "error_pages", "limits", "deny"):
            if key in listener.data:
                if key == "error_pages" or key == "limits":
                    vs.data.setdefault(key, {}).update(listener.data[key])
                else:
                    vs.data.setdefault(key, []).extend(listener.data[key])
        if "xhttp" in listener.data and "xhttp" not in vs.data and "methods" not in vs.data:
            level = listener.data["xhttp"]
            vs.data["xhttp"] = level
            report.add(
                listener.xhttp_where or Where("-", 0),
                "xHTTP",
                f"Pound allowed only the methods of xHTTP {level} over HTTPS; lbproxy applies "
                f"that to the plain binds too, where HAProxy allowed every method / raise "
                f"xhttp or list methods",
                # From level 3 on, only methods Pound knows nothing of are refused.
                traffic=level < XHTTP_EVERY_POUND_METHOD,
            )
        if "rewrite_location" in listener.data and listener.data["rewrite_location"] is False:
            vs.data["rewrite_location"] = False
    pound.virtual_servers = kept


_VS_ORDER = (
    "label",
    "bind",
    "acls",
    "forwardfor",
    "timeouts",
    "limits",
    "methods",
    "xhttp",
    "redirect_to_https",
    "redirects",
    "deny",
    "request_headers",
    "response_headers",
    "error_pages",
    "rewrite_location",
    "balance",
    "persistence",
    "health_check",
    "retries",
    "fallback",
    "fallback_mode",
    "real_servers",
    "rules",
)


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    """The virtual server's keys in the order of docs/configuration.md: where it listens, what it
    does to requests, its pool, then its rules."""
    rank = {key: i for i, key in enumerate(_VS_ORDER)}
    return dict(sorted(data.items(), key=lambda item: rank.get(item[0], len(rank))))


def assemble(translations: list[Translation], report: Report) -> dict[str, Any]:
    document: dict[str, Any] = {}
    global_: dict[str, Any] = {}
    for t in translations:
        for key, value in t.global_.items():
            if key == "log":
                global_.setdefault("log", []).extend(
                    v for v in value if v not in global_.get("log", [])
                )
            else:
                global_.setdefault(key, value)
    if "group" in global_ and "user" not in global_:
        del global_["group"]  # lbproxy drops privileges to a user; a group alone means nothing
    if global_:
        document["global"] = global_
    servers: list[Any] = []
    for t in translations:
        for vs in t.virtual_servers:
            data = _ordered(vs.data)
            if "rules" in data and vs.rule_comments:
                data["rules"] = [
                    Commented(rule, comment)
                    for rule, comment in zip(data["rules"], vs.rule_comments, strict=False)
                ]
            servers.append(Commented(data, vs.comment))
    document["virtual_servers"] = servers
    pools: dict[str, Any] = {}
    for t in translations:
        for name, (pool, comment) in t.pools.items():
            pools[name] = Commented(pool, comment)
    if pools:
        document["pools"] = pools
    return document
