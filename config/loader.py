"""The YAML config file -> ``ProxyConfig``, with every problem reported at once.

Pure: nothing is resolved, bound or opened here except the config file itself in ``load_file``.
``yaml.compose`` gives nodes with their marks; we walk them ourselves so each problem reads
``FILE:LINE:COL: key.path: message`` (1-based), and we keep going after a problem so the
operator sees all of them in one run (HAProxy ``-c`` stops at the first fatal one).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from .model import (
    Address,
    AdminState,
    Balance,
    Bind,
    CertificateSpec,
    CookiePersistence,
    GlobalSettings,
    HeaderMatch,
    HealthCheck,
    HttpCheck,
    Mode,
    Persistence,
    Pool,
    ProxyConfig,
    RealServer,
    Rule,
    SourcePersistence,
    StatsSettings,
    Timeouts,
    TlsSettings,
    Verify,
    VirtualService,
)
from .nodes import STR_TAG, Entry, Mapping, Problems, Reader, describe, join
from .scalars import parse_address, parse_duration

E = TypeVar("E", bound=enum.Enum)

__all__ = ["ConfigError", "load_file", "load_text", "parse_address", "parse_duration"]

# A config is a few KiB; reading more than this means a wrong file (or /dev/zero).
MAX_CONFIG_BYTES = 10 * 1024 * 1024

# HAProxy accepts server weights 0..256; 0 drains the server.
MAX_WEIGHT = 256
MAX_MASK4 = 32
MAX_MASK6 = 128
# Stick-table sizes beyond this would cost gigabytes; HAProxy examples stay well below.
MAX_SOURCE_TABLE_SIZE = 10_000_000
# RFC 9110 status codes are three digits; 1xx..5xx are the defined classes.
MIN_STATUS = 100
MAX_STATUS = 599

FALLBACK_LABEL = "fallback"  # the label the fallback server gets in logs, stats and cookies
LOG_LEVELS = ("debug", "info", "warning", "error")
TLS_VERSIONS = ("1.2", "1.3")
SAMESITE_VALUES = ("Strict", "Lax", "None")

# Labels end up in cookie values, log fields and "pool/label" admin commands: no spaces,
# quotes, ';', ',', '/' or '=' that would need escaping anywhere.
_LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
# RFC 9110 token: header names, cookie names, methods.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RULE_HOST_RE = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_DOMAIN_RE = re.compile(r"\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_PATH_RE = re.compile(r"/[\x21-\x7e]*")  # printable, no spaces: it goes into a request line

_UNQUOTED_IPV6_RE = re.compile(r"(^|[\s,{\[])\[[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*\]")

TOP_KEYS = ("global", "virtual_servers", "pools")
GLOBAL_KEYS = ("state_dir", "grace", "log_level", "access_log", "stats")
STATS_KEYS = ("bind", "path")
POOL_KEYS = ("balance", "persistence", "health_check", "fallback", "real_servers")
VS_KEYS = (
    "label",
    "bind",
    "mode",
    "forwardfor",
    "timeouts",
    "redirect_to_https",
    "hsts",
    "rewrite_location",
    "rules",
    *POOL_KEYS,
)
BIND_KEYS = ("address", "tls")
TLS_KEYS = (
    "certificate",
    "min_version",
    "ciphers",
    "ciphersuites",
    "client_ca",
    "verify",
    "strict_sni",
    "handshake_timeout",
)
CERT_KEYS = ("path", "default")
TIMEOUT_KEYS = ("connect", "header", "client_idle", "server", "tunnel")
COOKIE_KEYS = ("cookie", "httponly", "secure", "samesite", "domain", "path")
PERSISTENCE_KEYS = (*COOKIE_KEYS, "source")
SOURCE_KEYS = ("timeout", "mask", "mask6", "size")
HEALTH_KEYS = ("enabled", "interval", "rise", "fall", "timeout", "http")
HTTP_CHECK_KEYS = ("path", "method", "expect", "body", "host")
SERVER_KEYS = ("label", "address", "weight", "state", "check_address")
RULE_KEYS = ("pool", "host", "path_prefix", "path_regex", "header")
RULE_CONDITIONS = ("host", "path_prefix", "path_regex", "header")
HEADER_KEYS = ("name", "value")


class ConfigError(Exception):
    """The config cannot be used. ``problems`` holds every problem found, one line each:
    ``FILE:LINE:COL: key.path: message``; ``str()`` is those lines joined by newlines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_file(path: str) -> ProxyConfig:
    """Read and check the YAML file at ``path``. Raises ConfigError (also when unreadable)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError([f"{path}:1:1: (file): cannot read the file: {reason}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{path}:1:1: (file): larger than {MAX_CONFIG_BYTES} bytes; not a config file?"]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [f"{path}:{line}:{column}: (file): not UTF-8 text (byte {data[exc.start]:#04x})"]
        ) from None
    return _load(text, path)


def load_text(text: str, source: str) -> ProxyConfig:
    """Check YAML ``text``; ``source`` names it in messages and anchors relative paths."""
    return _load(text, source)


def _load(text: str, source: str) -> ProxyConfig:
    problems = Problems(source)
    root = _compose(text, problems)
    if root is None:
        raise ConfigError(problems.sorted_texts())
    base_dir = os.path.dirname(os.path.abspath(source))
    config = _Builder(problems, base_dir, source).build(root)
    if problems.items or config is None:
        raise ConfigError(problems.sorted_texts())
    return config


def _compose(text: str, problems: Problems) -> Node | None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problems.at(line, column, "(yaml)", _yaml_message(exc, text))
        return None
    except yaml.YAMLError as exc:  # reader errors (control characters) carry no marks
        position = getattr(exc, "position", 0)
        before = text[:position]
        line = before.count("\n") + 1
        column = position - (before.rfind("\n") + 1) + 1
        reason = getattr(exc, "reason", None) or "invalid YAML"
        character = getattr(exc, "character", None)
        if isinstance(character, int):
            reason = f"{reason} (character {character:#04x})"
        problems.at(line, column, "(yaml)", str(reason))
        return None
    if root is None or (isinstance(root, ScalarNode) and root.tag.endswith(":null")):
        problems.at(1, 1, "(file)", "the file is empty; expected a mapping with virtual_servers")
        return None
    return root


def _yaml_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    """PyYAML's context and problem as one line, with hints for the two usual mistakes."""
    message = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        where = f" (line {exc.context_mark.line + 1})" if exc.context_mark is not None else ""
        message = f"{exc.context}{where}, {exc.problem}"
    if "'\\t'" in message:
        message = message.replace("character '\\t'", "a tab").replace("'\\t'", "a tab")
        message += " (YAML indents with spaces only)"
    mark = exc.problem_mark
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and _UNQUOTED_IPV6_RE.search(lines[mark.line]):
        # `bind: [::1]:80` starts a YAML flow list; the parser's message never says so.
        message += '; quote IPv6 addresses: "[::1]:80"'
    return message


