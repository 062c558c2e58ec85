"""pound.cfg directives to lbproxy virtual servers and pools.

Each ``ListenHTTP``/``ListenHTTPS`` becomes a virtual server. Its services (its own, then the
top-level ones, in order, first match wins as in Pound) become: the virtual server's own pool for
the first service without conditions, rules to named pools for services with conditions, and
redirects for ``Redirect`` services. A listener whose one service forwards every request to
fixed addresses is remembered (``forwards_to``) so the appliance pair can be folded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .conditions import ALWAYS, NEVER, Condition, all_of, any_of, negate, with_if
from .pound_reader import Directive, PoundConfig
from .report import Report
from .result import Translation, VirtualServerOut, placeholder_pool, put_nonempty
from .values import address, duration, label, words

Exists = Callable[[str], bool]

XHTTP_DEFAULT = 0  # Pound accepts only GET, POST and HEAD unless told otherwise
REDIRECT_CODES = {301, 302, 303, 307, 308}
DEFAULT_ALIVE = 30  # seconds; Pound's Alive default
_GLOBAL_NOT_NEEDED = words(
    """
    daemon rootjail threads logfacility loglevel dhparams ecdhcurve sslengine control anonymise
    anonymize supervisor workerminthreads workermaxthreads workeridletimeout threadmodel
    balancer regextype watcherttl logformat linebuffersize pidfile includedir backendstats
    logtag ignorecase resolver combineheaders forwardedheader sslmodeasync
    sslallowclientrenegotiation sslhonorcipherorder nohttps11 headeroption constant
    """
)


# Top-level directives read before the listeners.
GLOBAL_READ_FIRST = words(
    "service acl backend alive timeout connto wstimeout client grace user group pidfile"
)
# The Service directives that match requests (Pound 2.x and 4.x).
MATCH_KEYWORDS = words("url path host header headrequire headdeny query queryparam method")
# Service directives read elsewhere than as settings of the pool.
SERVICE_READ_ELSEWHERE = MATCH_KEYWORDS | words(
    "backend usebackend emergency session not match acl disabled redirect error"
)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", text.strip())
    if match is None:
        return None
    return (
        float(match.group(1))
        * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    )


def _dur(seconds: float) -> str:
    return duration(seconds * 1000)


class PoundTranslator:
    def __init__(
        self,
        config: PoundConfig,
        report: Report,
        exists: Exists,
        vs_labels: set[str],
        pool_names: set[str],
    ) -> None:
        self.config = config
        self.report = report
        self.exists = exists
        self.out = Translation()
        self.vs_labels = vs_labels
        self.pool_names = pool_names
        self.acls: dict[str, list[str]] = {}
        self.backends: dict[str, Directive] = {}
        self.service_pools: dict[int, str] = {}
        self.alive = DEFAULT_ALIVE
        self.timeouts: dict[str, float] = {}
        self.client: float | None = None

    def note(self, d: Directive, why: str, *, traffic: bool = True) -> None:
        self.report.add(d.where, d.name, why, traffic=traffic)

    def translate(self) -> Translation:
        top = self.config.top
        services = [d for d in top if d.keyword == "service"]
        for d in top:
            kw = d.keyword
            if kw == "acl" and d.args and d.children is not None:
                self.acls[d.args[0]] = [c.name for c in d.children] + [
                    a for c in d.children for a in c.args
                ]
            elif kw == "backend" and d.args and d.children is not None:
                self.backends[d.args[0]] = d
            elif kw == "alive" and d.args:
                self.alive = int(_seconds(d.args[0]) or DEFAULT_ALIVE)
            elif kw in {"timeout", "connto", "wstimeout"} and d.args:
                value = _seconds(d.args[0])
                if value:
                    self.timeouts[kw] = value
            elif kw == "client" and d.args:
                self.client = _seconds(d.args[0])
            elif kw == "grace" and d.args:
                seconds = _seconds(d.args[0])
                if seconds is not None:
                    self.out.global_["grace"] = _dur(seconds) if seconds else 0
            elif kw in {"user", "group"} and d.args:
                self.out.global_[kw] = d.args[0]
            elif kw == "pidfile" and d.args:
                self.out.global_["pidfile"] = d.args[0]
        # Pound's worker threads use every core; lbproxy does with a worker process per core.
        self.out.global_.setdefault("workers", "auto")
        for d in top:
            kw = d.keyword
            if kw in {"listenhttp", "listenhttps"}:
                self._listener(d, services)
            elif kw in GLOBAL_READ_FIRST:
                continue
            elif kw == "trustedip":
                self.note(
                    d,
                    "a global TrustedIP: set forwardfor: {trusted: [...]} on each virtual server",
                    traffic=False,
                )
            elif kw == "logfacility" and d.args and d.args[0] != "-":
                self.out.global_.setdefault("log", []).append(
                    {"target": "unix:///dev/log", "facility": d.args[0]}
                )
            elif kw in _GLOBAL_NOT_NEEDED:
                self.note(
                    d,
                    "a setting of Pound's process that lbproxy does not need or sets itself",
                    traffic=False,
                )
            else:
                self.note(d, "unknown to the importer", traffic=False)
        return self.out

    # ---- listeners
    def _listener(self, d: Directive, top_services: list[Directive]) -> None:
        https = d.keyword == "listenhttps"
        name = d.args[0] if d.args else ("https" if https else "http")
        host = d.arg("address") or "0.0.0.0"
        port_text = d.arg("port") or ("443" if https else "80")
        if ":" in host and host.count(":") == 1 and not d.arg("port"):
            host, port_text = host.split(":")
        if host in {"*", ""}:
            host = "0.0.0.0"
        if not port_text.isdigit():
            self.note(d, f"port {port_text} is not a number; this listener was left out")
            return
        bind_address = address(host, int(port_text))
        vs_label = label(
            f"{name}" if d.args else f"{name}-{port_text}", self.vs_labels | self.pool_names
        )
        vs: dict[str, Any] = {"label": vs_label}
        bind: Any = bind_address
        tls: dict[str, Any] = {}
        methods_level = XHTTP_DEFAULT
        req_headers: list[dict[str, Any]] = []
        rsp_headers: list[dict[str, Any]] = []
        error_pages: dict[int, str] = {}
        timeouts: dict[str, str] = {}
        limits: dict[str, Any] = {}
        denies: list[dict[str, Any]] = []
        xhttp_where = d.where
        certs: list[str] = []
        if self.client:
            timeouts["header"] = _dur(self.client)
            timeouts["client_idle"] = _dur(self.client)
        for c in d.children or []:
            kw = c.keyword
            arg = c.args[0] if c.args else ""
            if kw in {"address", "port", "service"}:
                continue
            if kw == "xhttp" and arg.isdigit():
                methods_level = int(arg)
                xhttp_where = c.where
            elif kw == "cert" and https:
                if self.exists(arg):
                    certs.append(arg)
                else:
                    self.note(
                        c,
                        f"certificate {arg} cannot be read here, so this bind serves lbproxy's "
                        f"self-signed certificate / copy it and set tls.certificate",
                    )
            elif kw == "ciphers" and https and c.args:
                tls["ciphers"] = c.args[-1]
            elif kw == "disable" and https:
                if arg.upper() in {"TLSV1_2"}:
                    tls["min_version"] = "1.3"
            elif kw == "clientcert" and https:
                level = int(arg) if arg.isdigit() else 0
                if level in {1, 2}:
                    tls["verify"] = "optional" if level == 1 else "required"
                elif level == 3:
                    self.note(c, "ClientCert 3 (ask, accept any certificate) cannot be carried")
            elif kw in {"calist", "verifylist"} and https:
                if self.exists(arg):
                    tls["client_ca"] = arg
                else:
                    self.note(
                        c, f"{arg} cannot be read here, so client certificates are not asked for"
                    )
            elif kw == "client" and arg:
                seconds = _seconds(arg)
                if seconds:
                    timeouts["header"] = _dur(seconds)
                    timeouts["client_idle"] = _dur(seconds)
            elif kw in {"addheader", "headeradd", "setheader"} and arg:
                hname, sep, value = arg.partition(":")
                if sep:
                    req_headers.append(
                        {"set" if kw == "setheader" else "add": {hname.strip(): value.strip()}}
                    )
                else:
                    self.note(c, "cannot read the header line")
            elif kw in {"headremove", "headerremove", "deleteheader"} and arg:
                removed = _header_name_of(c.args)
                if removed:
                    req_headers.append({"delete": removed})
                else:
                    self.note(c, "only patterns that name one header (^Name:) can be carried")
            elif kw == "errorfile" and len(c.args) >= 2 and c.args[0].isdigit():
                self._error_page(c, int(c.args[0]), c.args[1], error_pages)
            elif re.fullmatch(r"err\d{3}", kw) and arg:
                self._error_page(c, int(kw[3:]), arg, error_pages)
            elif kw == "maxrequest" and arg.isdigit():
                limits["max_body"] = int(arg)
            elif kw == "rewritelocation" and arg:
                vs["rewrite_location"] = arg != "0"
                if arg == "2":
                    self.note(
                        c,
                        "RewriteLocation 2 (also when the host differs only by port): lbproxy "
                        "rewrites as with 1",
                        traffic=False,
                    )
            elif kw == "checkurl" and arg:
                try:
                    denies.append(
                        {"if": {"not": {"path_regex": _with_icase(arg, False)}}, "status": 501}
                    )
                except ValueError as error:
                    self.note(c, str(error))
            elif kw == "trustedip":
                nets = (
                    c.args
                    if c.children is None
                    else [x for ch in c.children for x in [ch.name, *ch.args]]
                )
                nets = [n for n in nets if re.fullmatch(r"[0-9a-fA-F.:/]+", n)]
                if nets:
                    vs["forwardfor"] = {"trusted": nets}
                else:
                    self.note(c, "cannot read the networks")
            elif kw in {
                "loglevel",
                "logformat",
                "nohttps11",
                "sslhonorcipherorder",
                "sslallowclientrenegotiation",
                "name",
                "linebuffersize",
                "maxuri",
                "headeroption",
                "rewriteerrors",
                "socketfrom",
                "acme",
            }:
                self.note(
                    c,
                    "not needed or not available in lbproxy",
                    traffic=kw in {"maxuri", "headeroption", "rewriteerrors", "acme"},
                )
            elif kw == "rewritedestination":
                self.note(c, "the Destination header (WebDAV) is not rewritten")
            elif kw == "rewrite":
                self.note(
                    c, "Rewrite blocks cannot be carried / use request_headers and response_headers"
                )
            else:
                self.note(c, "not carried")
        if https:
            if certs:
                tls["certificate"] = certs[0] if len(certs) == 1 else certs
            if "verify" in tls and "client_ca" not in tls:
                tls.pop("verify")
            bind = {"address": bind_address, "tls": tls or True}
        vs["bind"] = bind
        vs["xhttp"] = (
            methods_level  # written even at Pound's default: lbproxy's default is every method
        )
        services = [s for s in (d.children or []) if s.keyword == "service"] + top_services
        pool_data, rules, rule_comments, redirects = self._services(d, services, vs_label, denies)
        if pool_data is None:
            vs.update(placeholder_pool())
            self.report.add(
                d.where,
                d.name,
                "no service matches every request: the others get 503 from a pool whose one server "
                "is in maintenance, as Pound answers them",
                traffic=False,
            )
        else:
            pool, pool_timeouts = pool_data
            vs.update(pool)
            timeouts.update(pool_timeouts)
        if timeouts:
            vs["timeouts"] = {
                k: timeouts[k]
                for k in ("connect", "header", "client_idle", "server", "tunnel")
                if k in timeouts
            }
        put_nonempty(
            vs,
            redirects=redirects,
            deny=denies,
            request_headers=req_headers,
            response_headers=rsp_headers,
            error_pages=error_pages,
            limits=limits,
            rules=rules,
        )
        forwards = None
        if pool_data is not None and not rules and not redirects and len(services) >= 1:
            servers = pool_data[0].get("real_servers", [])
            forwards = [s["address"] for s in servers]
        out = VirtualServerOut(
            vs,
            f"{d.where}: {d.name}" + (f" {d.args[0]}" if d.args else ""),
            rule_comments,
            forwards,
        )
        out.xhttp_where = xhttp_where
        self.out.virtual_servers.append(out)

    def _error_page(self, d: Directive, code: int, path: str, pages: dict[int, str]) -> None:
        if self.exists(path):
            pages[code] = path
        else:
            self.note(
                d,
                f"{path} cannot be read here / copy it next to the YAML and add error_pages: "
                f"{{{code}: FILE}}",
            )

    # ---- services
    def _services(
        self,
        listener: Directive,
        services: list[Directive],
        vs_label: str,
        denies: list[dict[str, Any]],
    ) -> tuple[
        tuple[dict[str, Any], dict[str, str]] | None,
        list[dict[str, Any]],
        list[str],
        list[dict[str, Any]],
    ]:
        default: tuple[dict[str, Any], dict[str, str]] | None = None
        default_where: Directive | None = None
        rules: list[dict[str, Any]] = []
        comments: list[str] = []
        redirects: list[dict[str, Any]] = []
        earlier: list[Condition] = []  # conditions of services before this one
        for service in services:
            if default is not None:
                assert default_where is not None
                self.report.add(
                    service.where,
                    service.name,
                    f"never used: the service at line {default_where.where.line} matches every "
                    f"request first (as in Pound)",
                    traffic=False,
                )
                continue
            disabled = service.arg("disabled")
            if disabled in {"1", "yes", "true", "on"}:
                self.report.add(
                    service.where, service.name, "disabled in Pound too; left out", traffic=False
                )
                continue
            cond = self._service_condition(service)
            if cond is None or cond is NEVER:
                continue
            redirect = service.first("redirect")
            error = service.first("error")
            if redirect is not None or error is not None:
                guard = all_of([negate(c) for c in earlier] + [cond])
                if redirect is not None:
                    entry = self._redirect(redirect)
                    if entry is not None:
                        redirects.append(with_if(entry, guard))
                if error is not None and error.args and error.args[0].isdigit():
                    denies.append(with_if({"status": int(error.args[0])}, guard))
                earlier.append(cond)
                if cond is ALWAYS:
                    default_where = service
                    # A catch-all redirect or error: requests never reach a pool.
                    default = (
                        {
                            "health_check": {"enabled": False},
                            "real_servers": [
                                {"label": "none", "address": "127.0.0.1:1", "state": "maint"}
                            ],
                        },
                        {},
                    )
                continue
            pool = self._pool(service)
            if pool is None:
                continue
            if cond is ALWAYS:
                default = pool
                default_where = service
                continue
            name = self._pool_name(service, vs_label, pool[0])
            rules.append(with_if({"pool": name}, cond))
            comments.append(
                f"{service.where}: {service.name}" + (f" {service.args[0]}" if service.args else "")
            )
            earlier.append(cond)
            if pool[1]:
                self.note(
                    service,
                    "backend timeouts of a service reached by a rule: lbproxy keeps timeouts per "
                    "virtual server",
                    traffic=False,
                )
        return default, rules, comments, redirects

    def _pool_name(self, service: Directive, vs_label: str, pool: dict[str, Any]) -> str:
        key = id(service)
        if key in self.service_pools:
            return self.service_pools[key]
        base = service.args[0] if service.args else f"{vs_label}-svc{service.where.line}"
        name = label(base, self.pool_names | self.vs_labels)
        self.pool_names.add(name)
        self.service_pools[key] = name
        self.out.pools[name] = (
            pool,
            f"{service.where}: {service.name}" + (f" {service.args[0]}" if service.args else ""),
        )
        return name

    def _service_condition(self, service: Directive) -> Condition | None:
        conds: list[Condition] = []
        for c in service.children or []:
            try:
                cond = self._match(c)
            except ValueError as error:
                self.note(c, f"{error}; the service was left out")
                return None
            if cond is not None:
                conds.append(cond)
        return all_of(conds)

    def _match(self, c: Directive, negated: bool = False) -> Condition | None:
        """The condition of one matching directive, None for other directives."""
        kw = c.keyword
        if kw == "not" and c.args:
            inner = Directive(c.args[0].lower(), c.args[1:], c.where, c.args[0], c.children)
            cond = self._match(inner)
            return negate(cond) if cond is not None else None
        if kw == "match":
            op = (c.args[0] if c.args else "AND").upper()
            parts = [p for p in (self._match(x) for x in c.children or []) if p is not None]
            return all_of(parts) if op == "AND" else any_of(parts)
        if kw in MATCH_KEYWORDS:
            opts = [a for a in c.args if a.startswith("-")]
            values = [a for a in c.args if not a.startswith("-")]
            if "-file" in opts or "-filewatch" in opts:
                raise ValueError("patterns read from a file cannot be carried")
            if kw in {"header", "headrequire", "headdeny"}:
                if len(values) == 2:
                    cond = self._header_match(values[0], values[1], opts)
                else:
                    cond = self._header_line(values[0] if values else "", opts)
                return negate(cond) if kw == "headdeny" else cond
            if kw == "queryparam" and len(values) == 2:
                return (
                    {"query": {"name": values[0], "value": values[1]}}
                    if "-exact" in opts
                    else _regex_unsupported("QueryParam with a pattern")
                )
            if not values or not values[-1]:
                raise ValueError(f"{c.name} without a pattern")
            pattern = values[-1]
            if kw == "host":
                return _host_match(pattern, opts)
            if kw in {"url", "path"}:
                if kw == "url" and "?" in pattern:
                    self.note(
                        c,
                        "URL patterns that look at the query string are matched against the path "
                        "only",
                        traffic=True,
                    )
                return _path_match(pattern, opts, default_icase=False)
            if kw == "method":
                return (
                    {"method": [pattern.upper()]}
                    if not opts or opts == ["-exact"]
                    else _regex_unsupported("Method with a pattern")
                )
            raise ValueError(f"{c.name} cannot be carried")
        if kw == "acl" and c.args:
            nets = self.acls.get(c.args[-1])
            if nets is None:
                raise ValueError(f"no ACL named {c.args[-1]}")
            return {"src": nets}
        if kw == "acl" and c.children is not None:
            return {"src": [x for ch in c.children for x in [ch.name, *ch.args]]}
        if kw in {"basicauth", "clientcert", "stringmatch", "tbf"}:
            raise ValueError(f"{c.name} cannot be carried as a condition")
        return None

    def _header_line(self, pattern: str, opts: list[str]) -> Condition:
        match = re.fullmatch(
            r"\^?\(?([A-Za-z0-9_-]+)\)?:\s*(?:\\s\*|\\s\+|\[ \\t\]\*|\s|\\ )*(.*)",
            pattern,
            re.DOTALL,
        )
        if match is None:
            raise ValueError(f"header pattern {pattern!r} does not name one header (Name: value)")
        return self._header_match(match.group(1), match.group(2) or ".*", opts)

    def _header_match(self, name: str, pattern: str, opts: list[str]) -> Condition:
        icase = "-case" not in opts
        if name.lower() == "host":
            if "-exact" in opts:
                return {"host": pattern.lower()}
            return {"host_regex": _with_icase(_pattern(pattern, opts), True)}
        if pattern in {".*", ""}:
            return {"header": {"name": name}}
        return {"header": {"name": name, "regex": _with_icase(_pattern(pattern, opts), icase)}}

    def _redirect(self, d: Directive) -> dict[str, Any] | None:
        args = d.args
        code = 302
        if len(args) >= 2 and args[0].isdigit():
            code = int(args[0])
            args = args[1:]
        if not args:
            self.note(d, "a Redirect without a URL")
            return None
        url = args[0]
        if code not in REDIRECT_CODES:
            self.note(d, f"code {code}: 302 was used")
            code = 302
        if re.search(r"\$\d|\$\{|%\[", url):
            self.note(d, "a redirect URL built from the request ($N, %[...]) cannot be carried")
            return None
        match = re.fullmatch(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/]+)(/.*)?", url)
        if match is not None and match.group(2) in {None, "/"}:
            # Pound: a "pure" host gets the original request path appended.
            return {"code": code, "prefix": match.group(1)}
        return {"code": code, "location": url}

    # ---- pools
    def _pool(self, service: Directive) -> tuple[dict[str, Any], dict[str, str]] | None:
        backends = service.find("backend")
        for use in service.find("usebackend"):
            named = self.backends.get(use.args[0]) if use.args else None
            if named is None:
                self.note(use, "no backend of that name")
            else:
                backends.append(named)
        emergencies = service.find("emergency")
        pool: dict[str, Any] = {}
        timeouts: dict[str, str] = {}
        servers: list[dict[str, Any]] = []
        taken: set[str] = set()
        for index, b in enumerate(backends, start=1):
            server = self._server(b, taken, index, timeouts)
            if server is not None:
                servers.append(server)
        if not servers:
            self.report.add(
                service.where,
                service.name,
                "no backend lbproxy can carry; the service was left out",
            )
            return None
        fallbacks = []
        for e in emergencies:
            server = self._server(e, set(), 0, {})
            if server is not None:
                fallbacks.append(
                    {"address": server["address"], "health_check": {"interval": f"{self.alive}s"}}
                )
        session = service.first("session")
        if session is not None:
            persistence = self._session(session)
            if persistence:
                pool["persistence"] = persistence
        pool["health_check"] = {"interval": f"{self.alive}s", "rise": 1, "fall": 1}
        if fallbacks:
            pool["fallback"] = fallbacks[0] if len(fallbacks) == 1 else fallbacks
        pool["real_servers"] = servers
        for c in service.children or []:
            if c.keyword in SERVICE_READ_ELSEWHERE:
                continue
            if c.keyword in {"balancer"}:
                self.note(c, "lbproxy balances by weighted round robin here", traffic=False)
            elif c.keyword in {"rewritelocation"}:
                self.note(
                    c,
                    "RewriteLocation per service: lbproxy sets it per virtual server",
                    traffic=False,
                )
            elif c.keyword == "ignorecase":
                self.note(c, "IgnoreCase: write case-insensitive patterns ((?i)) instead")
            else:
                self.note(c, "not carried")
        return pool, timeouts

    def _server(
        self, b: Directive, taken: set[str], index: int, timeouts: dict[str, str]
    ) -> dict[str, Any] | None:
        host = b.arg("address")
        port = b.arg("port")
        if host is None:
            self.note(b, "a backend without Address (or a unix socket) cannot be carried")
            return None
        if host.startswith("/"):
            self.note(b, "unix socket backends cannot be carried")
            return None
        if port is None and ":" in host and host.count(":") == 1:
            host, port = host.split(":")
        server: dict[str, Any] = {"label": label(f"backend{index}" if index else "fallback", taken)}
        server["address"] = address(host, int(port) if port and port.isdigit() else 80)
        for c in b.children or []:
            kw = c.keyword
            arg = c.args[0] if c.args else ""
            if kw in {"address", "port"}:
                continue
            if kw in {"priority", "weight"} and arg.isdigit():
                server["weight"] = min(int(arg), 256)
                if int(arg) > 256:
                    self.note(c, "weights above 256 were cut to 256", traffic=False)
            elif kw == "haport" and arg:
                parts = c.args
                server["check_address"] = (
                    f"{parts[0]}:{parts[1]}"
                    if len(parts) == 2
                    else (f"{host}:{arg}" if arg.isdigit() else arg)
                )
            elif kw == "https":
                server["tls"] = {"verify": "none"}
            elif kw in {"timeout", "connto", "wstimeout"} and arg:
                seconds = _seconds(arg)
                if seconds:
                    timeouts[
                        {"timeout": "server", "connto": "connect", "wstimeout": "tunnel"}[kw]
                    ] = _dur(seconds)
            elif kw == "disabled" and arg in {"1", "yes", "true", "on"}:
                server["state"] = "maint"
            elif kw == "cert" and arg:
                if self.exists(arg):
                    server.setdefault("tls", {"verify": "none"})["certificate"] = arg
                else:
                    self.note(c, f"client certificate {arg} cannot be read here")
            elif kw in {"ciphers", "disable", "servername"}:
                if kw == "servername" and arg:
                    server.setdefault("tls", {"verify": "none"})["sni"] = arg
                else:
                    self.note(c, "not needed or not available in lbproxy", traffic=False)
            elif kw == "resolve":
                self.note(c, "lbproxy resolves host names when it connects", traffic=False)
            else:
                self.note(c, "not carried")
        for kw, key in (("timeout", "server"), ("connto", "connect"), ("wstimeout", "tunnel")):
            if kw in self.timeouts and key not in timeouts:
                timeouts[key] = _dur(self.timeouts[kw])
        return server

    def _session(self, s: Directive) -> dict[str, Any] | None:
        kind = (s.arg("type") or "").upper()
        ttl = _seconds(s.arg("ttl"))
        if kind == "IP":
            source: dict[str, Any] = {"mask": 32, "mask6": 128}
            if ttl:
                source["timeout"] = _dur(ttl)
            return {"source": source}
        if kind == "COOKIE":
            name = s.arg("id") or "SESSION"
            self.report.add(
                s.where,
                "Session COOKIE",
                f"carried as lbproxy's own cookie SERVERID (the server's label) instead of "
                f"following the application's cookie {name}: clients stay on their server "
                f"either way; the TTL is the browser session",
                traffic=False,
            )
            return {"cookie": "SERVERID" if name.upper() != "SERVERID" else "LBSERVERID"}
        self.report.add(
            s.where,
            f"Session {kind}",
            "lbproxy keeps sessions by its own cookie or by the client address / use persistence: "
            "{cookie: SERVERID} or {source: true}",
        )
        return None


def _regex_unsupported(what: str) -> Condition:
    raise ValueError(f"{what} cannot be carried")


def _with_icase(pattern: str, icase: bool) -> str:
    """The pattern, case-insensitive when asked; ValueError when Python's re cannot read it."""
    result = f"(?i){pattern}" if icase and not pattern.startswith("(?i)") else pattern
    try:
        re.compile(result)
    except re.error as error:
        raise ValueError(
            f"{pattern!r} is not a regular expression lbproxy reads: {error}"
        ) from None
    return result


