"""haproxy.cfg sections to lbproxy virtual servers and pools.

A ``frontend`` (or ``listen``) becomes a virtual server whose own pool is its ``default_backend``
(or the ``listen`` section's servers); backends named by ``use_backend`` become named pools. Each
directive is carried, or reported with the reason and what to do instead (report.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .conditions import ALWAYS, NEVER, Condition, all_of, negate, with_if
from .haproxy_acl import (
    AclTable,
    Context,
    Unsupported,
    fetch_condition,
    parse_expression,
    split_condition,
)
from .haproxy_reader import PROXY_KINDS, Line, Section
from .report import Report, Where
from .result import Translation, VirtualServerOut, placeholder_pool, put_nonempty
from .values import duration, haproxy_address, haproxy_ms, label, words

Exists = Callable[[str], bool]

# Directives whose effect lbproxy has by default or that only shape HAProxy's own process;
# value: None when equal by default (not reported), else the note (never traffic).
QUIET = {
    "mode http",
    "option httplog",
    "option http-server-close",
    "option redispatch",
    "option http-keep-alive",
    "log global",
    "option log-health-checks",
    "option dontlognull",
    "option splice-auto",
    "option contstats",
    "option http-buffer-request",
    "no option httpclose",
    "option abortonclose",
    "option tcp-smart-accept",
    "option tcp-smart-connect",
    "option dontlog-normal",
    "option log-separate-errors",
    "option socket-stats",
    "option nolinger",
    "option http-pretend-keepalive",
    "option http-no-delay",
    "option clitcpka",
    "option srvtcpka",
    "option tcpka",
    "option independent-streams",
    "option splice-request",
    "option splice-response",
    "no option http-server-close",
    "no option redispatch",
    "no log",
    "option httpclose",
    "option forceclose",
}
PROCESS_ONLY = words(
    """
    log log-format log-tag capture description id option maxconn declare unique-id-format
    log-format-sd error-log-format hash-type http-reuse fullconn compression email-alert
    rate-limit bind-process balance-url-param grace stats monitor monitor-net default-server
    disabled enabled load-server-state-from-file server-state-file-name http-send-name-header
    dynamic-cookie-key backlog
    """
)
GLOBAL_NOT_NEEDED = words(
    """
    daemon cpu-map chroot maxconn ulimit-n node description spread-checks
    log-send-hostname log-tag quiet master-worker noepoll nopoll nosplice uid gid stats
    ssl-server-verify insecure-fork-wanted expose-experimental-directives localpeer set-dumpable
    zero-warning strict-limits busy-polling max-spread-checks maxsslconn maxcompcpuusage
    maxpipes maxsslrate maxconnrate maxsessrate maxcomprate hard-stop-after presetenv setenv
    resetenv unsetenv server-state-base server-state-file ssl-dh-param-file lua-prepend-path
    debug external-check ssl-engine profiling.tasks cluster-secret pp2-never-send-local
    h1-case-adjust-bogus-client numa-cpu-mapping ssl-mode-async stats-file
    httpclient.resolvers.prefer
    """
)

MAX_WORKERS = 64  # the configuration's bound for global.workers

# lbproxy refuses rules on the fields that carry framing or routing (docs/configuration.md).
HEADER_FORBIDDEN = words(
    """
    content-length transfer-encoding connection host expect upgrade keep-alive te trailer
    proxy-connection proxy-authenticate proxy-authorization http2-settings
    """
)
# Health checks other than HTTP: lbproxy checks those servers with a TCP connect.
OTHER_CHECKS = words(
    "ssl-hello-chk tcp-check mysql-check pgsql-check redis-check smtpchk ldap-check external-check"
)
# The header-rule keywords, 2.x and 1.x.
HEADER_KEYWORDS = words(
    """
    http-request http-response reqadd rspadd reqdel reqidel rspdel rspidel reqrep reqirep rsprep
    rspirep
    """
)
LBPROXY_SETS = {"x-forwarded-proto", "x-forwarded-port", "x-forwarded-host"}
SAMPLE_FETCHES = words(
    """
    src src_port dst dst_port ssl_fc srv_name host hdr(host) req.hdr(host) method path query url
    base
    """
)
_FETCH_IN_FORMAT_RE = re.compile(r"%\[([^\]]*)\]")
_SERVER_ARGS = words(
    """
    weight inter fastinter downinter rise fall cookie addr port maxconn maxqueue minconn
    slowstart verify ca-file crl-file sni crt resolvers resolve-prefer init-addr id on-error
    on-marked-down on-marked-up observe error-limit agent-port agent-inter agent-send agent-addr
    track redir ssl-min-ver ssl-max-ver alpn check-alpn check-sni proto pool-max-conn
    pool-purge-delay ciphers ciphersuites namespace source usesrc socks4 ws max-reuse
    pool-low-conn tcp-ut curves sigalgs client-sigalgs hash-key shard resolve-opts resolve-net
    guid init-state check-proto log-proto set-proxy-v2-tlv-fmt idle-ping check-pool-conn-name
    pool-conn-name npn tls-tickets
    """
)
_SERVER_NOT_TRAFFIC = words(
    """
    id observe error-limit on-error on-marked-down on-marked-up slowstart init-addr resolvers
    resolve-prefer resolve-opts resolve-net agent-check agent-port agent-inter agent-send
    agent-addr fastinter downinter minconn maxqueue pool-max-conn pool-purge-delay max-reuse
    pool-low-conn tfo check-send-proxy no-agent-check non-stick guid hash-key shard log-proto
    check-alpn check-sni check-ssl no-check-ssl alpn npn no-tls-tickets allow-0rtt tcp-ut
    crl-file ws proto idle-ping init-state check-proto namespace curves sigalgs client-sigalgs
    no-sslv3 no-tlsv10 no-tlsv11 no-tlsv12 no-tlsv13 force-tlsv12 force-tlsv13 ssl-min-ver
    ssl-max-ver ciphers ciphersuites tls-tickets check-pool-conn-name pool-conn-name ssl-reuse
    no-ssl-reuse enabled no-backup no-send-proxy no-send-proxy-v2 no-ssl no-verifyhost
    verifyhost check-via-socks4
    """
)
_BIND_ARGS = words(
    """
    crt crt-list alpn npn ssl-min-ver ssl-max-ver ciphers ciphersuites ca-file verify crl-file
    name process maxconn level mode user group uid gid interface namespace curves ecdhe
    tls-ticket-keys ca-sign-file ca-sign-pass thread id backlog tcp-ut mss nice severity-output
    sigalgs client-sigalgs ca-ignore-err crt-ignore-err quic-cc-algo proto label guid-prefix
    default-crt ca-verify-file accept-netscaler-cip idle-ping shards quic-socket
    """
)
_BIND_NOT_TRAFFIC = words(
    """
    name process maxconn level mode user group uid gid interface namespace curves ecdhe
    tls-ticket-keys thread id backlog tcp-ut mss nice severity-output v4v6 v6only transparent
    defer-accept tfo no-tls-tickets prefer-client-ciphers allow-0rtt npn alpn no-sslv3 no-tlsv10
    no-tlsv11 force-tlsv12 no-ca-names sigalgs client-sigalgs label shards idle-ping ssl-max-ver
    crl-file ca-ignore-err crt-ignore-err expose-fd generate-certificates ca-sign-file
    ca-sign-pass strict-sni
    """
)


@dataclass(slots=True)
class GlobalSettings:
    crt_base: str = ""
    ca_base: str = ""
    bind_ciphers: str | None = None
    bind_ciphersuites: str | None = None
    bind_min_version: str | None = None


@dataclass(slots=True)
class Backend:
    """A backend's pool (YAML mapping) and the settings lbproxy keeps per virtual server."""

    name: str
    where: Where
    pool: dict[str, Any]
    timeouts: dict[str, str] = field(default_factory=dict)
    forwardfor: Line | None = None
    request_headers: list[dict[str, Any]] = field(default_factory=list)
    response_headers: list[dict[str, Any]] = field(default_factory=list)
    error_pages: dict[int, str] = field(default_factory=dict)
    vs_lines: list[Line] = field(default_factory=list)  # lines that need the virtual server
    servers_seen: bool = False


def _section_mode(section: Section) -> str:
    mode = ""
    for line in section.all_lines:
        if line.keyword == "mode" and line.args:
            mode = line.args[0]
    return mode


_HTTP_HINTS = words(
    """
    http-request http-response reqadd reqrep reqirep reqdel reqidel rspadd rspdel rspidel rsprep
    redirect cookie errorfile
    """
)