@dataclass(frozen=True, slots=True)
class _BindSeen:
    address: Address
    line: int
    owner: str  # "virtual server 'www'" or "the stats page"


class _Builder(Reader):
    """One pass over the document; each method returns None when its part had a problem."""

    def __init__(self, problems: Problems, base_dir: str, source: str) -> None:
        super().__init__(problems)
        self.base_dir = base_dir
        self.source = source
        self.binds: list[_BindSeen] = []

    # -- top level ----------------------------------------------------------------------------

    def build(self, root: Node) -> ProxyConfig | None:
        if not isinstance(root, MappingNode):
            self.problem(
                root,
                "(top level)",
                f"expected a mapping with virtual_servers, got {describe(root)}",
            )
            return None
        top = self.mapping(root, "", TOP_KEYS, required=("virtual_servers",))
        if top is None:
            return None
        global_entry = top.get("global")
        settings = self.global_settings(global_entry) if global_entry else self.default_global()

        pools: dict[str, Pool] = {}
        pool_names: dict[str, Entry] = {}
        pools_entry = top.get("pools")
        if pools_entry is not None:
            pools_map = self.mapping(pools_entry.value, pools_entry.path, None)
            for entry in pools_map or ():
                if self.label_text(entry.key, entry.path, entry.key.value, "pool name"):
                    pool_names[entry.key.value] = entry
                pool = self.named_pool(entry)
                if pool is not None:
                    pools[pool.name] = pool

        services: list[VirtualService] = []
        vs_entry = top.get("virtual_servers")
        if vs_entry is not None:
            items = self.sequence(vs_entry.value, vs_entry.path, allow_empty=False)
            labels: dict[str, Node] = {}
            for index, item in enumerate(items or ()):
                vs = self.virtual_service(item, f"virtual_servers[{index}]", pool_names, labels)
                if vs is not None:
                    services.append(vs)
            for name, entry in pool_names.items():
                if name in labels:
                    line = labels[name].start_mark.line + 1
                    self.problem(
                        entry.key,
                        entry.path,
                        f"pool name {name!r} is also the label of a virtual server (line {line}), "
                        "whose own pool has that name; choose another name",
                    )
        if settings is None or self.problems.items:
            return None
        return ProxyConfig(
            virtual_servers=tuple(services), pools=pools, global_=settings, source=self.source
        )

    def default_global(self) -> GlobalSettings:
        return GlobalSettings(state_dir=self.path_in_config(GlobalSettings().state_dir))

    def global_settings(self, entry: Entry) -> GlobalSettings | None:
        m = self.mapping(entry.value, entry.path, GLOBAL_KEYS)
        if m is None:
            return None
        defaults = GlobalSettings()
        state_dir = self.path_value(m.get("state_dir"), defaults.state_dir)
        grace = self.opt_duration(m.get("grace"), defaults.grace, positive=False)
        log_level = self.opt_choice(m.get("log_level"), LOG_LEVELS, defaults.log_level)
        access_log = self.opt_bool(m.get("access_log"), defaults.access_log)
        stats: StatsSettings | None = None
        stats_entry = m.get("stats")
        if stats_entry is not None:
            stats = self.stats(stats_entry)
        if None in (state_dir, grace, log_level, access_log):
            return None
        assert state_dir is not None and grace is not None
        assert log_level is not None and access_log is not None
        return GlobalSettings(
            state_dir=state_dir,
            grace=grace,
            log_level=log_level,
            access_log=access_log,
            stats=stats,
        )

    def stats(self, entry: Entry) -> StatsSettings | None:
        m = self.mapping(entry.value, entry.path, STATS_KEYS, required=("bind",))
        if m is None:
            return None
        bind_entry = m.get("bind")
        address = self.address(bind_entry.value, bind_entry.path) if bind_entry else None
        if address is not None and bind_entry is not None:
            self.note_bind(address, bind_entry.value, bind_entry.path, "the stats page")
        path = self.url_path(m.get("path"), "/")
        if address is None or path is None:
            return None
        return StatsSettings(bind=address, path=path)

    # -- pools --------------------------------------------------------------------------------

    def named_pool(self, entry: Entry) -> Pool | None:
        m = self.mapping(entry.value, entry.path, POOL_KEYS)
        if m is None:
            return None
        return self.pool(m, entry.key.value, "named pool")

    def pool(self, m: Mapping, name: str, what: str) -> Pool | None:
        balance = self.opt_enum(m.get("balance"), Balance, Balance.ROUNDROBIN)
        persistence: Persistence | None = None
        persistence_entry = m.get("persistence")
        if persistence_entry is not None:
            persistence = self.persistence(persistence_entry)
        health: HealthCheck | None = HealthCheck()
        health_entry = m.get("health_check")
        if health_entry is not None:
            health = self.health_check(health_entry)
        fallback: RealServer | None = None
        fallback_entry = m.get("fallback")
        if fallback_entry is not None:
            address = self.address(fallback_entry.value, fallback_entry.path)
            if address is not None:
                fallback = RealServer(label=FALLBACK_LABEL, address=address, backup=True)
        servers = self.real_servers(m, what)
        if balance is None or health is None or servers is None:
            return None
        return Pool(
            name=name,
            real_servers=servers,
            balance=balance,
            fallback=fallback,
            persistence=persistence,
            health_check=health,
        )

    def real_servers(self, m: Mapping, what: str) -> tuple[RealServer, ...] | None:
        entry = m.get("real_servers")
        if entry is None:
            self.problem(
                m.node,
                join(m.path, "real_servers"),
                f"required key is missing: a {what} needs at least one real server",
            )
            return None
        items = self.sequence(entry.value, entry.path)
        if items is None:
            return None
        if not items:
            self.problem(
                entry.value,
                entry.path,
                f"must not be empty: a {what} needs at least one real server",
            )
            return None
        servers: list[RealServer] = []
        seen: dict[str, Node] = {}
        ok = True
        for index, item in enumerate(items):
            server = self.real_server(item, f"{entry.path}[{index}]", seen)
            if server is None:
                ok = False
            else:
                servers.append(server)
        return tuple(servers) if ok else None

    def real_server(self, node: Node, path: str, seen: dict[str, Node]) -> RealServer | None:
        m = self.mapping(node, path, SERVER_KEYS, required=("label", "address"))
        if m is None:
            return None
        label = self.label(m.get("label"), "real server label", seen)
        if label == FALLBACK_LABEL:
            label_entry = m.get("label")
            assert label_entry is not None
            self.problem(
                label_entry.value,
                label_entry.path,
                f"the label {FALLBACK_LABEL!r} is reserved for the pool's fallback server",
            )
            label = None
        address_entry = m.get("address")
        address = self.address(address_entry.value, address_entry.path) if address_entry else None
        weight = self.opt_int(m.get("weight"), 1, 0, MAX_WEIGHT)
        state = self.opt_enum(m.get("state"), AdminState, AdminState.READY)
        check_address: Address | None = None
        check_entry = m.get("check_address")
        if check_entry is not None:
            # Without a port, checks go to the server's own port on another host.
            port = address.port if address is not None else 1
            check_address = self.address(check_entry.value, check_entry.path, port)
            if check_address is None:
                return None
        if label is None or address is None or weight is None or state is None:
            return None
        return RealServer(
            label=label, address=address, weight=weight, state=state, check_address=check_address
        )

    def persistence(self, entry: Entry) -> Persistence | None:
        m = self.mapping(entry.value, entry.path, PERSISTENCE_KEYS)
        if m is None:
            return None
        source_entry = m.get("source")
        if source_entry is not None:
            others = [e for e in m if e.key.value != "source"]
            for other in others:
                self.problem(
                    other.key, other.path, "cookie settings do not apply to source persistence"
                )
            source = self.source_persistence(source_entry)
            return None if others else source
        if "cookie" not in m:
            self.problem(
                entry.value,
                entry.path,
                "expected 'cookie: NAME' (cookie persistence) or 'source: {...}' (source address)",
            )
            return None
        return self.cookie_persistence(m)

    def cookie_persistence(self, m: Mapping) -> CookiePersistence | None:
        defaults = CookiePersistence()
        name = self.token(m.get("cookie"), defaults.name)
        httponly = self.opt_bool(m.get("httponly"), defaults.httponly)
        secure: bool | None = defaults.secure
        secure_entry = m.get("secure")
        if secure_entry is not None:
            secure = self.boolean(secure_entry.value, secure_entry.path)
        samesite = self.opt_choice(m.get("samesite"), SAMESITE_VALUES, None)
        samesite_entry = m.get("samesite")
        if samesite == "None" and secure is False and samesite_entry is not None:
            self.problem(
                samesite_entry.value,
                samesite_entry.path,
                "browsers reject SameSite=None without Secure; drop 'secure: false'",
            )
            samesite = None
        domain: str | None = None
        domain_entry = m.get("domain")
        if domain_entry is not None:
            domain = self.string(domain_entry.value, domain_entry.path)
            if domain is not None:
                domain = domain.lower()
                if not _DOMAIN_RE.fullmatch(domain):
                    self.problem(domain_entry.value, domain_entry.path, "not a valid domain name")
                    domain = None
        path = self.url_path(m.get("path"), defaults.path)
        if name is None or httponly is None or path is None or self.failed_since(m):
            return None
        return CookiePersistence(
            name=name,
            httponly=httponly,
            secure=secure,
            samesite=samesite,
            domain=domain,
            path=path,
        )

    def source_persistence(self, entry: Entry) -> SourcePersistence | None:
        node = entry.value
        if isinstance(node, ScalarNode) and node.tag != STR_TAG:
            if self.boolean(node, entry.path):
                return SourcePersistence()
            if node.tag.endswith("bool"):
                self.problem(node, entry.path, "use 'source: true' or leave persistence out")
            return None
        m = self.mapping(node, entry.path, SOURCE_KEYS)
        if m is None:
            return None
        defaults = SourcePersistence()
        timeout = self.opt_duration(m.get("timeout"), defaults.timeout)
        mask4 = self.opt_int(m.get("mask"), defaults.mask4, 0, MAX_MASK4)
        mask6 = self.opt_int(m.get("mask6"), defaults.mask6, 0, MAX_MASK6)
        size = self.opt_int(m.get("size"), defaults.size, 1, MAX_SOURCE_TABLE_SIZE)
        if timeout is None or mask4 is None or mask6 is None or size is None:
            return None
        return SourcePersistence(timeout=timeout, mask4=mask4, mask6=mask6, size=size)

    def health_check(self, entry: Entry) -> HealthCheck | None:
        m = self.mapping(entry.value, entry.path, HEALTH_KEYS)
        if m is None:
            return None
        defaults = HealthCheck()
        enabled = self.opt_bool(m.get("enabled"), defaults.enabled)
        interval = self.opt_duration(m.get("interval"), defaults.interval)
        rise = self.opt_int(m.get("rise"), defaults.rise, 1)
        fall = self.opt_int(m.get("fall"), defaults.fall, 1)
        timeout = self.opt_duration(m.get("timeout"), defaults.timeout)
        timeout_entry = m.get("timeout")
        if interval is not None and timeout is not None and timeout > interval:
            node = timeout_entry.value if timeout_entry else m.node
            self.problem(
                node,
                join(m.path, "timeout"),
                f"the check timeout ({timeout:g}s) must not exceed the interval ({interval:g}s), "
                "or checks would overlap",
            )
            timeout = None
        http: HttpCheck | None = None
        http_entry = m.get("http")
        if http_entry is not None:
            http = self.http_check(http_entry)
            if http is None:
                return None
        if enabled is None or interval is None or rise is None or fall is None or timeout is None:
            return None
        return HealthCheck(
            enabled=enabled, interval=interval, rise=rise, fall=fall, timeout=timeout, http=http
        )

    def http_check(self, entry: Entry) -> HttpCheck | None:
        m = self.mapping(entry.value, entry.path, HTTP_CHECK_KEYS)
        if m is None:
            return None
        defaults = HttpCheck()
        path = self.url_path(m.get("path"), defaults.path)
        method = self.token(m.get("method"), defaults.method)
        expect = self.opt_int(m.get("expect"), defaults.expect, MIN_STATUS, MAX_STATUS)
        body: str | None = None
        body_entry = m.get("body")
        if body_entry is not None:
            body = self.string(body_entry.value, body_entry.path)
        host: str | None = None
        host_entry = m.get("host")
        if host_entry is not None:
            host = self.string(host_entry.value, host_entry.path)
            if host is not None and not _PATH_RE.fullmatch("/" + host):
                self.problem(host_entry.value, host_entry.path, "must not contain spaces")
                host = None
        if path is None or method is None or expect is None or self.failed_since(m):
            return None
        return HttpCheck(path=path, method=method, expect=expect, body=body, host=host)

    # -- virtual servers ----------------------------------------------------------------------

    def virtual_service(
        self, node: Node, path: str, pool_names: dict[str, Entry], labels: dict[str, Node]
    ) -> VirtualService | None:
        m = self.mapping(node, path, VS_KEYS, required=("label", "bind"))
        if m is None:
            return None
        label = self.label(m.get("label"), "virtual server label", labels)
        owner = f"virtual server {label!r}" if label else path
        bind_entry = m.get("bind")
        binds = self.binds_of(bind_entry, owner) if bind_entry else None
        mode = self.opt_enum(m.get("mode"), Mode, Mode.HTTP)
        forwardfor = self.opt_bool(m.get("forwardfor"), True)
        timeouts = self.timeouts(m.get("timeouts"))
        redirect = self.opt_bool(m.get("redirect_to_https"), False)
        rewrite_location = self.opt_bool(m.get("rewrite_location"), True)
        hsts = self.hsts(m.get("hsts"))
        rules = self.rules(m.get("rules"), pool_names)
        pool = self.pool(m, label or path, "virtual server")
        if (
            label is None
            or binds is None
            or mode is None
            or forwardfor is None
            or timeouts is None
            or redirect is None
            or rewrite_location is None
            or rules is None
            or pool is None
            or self.failed_since(m)
        ):
            return None
        return VirtualService(
            label=label,
            binds=binds,
            pool=pool,
            mode=mode,
            forwardfor=forwardfor,
            timeouts=timeouts,
            rules=rules,
            redirect_to_https=redirect,
            hsts=hsts,
            rewrite_location=rewrite_location,
        )

    def binds_of(self, entry: Entry, owner: str) -> tuple[Bind, ...] | None:
        node = entry.value
        items: list[tuple[Node, str]]
        if isinstance(node, ScalarNode | MappingNode):
            items = [(node, entry.path)]
        else:
            seq = self.sequence(node, entry.path, allow_empty=False)
            if seq is None:
                return None
            items = [(item, f"{entry.path}[{i}]") for i, item in enumerate(seq)]
        binds: list[Bind] = []
        for item, path in items:
            bind = self.bind(item, path)
            if bind is None:
                continue
            self.note_bind(bind.address, item, path, owner)
            binds.append(bind)
        return tuple(binds) if len(binds) == len(items) else None

    def bind(self, node: Node, path: str) -> Bind | None:
        if not isinstance(node, MappingNode):
            address = self.address(node, path)
            return Bind(address=address) if address is not None else None
        m = self.mapping(node, path, BIND_KEYS, required=("address",))
        if m is None:
            return None
        address_entry = m.get("address")
        address = self.address(address_entry.value, address_entry.path) if address_entry else None
        tls: TlsSettings | None = None
        tls_entry = m.get("tls")
        if tls_entry is not None:
            tls = self.tls(tls_entry)
            if tls is None and not self.is_false(tls_entry.value):
                return None
        if address is None:
            return None
        return Bind(address=address, tls=tls)

    def note_bind(self, address: Address, node: Node, path: str, owner: str) -> None:
        """Two listeners on one address:port cannot both bind; say so before anything starts."""
        for seen in self.binds:
            if _same_listener(seen.address, address):
                where = "this virtual server" if seen.owner == owner else seen.owner
                self.problem(
                    node,
                    path,
                    f"{address} is already bound by {where} (line {seen.line})",
                )
                return
        self.binds.append(_BindSeen(address, node.start_mark.line + 1, owner))

    def tls(self, entry: Entry) -> TlsSettings | None:
        node = entry.value
        if isinstance(node, ScalarNode):
            value = self.boolean(node, entry.path)
            return TlsSettings() if value else None
        m = self.mapping(node, entry.path, TLS_KEYS)
        if m is None:
            return None
        defaults = TlsSettings()
        certificates = self.certificates(m.get("certificate"))
        min_version = self.tls_version(m.get("min_version"), defaults.min_version)
        ciphers = self.opt_string(m.get("ciphers"))
        ciphersuites = self.opt_string(m.get("ciphersuites"))
        client_ca_entry = m.get("client_ca")
        client_ca = self.path_value(client_ca_entry, None) if client_ca_entry else None
        verify = self.opt_enum(m.get("verify"), Verify, defaults.verify)
        verify_entry = m.get("verify")
        if verify in (Verify.OPTIONAL, Verify.REQUIRED) and client_ca_entry is None:
            assert verify_entry is not None
            self.problem(
                verify_entry.value,
                verify_entry.path,
                f"verify: {verify.value} needs client_ca (the CA file client certificates "
                "must chain to)",
            )
        if verify is Verify.NONE and client_ca_entry is not None:
            self.problem(
                client_ca_entry.key,
                client_ca_entry.path,
                "client_ca has no effect with verify: none; set verify: optional or required",
            )
        strict_sni = self.opt_bool(m.get("strict_sni"), defaults.strict_sni)
        handshake_timeout = self.opt_duration(
            m.get("handshake_timeout"), defaults.handshake_timeout
        )
        if (
            certificates is None
            or min_version is None
            or verify is None
            or strict_sni is None
            or handshake_timeout is None
            or self.failed_since(m)
        ):
            return None
        return TlsSettings(
            certificates=certificates,
            min_version=min_version,
            ciphers=ciphers,
            ciphersuites=ciphersuites,
            client_ca=client_ca,
            verify=verify,
            strict_sni=strict_sni,
            handshake_timeout=handshake_timeout,
        )

    def certificates(self, entry: Entry | None) -> tuple[CertificateSpec, ...] | None:
        if entry is None:
            return ()
        node = entry.value
        items: list[tuple[Node, str]]
        if isinstance(node, ScalarNode | MappingNode):
            items = [(node, entry.path)]
        else:
            seq = self.sequence(node, entry.path, allow_empty=False)
            if seq is None:
                return None
            items = [(item, f"{entry.path}[{i}]") for i, item in enumerate(seq)]
        specs: list[CertificateSpec] = []
        first_default: Node | None = None
        for item, path in items:
            spec = self.certificate(item, path)
            if spec is None:
                continue
            if spec.default:
                if first_default is not None:
                    line = first_default.start_mark.line + 1
                    self.problem(
                        item,
                        path,
                        f"only one certificate can be the default (first at line {line})",
                    )
                    continue
                first_default = item
            specs.append(spec)
        return tuple(specs) if len(specs) == len(items) else None

    def certificate(self, node: Node, path: str) -> CertificateSpec | None:
        if not isinstance(node, MappingNode):
            text = self.string(node, path)
            return CertificateSpec(path=self.in_config_dir(text)) if text is not None else None
        m = self.mapping(node, path, CERT_KEYS, required=("path",))
        if m is None:
            return None
        path_entry = m.get("path")
        file_path = self.path_value(path_entry, None) if path_entry else None
        default = self.opt_bool(m.get("default"), False)
        if file_path is None or default is None:
            return None
        return CertificateSpec(path=file_path, default=default)

    def tls_version(self, entry: Entry | None, default: str) -> str | None:
        if entry is None:
            return default
        node = entry.value
        # `min_version: 1.2` unquoted is a YAML float; its text is unambiguous, so accept it.
        if isinstance(node, ScalarNode) and node.value in TLS_VERSIONS:
            return str(node.value)
        self.problem(
            node, entry.path, f"expected one of: {', '.join(TLS_VERSIONS)}, got {describe(node)}"
        )
        return None

    def timeouts(self, entry: Entry | None) -> Timeouts | None:
        if entry is None:
            return Timeouts()
        m = self.mapping(entry.value, entry.path, TIMEOUT_KEYS)
        if m is None:
            return None
        defaults = Timeouts()
        values = {
            key: self.opt_duration(m.get(key), getattr(defaults, key)) for key in TIMEOUT_KEYS
        }
        if any(value is None for value in values.values()):
            return None
        return Timeouts(
            connect=_float(values["connect"]),
            header=_float(values["header"]),
            client_idle=_float(values["client_idle"]),
            server=_float(values["server"]),
            tunnel=_float(values["tunnel"]),
        )

    def hsts(self, entry: Entry | None) -> float | None:
        if entry is None or self.is_false(entry.value):
            return None
        # max-age=0 is meaningful: it tells browsers to forget an earlier HSTS policy.
        return self.duration(entry.value, entry.path, positive=False)

    # -- rules --------------------------------------------------------------------------------

    def rules(self, entry: Entry | None, pool_names: dict[str, Entry]) -> tuple[Rule, ...] | None:
        if entry is None:
            return ()
        items = self.sequence(entry.value, entry.path)
        if items is None:
            return None
        rules: list[Rule] = []
        for index, item in enumerate(items):
            rule = self.rule(item, f"{entry.path}[{index}]", pool_names)
            if rule is not None:
                rules.append(rule)
        return tuple(rules) if len(rules) == len(items) else None

    def rule(self, node: Node, path: str, pool_names: dict[str, Entry]) -> Rule | None:
        m = self.mapping(node, path, RULE_KEYS, required=("pool",))
        if m is None:
            return None
        pool_entry = m.get("pool")
        pool = self.string(pool_entry.value, pool_entry.path) if pool_entry else None
        if pool is not None and pool_entry is not None and pool not in pool_names:
            known = ", ".join(pool_names) if pool_names else "none are defined"
            self.problem(
                pool_entry.value,
                pool_entry.path,
                f"no pool named {pool!r} under pools: (known: {known})",
            )
        if not any(key in m for key in RULE_CONDITIONS):
            self.problem(
                m.node,
                path,
                "a rule needs at least one condition: " + ", ".join(RULE_CONDITIONS),
            )
        host: str | None = None
        host_entry = m.get("host")
        if host_entry is not None:
            host = self.string(host_entry.value, host_entry.path)
            if host is not None:
                host = host.lower()
                if not _RULE_HOST_RE.fullmatch(host):
                    self.problem(
                        host_entry.value,
                        host_entry.path,
                        f"{host!r} is not a host name (no port, no path; '*.' only in front)",
                    )
        prefix: str | None = None
        prefix_entry = m.get("path_prefix")
        if prefix_entry is not None:
            prefix = self.url_path(prefix_entry, "/")
        regex: re.Pattern[str] | None = None
        regex_entry = m.get("path_regex")
        if regex_entry is not None:
            pattern = self.string(regex_entry.value, regex_entry.path)
            if pattern is not None:
                try:
                    regex = re.compile(pattern)
                except re.error as exc:
                    self.problem(
                        regex_entry.value,
                        regex_entry.path,
                        f"invalid regular expression: {exc.msg} at position {exc.pos}",
                    )
        header: HeaderMatch | None = None
        header_entry = m.get("header")
        if header_entry is not None:
            header = self.header_match(header_entry)
        if pool is None or self.failed_since(m):
            return None
        return Rule(pool=pool, host=host, path_prefix=prefix, path_regex=regex, header=header)

    def header_match(self, entry: Entry) -> HeaderMatch | None:
        m = self.mapping(entry.value, entry.path, HEADER_KEYS, required=("name",))
        if m is None:
            return None
        name = self.token(m.get("name"), None)
        value: str | None = None
        value_entry = m.get("value")
        if value_entry is not None:
            value = self.string(value_entry.value, value_entry.path, allow_empty=True)
        if name is None:
            return None
        return HeaderMatch(name=name.lower(), value=value)

    # -- small typed readers with defaults ----------------------------------------------------

    def failed_since(self, m: Mapping) -> bool:
        """True when a problem was recorded inside mapping ``m`` (by position)."""
        start, end = m.node.start_mark, m.node.end_mark
        lo = (start.line + 1, start.column + 1)
        hi = (end.line + 1, end.column + 1)
        return any(lo <= (p.line, p.column) <= hi for p in self.problems.items)

    def is_false(self, node: Node) -> bool:
        return (
            isinstance(node, ScalarNode)
            and node.tag.endswith(":bool")
            and not (self.boolean(node, ""))
        )

    def opt_bool(self, entry: Entry | None, default: bool) -> bool | None:
        return default if entry is None else self.boolean(entry.value, entry.path)

    def opt_int(
        self, entry: Entry | None, default: int, low: int, high: int | None = None
    ) -> int | None:
        return default if entry is None else self.integer(entry.value, entry.path, low, high)

    def opt_duration(
        self, entry: Entry | None, default: float, *, positive: bool = True
    ) -> float | None:
        if entry is None:
            return default
        return self.duration(entry.value, entry.path, positive=positive)

    def opt_string(self, entry: Entry | None) -> str | None:
        return None if entry is None else self.string(entry.value, entry.path)

    def opt_choice(
        self, entry: Entry | None, options: tuple[str, ...], default: str | None
    ) -> str | None:
        return default if entry is None else self.choice(entry.value, entry.path, options)

    def opt_enum(self, entry: Entry | None, enum_type: type[E], default: E) -> E | None:
        if entry is None:
            return default
        value = self.choice(entry.value, entry.path, [member.value for member in enum_type])
        return None if value is None else enum_type(value)

    def label(self, entry: Entry | None, what: str, seen: dict[str, Node]) -> str | None:
        if entry is None:
            return None
        text = self.string(entry.value, entry.path)
        if text is None or not self.label_text(entry.value, entry.path, text, what):
            return None
        first = seen.get(text)
        if first is not None:
            line = first.start_mark.line + 1
            self.problem(
                entry.value, entry.path, f"duplicate {what} {text!r} (first at line {line})"
            )
            return None
        seen[text] = entry.value
        return text

    def label_text(self, node: Node, path: str, text: str, what: str) -> bool:
        if _LABEL_RE.fullmatch(text):
            return True
        self.problem(
            node,
            path,
            f"{what} {text!r} may use only letters, digits and _ . : - "
            "(it appears in cookies, logs and admin commands)",
        )
        return False

    def token(self, entry: Entry | None, default: str | None) -> str | None:
        if entry is None:
            return default
        text = self.string(entry.value, entry.path)
        if text is not None and not _TOKEN_RE.fullmatch(text):
            self.problem(entry.value, entry.path, f"{text!r} is not a valid HTTP token")
            return None
        return text

    def url_path(self, entry: Entry | None, default: str) -> str | None:
        if entry is None:
            return default
        text = self.string(entry.value, entry.path)
        if text is not None and not _PATH_RE.fullmatch(text):
            self.problem(
                entry.value, entry.path, f"{text!r} must start with '/' and contain no spaces"
            )
            return None
        return text

    def path_value(self, entry: Entry | None, default: str | None) -> str | None:
        if entry is None:
            return self.path_in_config(default) if default is not None else None
        text = self.string(entry.value, entry.path)
        return self.in_config_dir(text) if text is not None else None

    def path_in_config(self, text: str) -> str:
        return self.in_config_dir(text)

    def in_config_dir(self, text: str) -> str:
        """Relative paths mean: next to the config file, whatever the working directory."""
        return os.path.abspath(os.path.join(self.base_dir, text))


def _float(value: float | None) -> float:
    assert value is not None
    return value


def _same_listener(a: Address, b: Address) -> bool:
    if a.port != b.port:
        return False
    host_a, host_b = _listener_host(a.host), _listener_host(b.host)
    if host_a == host_b:
        return True
    if isinstance(host_a, str) or isinstance(host_b, str):
        return False  # names are not resolved here; only equal names are known to collide
    # A wildcard of one family takes the port for every address of that family.
    return host_a.version == host_b.version and (host_a.is_unspecified or host_b.is_unspecified)


def _listener_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