def _pattern(pattern: str, opts: list[str]) -> str:
    if "-exact" in opts:
        return f"^{re.escape(pattern)}$"
    if "-beg" in opts:
        return f"^{re.escape(pattern)}"
    if "-end" in opts:
        return f"{re.escape(pattern)}$"
    if "-contain" in opts:
        return re.escape(pattern)
    return pattern


def _host_match(pattern: str, opts: list[str]) -> Condition:
    if "-re" in opts:
        return {"host_regex": _with_icase(pattern, "-case" not in opts)}
    if "-beg" in opts:
        return {"host_prefix": pattern.lower()}
    if "-end" in opts:
        return {"host_suffix": pattern.lower()}
    if "-contain" in opts:
        return {"host_regex": "(?i)" + re.escape(pattern)}
    return {"host": pattern.lower()}


def _path_match(pattern: str, opts: list[str], default_icase: bool) -> Condition:
    icase = "-icase" in opts or (default_icase and "-case" not in opts)
    if not icase:
        if "-exact" in opts:
            return {"path": pattern}
        if "-beg" in opts:
            return {"path_prefix": pattern}
        if "-end" in opts:
            return {"path_suffix": pattern}
    return {"path_regex": _with_icase(_pattern(pattern, opts), icase)}


def _header_name_of(args: list[str]) -> str | None:
    values = [a for a in args if not a.startswith("-")]
    if not values:
        return None
    match = re.fullmatch(r"\^?\(?([A-Za-z0-9_-]+)\)?:?(?:\.\*|\s*)", values[-1])
    return match.group(1) if match else None