def _is_http(section: Section) -> bool:
    mode = _section_mode(section)
    if mode:
        return mode == "http"
    # No mode anywhere: HAProxy proxies TCP; a section written for HTTP says so with its keywords.
    for line in section.all_lines:
        if line.keyword in _HTTP_HINTS or line.words[:2] in (
            ("option", "httplog"),
            ("option", "forwardfor"),
        ):
            return True
        if (
            line.keyword == "acl"
            and len(line.args) > 1
            and re.match(r"(req\.)?(hdr|path|url|method|cook|urlp)", line.args[1])
        ):
            return True
    return False


def _quoted(words: list[str] | tuple[str, ...]) -> str:
    return " ".join(words)


class HaproxyTranslator:
    def __init__(self, sections: list[Section], report: Report, exists: Exists) -> None:
        self.sections = sections
        self.report = report
        self.exists = exists
        self.globals = GlobalSettings()
        self.out = Translation()
        self.vs_labels: set[str] = set()
        self.pool_names: dict[str, str] = {}  # backend name -> pool name
        self.backends: dict[str, Section] = {}
        self.used_backends: set[str] = set()
        self.stats_done = False

    # ---- helpers
    def note(
        self, line: Line, why: str, *, traffic: bool = True, directive: str | None = None
    ) -> None:
        self.report.add(line.where, directive or _directive(line), why, traffic=traffic)

    def _readable(self, line: Line, path: str, why: str, directive: str) -> bool:
        """Whether a file the configuration names is here; reported when it is not."""
        if self.exists(path):
            return True
        self.note(line, why, directive=directive)
        return False

    def _path(self, base: str, path: str) -> str:
        if base and not path.startswith("/"):
            return os.path.join(base, path)
        return path

    # ---- entry point
    def translate(self) -> Translation:
        for section in self.sections:
            if section.kind == "global":
                self._global(section)
        self._workers()
        for section in self.sections:
            if section.kind in {"backend", "listen"} and section.name:
                self.backends[section.name] = section
        http_proxies = []
        for section in self.sections:
            if section.kind in PROXY_KINDS:
                if _is_http(section):
                    http_proxies.append(section)
                elif section.kind != "backend":
                    self._not_http(section)
            elif section.kind not in {"global", "defaults"}:
                self.report.add(
                    section.where,
                    section.kind,
                    f"lbproxy has no {section.kind} section; its lines were not read",
                    traffic=section.kind in {"http-errors", "cache", "program"},
                )
        for section in http_proxies:
            if section.kind == "listen" and self._is_stats_only(section):
                self._stats_listen(section)
        for section in http_proxies:
            if section.kind in {"frontend", "listen"} and not (
                section.kind == "listen" and self._is_stats_only(section)
            ):
                self._frontend(section)
        for name, section in self.backends.items():
            if section.kind == "backend" and name not in self.used_backends:
                self.report.add(
                    section.where,
                    f"backend {name}",
                    "no frontend uses it, so it carries no traffic; it was left out",
                    traffic=False,
                )
        return self.out

    def _not_http(self, section: Section) -> None:
        where = section.where
        for line in section.all_lines:
            if line.keyword == "mode":
                where = line.where
        self.report.add(
            where,
            f"{section.kind} {section.name}",
            "mode tcp (HAProxy's default without `mode http`): lbproxy proxies HTTP only, so "
            "this whole section was left out / keep a TCP proxy for it",
        )

    # ---- global
    def _global(self, section: Section) -> None:
        g = self.out.global_
        for line in section.lines:
            kw, args = line.keyword, line.args
            if kw == "crt-base" and args:
                self.globals.crt_base = args[0]
            elif kw == "ca-base" and args:
                self.globals.ca_base = args[0]
            elif kw == "ssl-default-bind-ciphers" and args:
                self.globals.bind_ciphers = args[0]
            elif kw == "ssl-default-bind-ciphersuites" and args:
                self.globals.bind_ciphersuites = args[0]
            elif kw == "ssl-default-bind-options":
                if "no-tlsv12" in args or (
                    "ssl-min-ver" in args and _after(args, "ssl-min-ver") == "TLSv1.3"
                ):
                    self.globals.bind_min_version = "1.3"
                rest = [
                    a
                    for a in args
                    if a
                    not in {
                        "no-sslv3",
                        "no-tlsv10",
                        "no-tlsv11",
                        "no-tlsv12",
                        "ssl-min-ver",
                        "TLSv1.2",
                        "TLSv1.3",
                        "TLSv1.0",
                        "TLSv1.1",
                    }
                ]
                if rest:
                    self.note(
                        line,
                        f"options {' '.join(rest)} have no lbproxy equivalent (TLS 1.2 is the "
                        f"minimum, tickets and ALPN http/1.1 are lbproxy's own)",
                        traffic=False,
                    )
            elif kw in {"nbthread", "nbproc"} and args and args[0].isdigit():
                count = int(args[0])
                if kw == "nbproc" and count <= 1:
                    continue  # the old default: it says nothing about nbthread
                g["workers"] = max(1, min(count, MAX_WORKERS))  # threads become processes
            elif kw in {"user", "group"} and args:
                g[kw] = args[0]
            elif kw == "pidfile" and args:
                g["pidfile"] = args[0]
            elif kw == "log" and args:
                self._global_log(line)
            elif kw == "stats" and args[:1] == ("socket",) and len(args) > 1:
                path = args[1]
                if path.startswith("/") and "admin_socket" not in g:
                    g["admin_socket"] = path
                    self.note(
                        line,
                        "lbproxy's admin socket speaks HAProxy's CLI line protocol for the "
                        "commands listed in docs/operations.md; its mode is 0600",
                        traffic=False,
                    )
                else:
                    self.note(
                        line, "only one admin socket, on a unix path, is carried", traffic=False
                    )
            elif kw == "stats":
                self.note(
                    line,
                    "stats timeouts and sockets other than the first have no equivalent",
                    traffic=False,
                )
            elif (
                kw in {"tune.ssl.default-dh-param"}
                or kw.startswith("tune.")
                or kw in GLOBAL_NOT_NEEDED
                or kw.startswith("ssl-default-server")
                or kw.startswith("ssl-")
            ):
                self.note(
                    line,
                    "a setting of HAProxy's process that lbproxy does not need or sets itself",
                    traffic=False,
                )
            elif kw == "lua-load":
                self.note(line, "Lua scripts cannot be carried / rewrite what they do as rules")
            else:
                self.note(line, "no lbproxy equivalent", traffic=False)

    def _workers(self) -> None:
        """HAProxy 2.x runs one thread per core unless ``nbthread`` says otherwise, so an
        appliance that moves over keeps its cores: ``workers: auto`` (lbproxy's own default is
        one process, docs/configuration.md)."""
        if "workers" in self.out.global_:
            return
        self.out.global_["workers"] = "auto"

    def _global_log(self, line: Line) -> None:
        args = list(line.args)
        target = args[0]
        if target == "global":
            return
        facility = None
        rest = args[1:]
        while rest and rest[0] in {"len", "format", "sample"}:
            rest = rest[2:]
        if rest:
            facility = rest[0]
        if target in {"stdout", "stderr"}:
            entry: dict[str, Any] = {"target": target}
        elif target.startswith("/"):
            entry = {"target": f"unix://{target}"}
        elif target.startswith("ring@") or target.startswith("fd@"):
            self.note(
                line,
                "log rings and fd@ targets have no equivalent; lbproxy logs to stdout, files or "
                "syslog",
                traffic=False,
            )
            return
        else:
            host = target.removeprefix("udp@").removeprefix("ipv4@")
            entry = {"target": f"udp://{host}"}
        if facility and facility in _FACILITIES and target not in {"stdout", "stderr"}:
            entry["facility"] = facility
        self.out.global_.setdefault("log", []).append(entry)
        if len(rest) > 1:
            self.note(
                line,
                f"log levels ({' '.join(rest[1:])}): lbproxy sends access lines and diagnostics at "
                f"global.log_level",
                traffic=False,
            )

    # ---- stats
    def _is_stats_only(self, section: Section) -> bool:
        own = section.lines
        has_stats = any(
            line.keyword == "stats" and line.args[:1] in (("enable",), ("uri",)) for line in own
        )
        has_servers = any(
            line.keyword in {"server", "use_backend", "default_backend"} for line in own
        )
        return has_stats and not has_servers

    def _stats_listen(self, section: Section) -> None:
        binds = [a for line in section.lines if line.keyword == "bind" for a in line.args[:1]]
        if section.args:
            binds = list(section.args[:1]) + binds
        if self.stats_done or not binds:
            self.report.add(
                section.where,
                f"listen {section.name}",
                "lbproxy has one stats listener (global.stats); this one was left out",
                traffic=False,
            )
            return
        try:
            address = haproxy_address(binds[0].split(",")[0])
        except ValueError as error:
            self.report.add(
                section.where, f"listen {section.name}", f"stats bind: {error}", traffic=False
            )
            return
        stats: dict[str, Any] = {"bind": address}
        for line in section.lines:
            if line.keyword == "stats" and line.args[:1] == ("uri",) and len(line.args) > 1:
                stats["path"] = line.args[1]
            elif line.keyword == "stats" and line.args[:1] == ("auth",):
                self.note(
                    line,
                    "the password must live in a file: set global.stats.auth {user, password_file}",
                    traffic=False,
                )
            elif (
                line.keyword == "stats"
                or line.keyword in {"bind", "mode"}
                or line.keyword in {"log", "option", "timeout", "maxconn"}
            ):
                continue
            else:
                self.note(line, "not carried on the stats listener", traffic=False)
        self.out.global_["stats"] = stats
        self.stats_done = True

    # ---- frontends
    def _frontend(self, section: Section) -> None:
        where = section.where
        vs_label = label(
            section.name or f"{section.kind}{where.line}",
            self.vs_labels | set(self.pool_names.values()),
        )
        self.vs_labels.add(vs_label)
        vs: dict[str, Any] = {"label": vs_label}
        binds = self._binds(section)
        if not binds:
            self.report.add(
                where,
                f"{section.kind} {section.name}",
                "no bind line: nothing listens, so it was left out",
            )
            return
        vs["bind"] = binds if len(binds) > 1 else binds[0]
        tls_flags = {isinstance(b, dict) and "tls" in b for b in binds}
        ctx = Context(ssl=None if len(tls_flags) > 1 else tls_flags.pop())
        acl_lines = [line for line in section.all_lines if line.keyword == "acl"]
        acls = self._acl_table(acl_lines, ctx)
        default_backend: str | None = None
        default_line: Line | None = None
        forced: tuple[str, Line] | None = None  # an unconditional use_backend
        rules: list[tuple[dict[str, Any], Line]] = []
        redirects: list[dict[str, Any]] = []
        denies: list[dict[str, Any]] = []
        allows: list[Condition] = []
        req_headers: list[dict[str, Any]] = []
        rsp_headers: list[dict[str, Any]] = []
        error_pages: dict[int, str] = {}
        timeouts: dict[str, str] = {}
        limits: dict[str, Any] = {}
        forwardfor: Line | None = None
        redirect_to_https: dict[str, Any] | None = None
        is_listen = section.kind == "listen"
        own_backend = Backend(section.name, where, {}) if is_listen else None
        lines = list(section.all_lines)
        # A backend's redirects and denies apply to every request when it is the only backend.
        named_default = next(
            (ln.args[0] for ln in lines if ln.keyword == "default_backend" and ln.args), None
        )
        default_section = self.backends.get(named_default or "")
        if default_section is not None and not any(ln.keyword == "use_backend" for ln in lines):
            lines += [ln for ln in default_section.lines if _is_request_action(ln)]

        def cond_of(line: Line, words: list[str]) -> Condition | None:
            if not words:
                return ALWAYS
            try:
                return parse_expression(words, acls, ctx, use_names=True)
            except Unsupported as error:
                self.note(line, f"condition: {error}")
                return None

        for line in lines:
            kw, args = line.keyword, line.args
            inherited = line in section.inherited
            if kw in {"bind", "acl", "mode"}:
                continue
            if kw == "default_backend" and args:
                default_backend, default_line = args[0], line
            elif kw == "use_backend" and args:
                target, cwords = split_condition(args)
                if forced is not None:
                    self.note(
                        line,
                        f"never used: line {forced[1].where.line} sends every request first",
                        traffic=False,
                    )
                    continue
                cond = cond_of(line, cwords)
                if cond is None:
                    continue
                if cond is ALWAYS and "%[" not in target[0]:
                    # Every request goes there: it is the virtual server's own pool.
                    forced = (target[0], line)
                    continue
                if "%[" in target[0]:
                    self.note(
                        line,
                        "a backend name built from the request cannot be carried / write one rule "
                        "per backend",
                    )
                    continue
                pool = self._named_pool(target[0], line)
                if pool is None or cond is NEVER:
                    continue
                rules.append((with_if({"pool": pool}, cond), line))
            elif kw == "redirect" or (kw == "http-request" and args[:1] == ("redirect",)):
                rwords = list(args[1:] if kw == "http-request" else args)
                entry, cwords = self._redirect(line, rwords)
                if entry is None:
                    continue
                if entry.get("scheme") == "https" and self._plain_only_https(cwords, acls, ctx):
                    redirect_to_https = {k: v for k, v in entry.items() if k == "code"}
                    continue
                cond = cond_of(line, cwords)
                if cond is None or cond is NEVER:
                    continue
                if entry.get("scheme") == "https" and ctx.ssl is not False:
                    self.note(
                        line,
                        "a scheme redirect that does not depend on ssl_fc alone would loop on TLS "
                        "binds in lbproxy / use redirect_to_https",
                    )
                    continue
                redirects.append(with_if(entry, cond))
            elif kw == "block" or (
                kw == "http-request" and args[:1] in (("deny",), ("tarpit",), ("reject",))
            ):
                rwords = list(args[1:]) if kw == "http-request" else list(args)
                head, cwords = split_condition(tuple(rwords))
                cond = cond_of(line, cwords)
                if cond is None or cond is NEVER:
                    continue
                status = 403
                if "deny_status" in head:
                    status = int(_after(head, "deny_status") or 403)
                if kw == "http-request" and args[0] != "deny":
                    self.note(
                        line,
                        f"{args[0]} is answered at once with {status}, without HAProxy's delay or "
                        f"silent close",
                        traffic=False,
                    )
                for extra in [h for h in head if h not in {"deny_status", str(status)}]:
                    self.note(
                        line,
                        f"deny option {extra} (a custom answer body) is not carried",
                        traffic=False,
                    )
                    break
                guard = all_of([negate(a) for a in allows] + [cond])
                denies.append(with_if({"status": status}, guard))
            elif kw == "http-request" and args[:1] == ("allow",):
                _, cwords = split_condition(args[1:])
                cond = cond_of(line, cwords)
                if cond is not None:
                    allows.append(cond)
            elif kw in HEADER_KEYWORDS or kw in {"reqdeny", "reqideny"}:
                self._header_rule(line, acls, ctx, req_headers, rsp_headers, denies)
            elif kw in {"errorfile"} and len(args) >= 2:
                self._errorfile(line, error_pages)
            elif kw in {"timeout", "contimeout", "srvtimeout", "clitimeout"}:
                self._timeout(line, timeouts, own_backend.pool if own_backend else None)
            elif kw == "option" and args[:1] == ("forwardfor",):
                forwardfor = line
            elif kw == "no" and args[:2] == ("option", "forwardfor"):
                forwardfor = None
            elif kw == "maxconn" and args and not is_listen:
                limits["max_connections"] = int(args[0]) if args[0].isdigit() else None
            elif (
                is_listen
                and own_backend is not None
                and self._backend_line(line, own_backend, inherited)
            ):
                continue
            elif kw in {
                "balance",
                "server",
                "cookie",
                "retries",
                "default-server",
                "stick-table",
                "stick",
                "http-check",
                "fullconn",
                "hash-type",
            }:
                continue  # read with the backend (defaults give them to frontends too)
            elif (
                kw == "option"
                and args[:1]
                and args[0] in OTHER_CHECKS | {"httpchk", "allbackups", "persist", "originalto"}
                and not is_listen
            ):
                continue
            else:
                self._other(line, inherited)
        backend: Backend | None
        if forced is not None:
            if default_line is not None:
                self.note(
                    default_line,
                    "never used: a use_backend without condition comes first",
                    traffic=False,
                )
            default_backend, default_line = forced
        if is_listen and own_backend is not None:
            backend = own_backend
            self._finish_pool(backend, section)
            self.used_backends.add(section.name)
            if default_backend is not None and default_line is not None:
                self.note(
                    default_line,
                    "a listen section with servers uses them; default_backend was ignored",
                    traffic=False,
                )
        elif default_backend is not None and default_line is not None:
            backend = self._backend(default_backend, default_line)
        else:
            backend = None
        if backend is None or not backend.pool.get("real_servers"):
            reason = (
                "no default_backend"
                if default_backend is None
                else f"default backend {default_backend} has no server lbproxy can carry"
            )
            vs.update(placeholder_pool())
            who = "requests that match no rule" if rules else "every request"
            # Without default_backend HAProxy answers 503 too; a backend whose servers were
            # not carried (unix sockets, added by Lua...) served those requests.
            self.report.add(
                where,
                f"{section.kind} {section.name}",
                f"{reason}: {who} gets 503 from a pool whose one server is in maintenance"
                + (", as HAProxy answers them" if default_backend is None else ""),
                traffic=default_backend is not None,
            )
        else:
            vs.update(backend.pool)
            timeouts = {**timeouts, **backend.timeouts}
            forwardfor = forwardfor or backend.forwardfor
            req_headers += backend.request_headers
            rsp_headers += backend.response_headers
            error_pages = {**error_pages, **backend.error_pages}
        vs["forwardfor"] = forwardfor is not None
        if forwardfor is not None:
            self._forwardfor_options(forwardfor)
        if timeouts:
            vs["timeouts"] = self._clean_timeouts(timeouts, vs)
        if redirect_to_https is not None:
            vs["redirect_to_https"] = redirect_to_https or True
        put_nonempty(
            vs,
            redirects=redirects,
            deny=denies,
            request_headers=req_headers,
            response_headers=rsp_headers,
            error_pages=error_pages,
            limits={k: v for k, v in limits.items() if v is not None},
            rules=[entry for entry, _ in rules],
        )
        names = _referenced_names(
            [
                vs.get(k)
                for k in ("rules", "redirects", "deny", "request_headers", "response_headers")
            ]
        )
        if names:
            vs["acls"] = {name: acls.condition(name) for name in sorted(names)}
            vs = _move_first(vs, ["label", "bind"], "acls")
        comment = f"{where}: {section.kind} {section.name}"
        if backend is not None and not is_listen and default_backend is not None:
            comment += f", default_backend {default_backend} ({backend.where})"
        self.out.virtual_servers.append(
            VirtualServerOut(
                vs,
                comment,
                rule_comments=[f"{line.where}: {_quoted(line.words)}" for _, line in rules],
            )
        )

    def _plain_only_https(self, cwords: list[str], acls: AclTable, ctx: Context) -> bool:
        """``redirect scheme https`` whose condition is exactly "not over TLS": lbproxy's
        ``redirect_to_https`` (plain binds only) says the same."""
        if not cwords:
            return ctx.ssl is False
        text = " ".join(cwords)
        if text in {"if !{ ssl_fc }", "unless { ssl_fc }", "if { !ssl_fc }", "if ! { ssl_fc }"}:
            return True
        try:
            plain = parse_expression(cwords, acls, Context(ssl=False), use_names=False)
            tls = parse_expression(cwords, acls, Context(ssl=True), use_names=False)
        except Unsupported:
            return False
        return plain is ALWAYS and tls is NEVER

    def _acl_table(self, lines: list[Line], ctx: Context) -> AclTable:
        entries: dict[str, list[Any]] = {}
        for line in lines:
            if len(line.args) < 2:
                continue
            name = line.args[0]
            try:
                entries.setdefault(name, []).append(fetch_condition(list(line.args[1:]), ctx))
            except Unsupported as error:
                entries.setdefault(name, []).append(error)
        return AclTable(entries)

    def _forwardfor_options(self, line: Line) -> None:
        args = line.args[1:]
        if "header" in args:
            self.note(
                line, f"the client address goes in X-Forwarded-For, not in {_after(args, 'header')}"
            )
        if "except" in args:
            self.note(
                line,
                f"X-Forwarded-For is added for every peer (not `except {_after(args, 'except')}`)"
                " / use forwardfor: {trusted: [...]} to keep the header of trusted proxies",
                traffic=False,
            )
        if "if-none" in args:
            self.note(
                line,
                "lbproxy appends the peer to an X-Forwarded-For the client sent (if-none kept it "
                "alone)",
                traffic=False,
            )

    def _redirect(self, line: Line, words: list[str]) -> tuple[dict[str, Any] | None, list[str]]:
        head, cwords = split_condition(tuple(words))
        if len(head) < 2 or head[0] not in {"location", "prefix", "scheme"}:
            self.note(line, "cannot read this redirect")
            return None, []
        kind, target = head[0], head[1]
        entry: dict[str, Any] = {}
        code = _after(head, "code")
        if code:
            entry["code"] = int(code) if code.isdigit() else code
        else:
            entry["code"] = 302
        for fetch in _FETCH_IN_FORMAT_RE.findall(target):
            if fetch not in SAMPLE_FETCHES:
                self.note(line, f"a redirect target built from %[{fetch}] cannot be carried")
                return None, []
        entry[kind] = target
        if "drop-query" in head and kind != "location":
            entry["drop_query"] = True
        extras = [w for w in head[2:] if w not in {"code", code, "drop-query"}]
        if extras:
            self.note(line, f"redirect options {' '.join(extras)} are not carried", traffic=True)
        return entry, cwords

    def _errorfile(self, line: Line, pages: dict[int, str]) -> None:
        code, path = line.args[0], line.args[1]
        if not code.isdigit():
            self.note(line, "cannot read the status")
            return
        if not self.exists(path):
            self.note(
                line,
                f"{path} cannot be read here / copy it next to the YAML and add error_pages: "
                f"{{{code}: FILE}}",
            )
            return
        pages[int(code)] = path

    def _timeout(self, line: Line, timeouts: dict[str, str], pool: dict[str, Any] | None) -> None:
        kw, args = line.keyword, line.args
        if kw == "timeout":
            if len(args) < 2:
                self.note(line, "cannot read this timeout")
                return
            name, value = args[0], args[1]
        else:
            name, value = (
                {"contimeout": "connect", "srvtimeout": "server", "clitimeout": "client"}[kw],
                args[0] if args else "",
            )
        ms = haproxy_ms(value)
        if ms is None or ms == 0:
            self.note(
                line,
                "a zero or unreadable timeout (HAProxy: none) cannot be carried; lbproxy's default "
                "applies",
                traffic=False,
            )
            return
        key = {
            "connect": "connect",
            "server": "server",
            "client": "client",
            "http-keep-alive": "client_idle",
            "http-request": "header",
            "tunnel": "tunnel",
            "queue": "queue",
            "check": "check",
        }.get(name)
        if key is None:
            self.note(line, f"timeout {name} has no lbproxy equivalent", traffic=False)
            return
        timeouts[key] = duration(ms)

    def _clean_timeouts(self, timeouts: dict[str, str], vs: dict[str, Any]) -> dict[str, str]:
        out = dict(timeouts)
        if "client" in out:
            client = out.pop("client")
            out.setdefault("client_idle", client)
        check = out.pop("check", None)
        hc = vs.get("health_check")
        if check is not None and isinstance(hc, dict) and hc.get("enabled", True):
            hc["timeout"] = check
        order = ["connect", "header", "client_idle", "server", "tunnel", "queue"]
        return {k: out[k] for k in order if k in out}

    def _other(self, line: Line, inherited: bool) -> None:
        text = " ".join(line.words[:2])
        if text in QUIET or line.keyword in {"log", "description"}:
            return
        kw = line.keyword
        if kw in {
            "capture",
            "log-format",
            "unique-id-format",
            "declare",
            "id",
            "option",
            "compression",
            "http-reuse",
            "hash-type",
            "fullconn",
            "email-alert",
            "monitor-net",
            "bind-process",
            "stats",
            "log-tag",
            "backlog",
            "grace",
            "http-send-name-header",
            "load-server-state-from-file",
            "error-log-format",
        }:
            traffic = kw in {"option", "http-send-name-header"} and line.args[:1] not in (
                ("httplog",),
                ("tcplog",),
                ("log-health-checks",),
                ("http-buffer-request",),
                ("prefer-last-server",),
                ("checkcache",),
                ("dontlognull",),
                ("httpclose",),
                ("forceclose",),
                ("http-no-delay",),
                ("allbackups",),
                ("accept-invalid-http-request",),
                ("accept-invalid-http-response",),
                ("http-use-htx",),
                ("tcplog",),
                ("logasap",),
                ("disable-h2-upgrade",),
                ("h1-case-adjust-bogus-client",),
                ("h1-case-adjust-bogus-server",),
                ("persist",),
                ("http-ignore-probes",),
                ("http-use-proxy-header",),
                ("ssl-hello-chk",),
                ("tcp-check",),
                ("mysql-check",),
                ("pgsql-check",),
                ("redis-check",),
                ("smtpchk",),
                ("ldap-check",),
                ("external-check",),
                ("spop-check",),
                ("httpchk",),
                ("idle-close-on-response",),
            )
            why = {
                "compression": "lbproxy passes responses as the servers send them / let the "
                "servers compress",
                "capture": "captures only shape HAProxy's log lines",
                "stats": "lbproxy serves statistics on global.stats, not inside a proxy",
            }.get(kw, "no lbproxy equivalent")
            if kw == "option" and line.args[:1] == ("originalto",):
                why, traffic = "X-Original-To is not added", True
            if kw == "unique-id-format":
                why = "no request id header"
            self.note(line, why, traffic=traffic)
            return
        if kw == "monitor-uri":
            self.note(
                line,
                "lbproxy does not answer a monitor URI itself / point the monitor at a real "
                "server's health page or at the stats listener",
            )
            return
        if kw in {"tcp-request", "tcp-response"}:
            self.note(
                line,
                "TCP-level rules cannot be carried / use deny with a src condition for address "
                "filters",
            )
            return
        if kw in {
            "filter",
            "http-after-response",
            "rate-limit",
            "force-persist",
            "ignore-persist",
            "persist",
            "dispatch",
            "transparent",
            "source",
            "use-server",
            "server-template",
            "errorloc",
            "errorloc302",
            "errorloc303",
            "errorfiles",
            "http-error",
            "cache",
            "unique-id-header",
            "monitor",
            "redisp",
            "appsession",
            "external-check",
            "dynamic-cookie-key",
            "max-keep-alive-queue",
            "retry-on",
            "http-check",
            "use-fcgi-app",
            "cookie",
        }:
            self.note(line, "no lbproxy equivalent")
            return
        if kw in {"balance", "server", "retries", "default-server", "stick-table", "stick"}:
            return
        if kw == "maxconn":
            self.note(line, "a backend's maxconn: set maxconn on its real servers", traffic=False)
            return
        if kw in {"redirect", "block", "use_backend", "default_backend", "bind", "monitor-uri"}:
            self.note(
                line,
                f"{kw} inside a backend has no lbproxy equivalent / move it to the virtual server",
            )
            return
        if kw.startswith("."):
            self.note(
                line,
                "conditional blocks (.if/.else/.endif) are not evaluated: the lines of every "
                "branch were read",
            )
            return
        self.note(line, "unknown to the importer")

    # ---- backends and pools
    def _named_pool(self, backend_name: str, line: Line) -> str | None:
        if backend_name in self.pool_names:
            return self.pool_names[backend_name]
        backend = self._backend(backend_name, line)
        if backend is None or not backend.pool.get("real_servers"):
            if backend is not None:
                self.note(
                    line,
                    f"backend {backend_name} has no server lbproxy can carry, so this rule was "
                    f"left out",
                )
            return None
        name = label(
            backend_name,
            self.vs_labels
            | set(self.pool_names.values())
            | {v.data["label"] for v in self.out.virtual_servers},
        )
        self.pool_names[backend_name] = name
        self.out.pools[name] = (backend.pool, f"{backend.where}: backend {backend_name}")
        for vs_line in backend.vs_lines:
            self.note(
                vs_line,
                "a setting of a backend reached by use_backend: lbproxy keeps it per virtual "
                "server, where it now does not apply / set it on the virtual server",
            )
        return name

    def _backend(self, name: str, line: Line) -> Backend | None:
        section = self.backends.get(name)
        if section is None:
            self.note(line, f"no backend named {name}")
            return None
        if _section_mode(section) == "tcp":
            self.note(line, f"backend {name} is mode tcp, which lbproxy cannot proxy")
            return None
        self.used_backends.add(name)
        cache = getattr(self, "_backend_cache", None)
        if cache is None:
            cache = {}
            self._backend_cache = cache
        if name in cache:
            result: Backend = cache[name]
            return result
        backend = Backend(name, section.where, {})
        tls_ctx = Context(ssl=None)
        acls = self._acl_table([ln for ln in section.all_lines if ln.keyword == "acl"], tls_ctx)
        denies: list[dict[str, Any]] = []
        for ln in section.all_lines:
            inherited = ln in section.inherited
            if self._backend_line(ln, backend, inherited):
                continue
            if _is_request_action(ln):
                if not inherited:
                    backend.vs_lines.append(
                        ln
                    )  # carried by the frontend when it is the only backend
                continue
            kw = ln.keyword
            if kw in {"acl", "mode"}:
                continue
            if kw in {"timeout", "contimeout", "srvtimeout", "clitimeout"}:
                self._timeout(ln, backend.timeouts, backend.pool)
                backend.vs_lines.append(ln) if not inherited else None
            elif kw == "option" and ln.args[:1] == ("forwardfor",):
                backend.forwardfor = ln
            elif kw in HEADER_KEYWORDS:
                before = len(backend.request_headers) + len(backend.response_headers)
                self._header_rule(
                    ln, acls, tls_ctx, backend.request_headers, backend.response_headers, denies
                )
                if (
                    len(backend.request_headers) + len(backend.response_headers) > before
                    and not inherited
                ):
                    backend.vs_lines.append(ln)
            elif kw == "errorfile" and len(ln.args) >= 2:
                self._errorfile(ln, backend.error_pages)
            elif (
                kw
                in {
                    "use_backend",
                    "default_backend",
                    "bind",
                    "redirect",
                    "block",
                    "monitor-uri",
                    "maxconn",
                }
                and inherited
            ):
                continue
            else:
                self._other(ln, inherited)
        if denies:
            for ln in section.lines:
                if ln.keyword == "http-request":
                    self.note(
                        ln,
                        "a deny inside a backend is not carried / move it to the frontend with the "
                        "rule's condition",
                    )
                    break
        self._finish_pool(backend, section)
        cache[name] = backend
        return backend

    def _backend_line(self, line: Line, backend: Backend, inherited: bool) -> bool:
        """Read a pool keyword into ``backend``; False when the line is not one."""
        kw, args = line.keyword, line.args
        pool = backend.pool
        if kw == "balance" and args:
            algo = args[0]
            mapped = {
                "roundrobin": "roundrobin",
                "static-rr": "roundrobin",
                "leastconn": "leastconn",
                "source": "source",
            }.get(algo)
            if mapped is None:
                self.note(
                    line,
                    f"balance {algo}: lbproxy balances by roundrobin, leastconn or source / "
                    f"roundrobin was used",
                )
                mapped = "roundrobin"
            pool["balance"] = mapped
        elif kw == "server" and len(args) >= 2:
            pool.setdefault("_servers", []).append(line)
        elif kw == "default-server":
            pool["_default_server"] = line
        elif kw == "cookie" and args:
            pool["_cookie"] = line
        elif kw == "retries" and args and args[0].isdigit():
            pool["retries"] = min(int(args[0]), 100)
        elif kw == "option" and args[:1] == ("httpchk",):
            pool["_httpchk"] = line
        elif kw == "no" and args[:2] == ("option", "httpchk"):
            pool.pop("_httpchk", None)
        elif kw == "http-check":
            pool.setdefault("_http_check", []).append(line)
        elif kw == "option" and args[:1] == ("allbackups",):
            pool["_allbackups"] = True
        elif kw == "option" and args[:1] and args[0] in OTHER_CHECKS:
            self.note(line, "checked with a TCP connect instead", traffic=False)
        elif kw == "stick-table":
            pool["_stick_table"] = line
        elif kw == "stick":
            pool.setdefault("_stick", []).append(line)
        else:
            return False
        return True

    def _finish_pool(self, backend: Backend, section: Section) -> None:
        pool = backend.pool
        servers: list[Line] = pool.pop("_servers", [])
        default_server: Line | None = pool.pop("_default_server", None)
        cookie_line: Line | None = pool.pop("_cookie", None)
        httpchk: Line | None = pool.pop("_httpchk", None)
        http_checks: list[Line] = pool.pop("_http_check", [])
        allbackups = pool.pop("_allbackups", False)
        stick_table: Line | None = pool.pop("_stick_table", None)
        sticks: list[Line] = pool.pop("_stick", [])
        real: list[dict[str, Any]] = []
        fallbacks: list[dict[str, Any]] = []
        taken: set[str] = set()
        checked: list[dict[str, str]] = []
        unchecked = 0
        defaults = list(default_server.args) if default_server else []
        cookie_values = cookie_line is not None
        for line in servers:
            parsed = self._server(line, defaults, cookie_values)
            if parsed is None:
                continue
            server, backup, check, timing = parsed
            if backup:
                # The backup's name stays its name in stats and logs (HAProxy `server NAME`).
                fb: dict[str, Any] = {"label": line.args[0], "address": server["address"]}
                fb["health_check"] = dict(timing) if check else {"enabled": False}
                if "maxconn" in server:
                    fb["maxconn"] = server["maxconn"]
                if "tls" in server:
                    fb["tls"] = server["tls"]
                if "send_proxy" in server:
                    self.note(line, "send-proxy on a backup server: set send_proxy on the pool")
                fallbacks.append(fb)
                continue
            server["label"] = label(server["label"], taken)
            real.append(server)
            if check:
                checked.append(timing)
            else:
                unchecked += 1
        for fb in fallbacks:
            fb["label"] = label(fb["label"], taken)
        if not real:
            if fallbacks:
                self.report.add(
                    backend.where,
                    f"backend {backend.name}",
                    "only backup servers: the first is used as the real server",
                )
                first = fallbacks.pop(0)
                real.append({"label": first["label"], "address": first["address"]})
            else:
                return
        if "balance" in pool:
            pool = {"balance": pool.pop("balance"), **pool}
            backend.pool = pool
        persistence = self._persistence(cookie_line, stick_table, sticks)
        if persistence:
            pool["persistence"] = persistence
        hc = self._health_check(checked, unchecked, httpchk, http_checks, servers)
        if hc:
            pool["health_check"] = hc
        if fallbacks:
            pool["fallback"] = fallbacks[0] if len(fallbacks) == 1 else fallbacks
            if allbackups and len(fallbacks) > 1:
                pool["fallback_mode"] = "all"
        pool["real_servers"] = real

    def _server(
        self, line: Line, defaults: list[str], cookies: bool
    ) -> tuple[dict[str, Any], bool, bool, dict[str, Any]] | None:
        name, addr_text = line.args[0], line.args[1]
        try:
            address = haproxy_address(addr_text)
        except ValueError as error:
            if "no port" in str(error):
                address = haproxy_address(addr_text, default_port=80)
                self.note(
                    line,
                    "no port: HAProxy connects to the port the client used; lbproxy needs one, so "
                    "80 was written",
                    traffic=True,
                )
            else:
                self.note(line, f"server {name}: {error}")
                return None
        params = defaults + list(line.args[2:])
        server: dict[str, Any] = {"label": name, "address": address}
        backup = False
        check = False
        timing: dict[str, Any] = {}
        check_port: str | None = None
        check_addr: str | None = None
        tls: dict[str, Any] = {}
        i = 0
        while i < len(params):
            word = params[i]
            value = params[i + 1] if i + 1 < len(params) else ""
            takes = word in _SERVER_ARGS
            if word == "check":
                check = True
            elif word == "no-check":
                check = False
            elif word == "backup":
                backup = True
            elif word == "disabled":
                server["state"] = "maint"
            elif word == "weight" and value.isdigit():
                server["weight"] = min(int(value), 256)
            elif word == "cookie" and value:
                if cookies and value != name:
                    server["label"] = value  # the cookie value the clients already hold
            elif word in {"inter", "rise", "fall"}:
                if word == "inter":
                    ms = haproxy_ms(value)
                    if ms:
                        timing["interval"] = duration(ms)
                elif value.isdigit() and int(value) >= 1:
                    timing[word] = int(value)
            elif word == "addr":
                check_addr = value
            elif word == "port":
                check_port = value
            elif word == "maxconn" and value.isdigit():
                server["maxconn"] = int(value)
            elif word == "ssl":
                tls.setdefault("verify", "required")
            elif word == "verify":
                tls["verify"] = value
            elif word == "ca-file":
                path = self._path(self.globals.ca_base, value)
                why = f"ca-file {path} cannot be read here, so it is not verified / add tls.ca"
                if self._readable(line, path, why, f"server {name} ca-file"):
                    tls["ca"] = path
                else:
                    tls["_no_ca"] = True
            elif word == "sni":
                sni = value
                if sni in {"req.hdr(host)", "hdr(host)", "req.hdr(Host)"}:
                    tls["sni"] = "host"
                elif sni.startswith("str(") and sni.endswith(")"):
                    tls["sni"] = sni[4:-1]
                else:
                    self.note(
                        line,
                        f"sni {sni} cannot be carried",
                        traffic=True,
                        directive=f"server {name} sni",
                    )
            elif word == "crt":
                path = self._path(self.globals.crt_base, value)
                why = f"client certificate {path} cannot be read here / add tls.certificate"
                if self._readable(line, path, why, f"server {name} crt"):
                    tls["certificate"] = path
            elif word in {
                "send-proxy",
                "send-proxy-v2",
                "send-proxy-v2-ssl",
                "send-proxy-v2-ssl-cn",
            }:
                server["send_proxy"] = "v1" if word == "send-proxy" else "v2"
                if word.startswith("send-proxy-v2-ssl"):
                    self.note(
                        line,
                        "the SSL TLVs of PROXY v2 are not sent",
                        traffic=False,
                        directive=f"server {name} {word}",
                    )
            elif word in {"check-ssl", "no-ssl"} or word in _SERVER_NOT_TRAFFIC:
                if line.args[2:].count(word) and word not in {"enabled", "no-backup"}:
                    self.note(
                        line,
                        "not needed or not available in lbproxy",
                        traffic=False,
                        directive=f"server {name} {word}",
                    )
            elif word == "redir":
                self.note(
                    line,
                    "redirecting clients to the server cannot be carried",
                    directive=f"server {name} redir",
                )
            elif word == "track":
                self.note(
                    line,
                    "lbproxy checks each server itself",
                    traffic=False,
                    directive=f"server {name} track",
                )
            elif word in {"source", "usesrc", "socks4", "namespace"}:
                self.note(line, "cannot be carried", directive=f"server {name} {word}")
            elif takes:
                self.note(line, "not carried", traffic=False, directive=f"server {name} {word}")
            else:
                if word in line.args[2:]:
                    self.note(
                        line,
                        "unknown server option",
                        traffic=False,
                        directive=f"server {name} {word}",
                    )
            i += 2 if takes else 1
        if tls:
            missing_ca = tls.pop("_no_ca", False)
            if (
                tls.get("verify") == "required"
                and "ca" not in tls
                and (missing_ca or "verify" not in params)
            ):
                # `ssl` alone needs a ca-file (or ssl-server-verify none) in HAProxy; a ca-file
                # that is not here cannot be used: encrypt without verifying, as reported.
                if not missing_ca:
                    self.note(
                        line,
                        "HAProxy verifies the server's certificate against ca-file; without one "
                        "here, lbproxy does not verify / add tls.ca",
                        traffic=False,
                        directive=f"server {name} ssl",
                    )
                tls["verify"] = "none"
            if tls.get("verify") == "none":
                tls.pop("ca", None)  # lbproxy refuses a CA it would not use
            server["tls"] = tls
        if check_addr or check_port:
            host = check_addr or address.rsplit(":", 1)[0]
            server["check_address"] = f"{host}:{check_port}" if check_port else host
        return server, backup, check, timing

    def _persistence(
        self, cookie_line: Line | None, stick_table: Line | None, sticks: list[Line]
    ) -> dict[str, Any] | None:
        if cookie_line is not None:
            args = list(cookie_line.args)
            result: dict[str, Any] = {"cookie": args[0]}
            mode = (
                "insert"
                if "insert" in args
                else "rewrite"
                if "rewrite" in args
                else "prefix"
                if "prefix" in args
                else "rewrite"
            )
            if mode != "insert":
                self.note(
                    cookie_line,
                    f"cookie {mode}: lbproxy inserts its own cookie {args[0]} instead of editing "
                    f"the application's",
                )
            if "httponly" in args:
                result["httponly"] = True
            if "secure" in args:
                result["secure"] = True
            domain = _after(args, "domain")
            if domain:
                result["domain"] = domain.lstrip(".")
            for i, word in enumerate(args):
                if word == "attr" and i + 1 < len(args):
                    attr = args[i + 1]
                    if attr.lower().startswith("samesite="):
                        result["samesite"] = attr.split("=", 1)[1].capitalize()
                    else:
                        self.note(
                            cookie_line, f"cookie attribute {attr} is not sent", traffic=False
                        )
            for word in ("maxidle", "maxlife", "postonly", "preserve", "dynamic"):
                if word in args:
                    self.note(
                        cookie_line,
                        f"cookie {word}: the cookie lasts for the browser session and is set on "
                        f"every method",
                        traffic=False,
                    )
            if "indirect" not in args and mode == "insert":
                self.note(
                    cookie_line,
                    "without indirect, HAProxy passes its cookie on to the server; lbproxy always "
                    "removes it",
                    traffic=False,
                )
            if result.get("samesite") == "None" and "secure" not in result:
                result["secure"] = True
            return result
        if sticks:
            if stick_table is None or not any(
                s.args[:2] in (("on", "src"), ("match", "src"), ("store-request", "src"))
                for s in sticks
            ):
                for s in sticks:
                    self.note(s, "only stick on src (source-address persistence) can be carried")
                return None
            table = list(stick_table.args)
            source: dict[str, Any] = {"mask": 32, "mask6": 128}
            expire = _after(table, "expire")
            ms = haproxy_ms(expire) if expire else None
            if ms:
                source["timeout"] = duration(ms)
            size = _after(table, "size")
            if size:
                number = _size(size)
                if number:
                    source["size"] = max(1, min(number, 10_000_000))
            if _after(table, "type") not in {"ip", "ipv6"}:
                self.note(stick_table, "only tables of source addresses can be carried")
                return None
            for s in sticks:
                if s.args[:2] not in (("on", "src"), ("match", "src"), ("store-request", "src")):
                    self.note(s, "only stick on src can be carried")
            return {"source": source}
        return None

    def _health_check(
        self,
        checked: list[dict[str, Any]],
        unchecked: int,
        httpchk: Line | None,
        http_checks: list[Line],
        servers: list[Line],
    ) -> dict[str, Any] | None:
        if not checked:
            return {"enabled": False}
        hc: dict[str, Any] = dict(checked[0])
        if any(t != checked[0] for t in checked[1:]) and servers:
            self.note(
                servers[0],
                "servers check at different intervals; lbproxy uses the first server's for the "
                "whole pool",
                traffic=False,
                directive="server inter/rise/fall",
            )
        if unchecked and servers:
            self.note(
                servers[0],
                "some servers have no `check`; lbproxy checks every server of a pool",
                traffic=False,
                directive="server check",
            )
        if httpchk is not None:
            http: dict[str, Any] = {}
            args = list(httpchk.args[1:])
            if len(args) == 1:
                http["path"] = args[0]
            elif len(args) >= 2:
                http["method"] = args[0]
                http["path"] = args[1]
                if len(args) >= 3:
                    extra = " ".join(args[2:])
                    host = re.search(r"\r?\n\s*Host:\s*([^\r\n]+)", extra, re.IGNORECASE)
                    if host:
                        http["host"] = host.group(1).strip()
                    elif "\n" in extra:
                        self.note(
                            httpchk,
                            "check request headers other than Host are not sent",
                            traffic=False,
                        )
            for line in http_checks:
                self._http_check(line, http)
            if http.get("path", "/").startswith("/") is False:
                self.note(
                    httpchk,
                    f"check URI {http['path']} must start with /; / was used",
                    traffic=False,
                )
                http["path"] = "/"
            hc["http"] = http
        elif http_checks:
            for line in http_checks:
                self.note(
                    line, "http-check without option httpchk does nothing in HAProxy", traffic=False
                )
        return hc

    def _http_check(self, line: Line, http: dict[str, Any]) -> None:
        args = list(line.args)
        if args[:1] == ["send"]:
            if "meth" in args:
                http["method"] = _after(args, "meth")
            if "uri" in args:
                http["path"] = _after(args, "uri")
            for i, word in enumerate(args):
                if word == "hdr" and i + 2 < len(args) and args[i + 1].lower() == "host":
                    http["host"] = args[i + 2]
        elif args[:1] == ["expect"]:
            rest = args[1:]
            negated = rest[:1] == ["!"]
            if negated:
                self.note(line, "a negated expectation cannot be carried")
                return
            if rest[:1] == ["status"] and len(rest) > 1:
                values = rest[1].split(",")
                expect: list[Any] = []
                for v in values:
                    if v.isdigit():
                        expect.append(int(v))
                    elif re.fullmatch(r"\d+-\d+", v):
                        expect.append(v)
                http["expect"] = expect[0] if len(expect) == 1 else expect
            elif rest[:1] == ["rstatus"] and len(rest) > 1:
                pattern = rest[1]
                ranges = {
                    "^2": "200-299",
                    "^[23]": "200-399",
                    "^[2-3]": "200-399",
                    "^(2|3)": "200-399",
                    "^3": "300-399",
                }
                if pattern in ranges:
                    http["expect"] = ranges[pattern]
                else:
                    self.note(line, f"rstatus {pattern}: write the statuses as http.expect")
            elif rest[:1] == ["string"] and len(rest) > 1:
                http["body"] = rest[1]
            else:
                self.note(line, "this expectation cannot be carried")
        elif args[:1] in (["disable-on-404"],):
            self.note(
                line,
                "a 404 marks the server down in lbproxy too only if 404 is not expected",
                traffic=False,
            )
        elif args[:1] in (["connect"], ["comment"]):
            return
        else:
            self.note(line, "this check step cannot be carried", traffic=False)

    # ---- header rules
    def _header_rule(
        self,
        line: Line,
        acls: AclTable,
        ctx: Context,
        req: list[dict[str, Any]],
        rsp: list[dict[str, Any]],
        denies: list[dict[str, Any]],
    ) -> None:
        kw = line.keyword
        if kw in {"http-request", "http-response"}:
            action = line.args[0] if line.args else ""
            head, cwords = split_condition(line.args[1:])
            target = req if kw == "http-request" else rsp
        else:
            action = kw
            head, cwords = split_condition(line.args)
            target = rsp if kw.startswith("rsp") else req
        try:
            cond = parse_expression(cwords, acls, ctx, use_names=True) if cwords else ALWAYS
        except Unsupported as error:
            self.note(line, f"condition: {error}")
            return
        if cond is NEVER:
            return
        entry: dict[str, Any] | None = None
        if action in {"set-header", "add-header"} and len(head) >= 2:
            name, value = head[0], " ".join(head[1:])
            entry = self._header_value_entry(
                line, "set" if action == "set-header" else "add", name, value
            )
        elif action in {"del-header"} and head:
            if len(head) > 1:
                self.note(
                    line,
                    "del-header with a match method: the whole header is deleted",
                    traffic=False,
                )
            entry = self._delete_entry(line, head[0])
        elif action in {"replace-header", "replace-value"} and len(head) >= 3:
            if self._framing(line, head[0]):
                return
            entry = {"replace": {"name": head[0], "match": head[1], "with": head[2]}}
            if action == "replace-value":
                self.note(
                    line,
                    "replace-value works on each comma-separated value; lbproxy replaces in the "
                    "whole header value",
                    traffic=False,
                )
        elif action in {"reqadd", "rspadd"} and head:
            name, sep, value = head[0].partition(":")
            if not sep:
                self.note(line, "cannot read the header line")
                return
            entry = self._header_value_entry(line, "add", name.strip(), value.strip())
        elif action in {"reqdel", "reqidel", "rspdel", "rspidel"} and head:
            parsed = _header_line_regex(head[0])
            if parsed is None or parsed[1] not in {"", ".*", ".*$"}:
                self.note(
                    line,
                    "only regexes that name one whole header (^Name:.*) can be carried / use a "
                    "delete rule",
                )
                return
            entry = self._delete_entry(line, parsed[0])
        elif action in {"reqrep", "reqirep", "rsprep", "rspirep"} and len(head) >= 2:
            parsed = _header_line_regex(head[0])
            repl = re.match(r"\^?([A-Za-z0-9-]+):\s*(.*)$", head[1], re.DOTALL)
            if parsed is None or repl is None or repl.group(1).lower() != parsed[0].lower():
                self.note(
                    line,
                    "only rewrites of one header's value (^Name:\\ regex -> Name:\\ text) can be "
                    "carried; request-line rewrites cannot",
                )
                return
            if self._framing(line, parsed[0]):
                return
            match = parsed[1] or ".*"
            if action.startswith(("reqi", "rspi")):
                match = "(?i)" + match
            entry = {"replace": {"name": parsed[0], "match": match, "with": repl.group(2)}}
        elif action in {"reqdeny", "reqideny"} and head:
            parsed = _header_line_regex(head[0])
            if parsed is None:
                self.note(line, "only regexes on one header can be carried")
                return
            regex = ("(?i)" if action == "reqideny" else "") + (parsed[1] or ".*")
            denies.append(
                with_if(
                    {"status": 403}, all_of([{"header": {"name": parsed[0], "regex": regex}}, cond])
                )
            )
            return
        elif action in {"set-header", "add-header", "del-header", "replace-header"}:
            self.note(line, "cannot read this rule")
            return
        else:
            why = {
                "set-path": "the path cannot be rewritten",
                "set-uri": "the URI cannot be rewritten",
                "replace-path": "the path cannot be rewritten",
                "replace-uri": "the URI cannot be rewritten",
                "set-query": "the query cannot be rewritten",
                "auth": "lbproxy does not ask for HTTP authentication",
                "set-var": "variables cannot be carried",
                "capture": "captures only shape logs",
                "set-log-level": "log levels per request cannot be carried",
                "return": "answers written in the configuration cannot be carried",
                "cache-use": "lbproxy does not cache",
                "cache-store": "lbproxy does not cache",
                "set-status": "the status cannot be rewritten",
                "lua": "Lua cannot be carried",
                "track-sc0": "stick counters cannot be carried",
                "track-sc1": "stick counters cannot be carried",
                "track-sc2": "stick counters cannot be carried",
                "set-src": "the client address cannot be replaced",
                "add-acl": "runtime ACL changes cannot be carried",
                "del-acl": "runtime ACL changes cannot be carried",
                "set-map": "maps cannot be carried",
                "del-map": "maps cannot be carried",
                "allow": "allow (stop evaluating further rules) has no lbproxy equivalent",
            }.get(action.split("(")[0], "no lbproxy equivalent")
            traffic = action not in {"capture", "set-log-level"}
            self.note(line, why, traffic=traffic)
            return
        if entry is not None:
            target.append(with_if(entry, cond))

    def _framing(self, line: Line, name: str) -> bool:
        lower = name.lower()
        if lower in HEADER_FORBIDDEN:
            self.note(
                line,
                f"lbproxy refuses header rules on {name}, which carries the message's framing or "
                f"routing",
            )
            return True
        return False

    def _header_value_entry(
        self, line: Line, verb: str, name: str, value: str
    ) -> dict[str, Any] | None:
        lower = name.lower()
        if lower in LBPROXY_SETS:
            self.note(line, f"lbproxy sets {name} itself on every request", traffic=False)
            return None
        if lower == "x-forwarded-for":
            self.note(line, "X-Forwarded-For is written by forwardfor / set forwardfor")
            return None
        if self._framing(line, name):
            return None
        for fetch in _FETCH_IN_FORMAT_RE.findall(value):
            if fetch not in SAMPLE_FETCHES:
                self.note(
                    line,
                    f"%[{fetch}] is not one of lbproxy's values (src, src_port, dst, dst_port, "
                    f"ssl_fc, srv_name, host, method, path, query, url)",
                )
                return None
        stripped = _FETCH_IN_FORMAT_RE.sub("", value).replace("%%", "")
        if "%" in stripped:
            self.note(line, "log-format variables other than %[...] cannot be carried")
            return None
        return {verb: {name: value.strip()}}

    def _delete_entry(self, line: Line, name: str) -> dict[str, Any] | None:
        if name.lower() in LBPROXY_SETS:
            self.note(line, f"lbproxy sets {name} itself", traffic=False)
            return None
        if self._framing(line, name):
            return None
        return {"delete": name}

    # ---- binds
    def _binds(self, section: Section) -> list[Any]:
        result: list[Any] = []
        specs: list[tuple[Line, list[str], list[str]]] = []
        if section.args:
            specs.append(
                (
                    Line(section.where, ("listen", section.name, *section.args)),
                    section.args[0].split(","),
                    list(section.args[1:]),
                )
            )
        for line in section.lines:
            if line.keyword == "bind" and line.args:
                specs.append((line, line.args[0].split(","), list(line.args[1:])))
        for line, addresses, params in specs:
            tls = self._bind_tls(line, params)
            for text in addresses:
                try:
                    address = haproxy_address(text)
                except ValueError as error:
                    self.note(line, f"{error}")
                    continue
                if address.startswith("[::]:") and "v6only" not in params:
                    pass
                result.append(
                    {"address": address, **tls} if tls or "accept_proxy" in tls else address
                )
        return result

    def _bind_tls(self, line: Line, params: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "accept-proxy" in params:
            out["accept_proxy"] = ["0.0.0.0/0", "::/0"]
        if "ssl" not in params:
            return out
        tls: dict[str, Any] = {}
        certs: list[str] = []
        i = 0
        while i < len(params):
            word = params[i]
            value = params[i + 1] if i + 1 < len(params) else ""
            takes = word in _BIND_ARGS
            if word == "crt":
                path = self._path(self.globals.crt_base, value)
                why = (
                    f"certificate {path} cannot be read here, so this bind serves lbproxy's "
                    "self-signed certificate / copy it and set tls.certificate"
                )
                if self._readable(line, path, why, "bind crt"):
                    certs.append(path)
            elif word == "crt-list":
                self.note(
                    line,
                    "crt-list cannot be carried / list the certificates in tls.certificate",
                    directive="bind crt-list",
                )
            elif word == "ssl-min-ver":
                tls["min_version"] = "1.3" if value == "TLSv1.3" else "1.2"
            elif word == "no-tlsv12":
                tls["min_version"] = "1.3"
            elif word == "ciphers":
                tls["ciphers"] = value
            elif word == "ciphersuites":
                tls["ciphersuites"] = value
            elif word == "ca-file":
                path = self._path(self.globals.ca_base, value)
                why = f"client CA {path} cannot be read here: no client certificates asked for"
                if self._readable(line, path, why, "bind ca-file"):
                    tls["client_ca"] = path
            elif word == "verify" and value in {"optional", "required"}:
                tls["verify"] = value
            elif word == "strict-sni":
                tls["strict_sni"] = True
            elif word == "alpn" and "h2" in value.split(","):
                self.note(
                    line,
                    "lbproxy speaks HTTP/1.1: clients fall back from h2",
                    traffic=False,
                    directive="bind alpn h2",
                )
            elif word in {"ssl", "accept-proxy", "verify"}:
                pass
            elif word in _BIND_NOT_TRAFFIC:
                if word not in {"alpn", "no-sslv3", "no-tlsv10", "no-tlsv11"}:
                    self.note(
                        line,
                        "not needed or not available in lbproxy",
                        traffic=False,
                        directive=f"bind {word}",
                    )
            elif word.startswith("quic") or word.startswith("no-"):
                self.note(line, "not carried", traffic=False, directive=f"bind {word}")
            else:
                self.note(line, "not carried", traffic=False, directive=f"bind {word}")
            i += 2 if takes else 1
        if "verify" in tls and "client_ca" not in tls:
            tls.pop("verify")
        if certs:
            tls["certificate"] = certs[0] if len(certs) == 1 else certs
        if self.globals.bind_ciphers and "ciphers" not in tls:
            tls["ciphers"] = self.globals.bind_ciphers
        if self.globals.bind_ciphersuites and "ciphersuites" not in tls:
            tls["ciphersuites"] = self.globals.bind_ciphersuites
        if self.globals.bind_min_version and "min_version" not in tls:
            tls["min_version"] = self.globals.bind_min_version
        out["tls"] = tls or True
        return out


_FACILITIES = words(
    """
    kern user mail daemon auth syslog lpr news uucp cron auth2 ftp ntp audit alert cron2 local0
    local1 local2 local3 local4 local5 local6 local7
    """
)


def _is_request_action(line: Line) -> bool:
    return line.keyword in {"redirect", "block"} or (
        line.keyword == "http-request"
        and line.args[:1] in (("redirect",), ("deny",), ("tarpit",), ("allow",))
    )


def _after(words: list[str] | tuple[str, ...], key: str) -> str | None:
    for i, word in enumerate(words):
        if word == key and i + 1 < len(words):
            return words[i + 1]
    return None


def _size(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)([kmg]?)", text.lower())
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


def _directive(line: Line) -> str:
    words = line.words
    if (
        words[0]
        in {
            "option",
            "no",
            "timeout",
            "http-request",
            "http-response",
            "stats",
            "http-check",
            "tcp-request",
            "stick",
        }
        and len(words) > 1
    ):
        return f"{words[0]} {words[1]}"
    if words[0] in {"server", "acl", "use_backend", "errorfile"} and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def _header_line_regex(regex: str) -> tuple[str, str] | None:
    """``^Name:\\ value-regex`` as (Name, value-regex); None for anything else."""
    match = re.fullmatch(r"\^?\(?([A-Za-z0-9_-]+)\)?:\s*(?:\\s\*|\\ |\s)*(.*)", regex, re.DOTALL)
    if match is None:
        return None
    return match.group(1), match.group(2)


def _referenced_names(values: list[Any]) -> set[str]:
    found: set[str] = set()

    def walk(value: Any, in_cond: bool) -> None:
        if isinstance(value, str):
            if in_cond:
                found.add(value.lstrip("!"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if key == "if" or (in_cond and key in {"and", "or", "not"}):
                    walk(item, True)
                elif not in_cond:
                    walk(item, False)
        elif isinstance(value, list):
            for item in value:
                walk(item, in_cond)

    for value in values:
        if value is not None:
            walk(value, False)
    return found


def _move_first(vs: dict[str, Any], first: list[str], key: str) -> dict[str, Any]:
    out = {k: vs[k] for k in first if k in vs}
    out[key] = vs[key]
    out.update({k: v for k, v in vs.items() if k not in out})
    return out
