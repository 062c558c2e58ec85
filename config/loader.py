"""The YAML config file -> ``ProxyConfig``, with every problem reported at once.

Pure: nothing is resolved, bound or opened here except the config file itself in ``load_file``.
``yaml.compose`` gives nodes with their marks; we walk them ourselves so each problem reads
``FILE:LINE:COL: key.path: message`` (1-based), and we keep going after a problem so the
operator sees all of them in one run (HAProxy ``-c`` stops at the first fatal one).
"""

from __future__ import annotations

import os
import re

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from .action_reader import POLICY_KEYS, ActionReader
from .condition_reader import PRIMITIVES, Acls
from .ha_reader import HaReader
from .listener_reader import ListenerReader
from .model import (
    AUTO_WORKERS,
    DEFAULT_ADMIN_SOCKET_MODE,
    MAX_WORKERS,
    REDIRECT_CODES,
    AdminSocketSettings,
    GlobalSettings,
    HttpsRedirect,
    Network,
    Pool,
    ProxyConfig,
    Rule,
    StatsAuth,
    StatsSettings,
    Timeouts,
    VirtualService,
)
from .nodes import Entry, Problems, describe
from .pool_reader import POOL_KEYS, PoolReader
from .scalars import MAX_PORT, parse_address, parse_duration
from .service_reader import SERVICE_GLOBAL_KEYS, ServiceReader

__all__ = ["ConfigError", "load_file", "load_text", "parse_address", "parse_duration"]

# A config is a few KiB; reading more than this means a wrong file (or /dev/zero).
MAX_CONFIG_BYTES = 10 * 1024 * 1024

LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("http",)

_FILE_MODE_RE = re.compile(r"[0-7]{1,4}")

_UNQUOTED_IPV6_RE = re.compile(r"(^|[\s,{\[])\[[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*\]")

TOP_KEYS = ("global", "virtual_servers", "pools", "ha")
GLOBAL_KEYS = (
    "state_dir",
    "grace",
    "log_level",
    "access_log",
    "stats",
    "admin_socket",
    "state_file",
    "workers",
    *SERVICE_GLOBAL_KEYS,
)
STATS_KEYS = ("bind", "path", "auth")
STATS_AUTH_KEYS = ("user", "password_file")
ADMIN_SOCKET_KEYS = ("path", "mode")
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
    *POLICY_KEYS,
    *POOL_KEYS,
)
# Far beyond the descriptors one process may hold; a typo, not a limit.
MAX_CONNECTIONS_LIMIT = 10_000_000
FORWARDFOR_KEYS = ("trusted",)
REDIRECT_KEYS = ("code", "port")
TIMEOUT_KEYS = ("connect", "header", "client_idle", "server", "tunnel", "queue")
RULE_KEYS = ("pool", "if", *PRIMITIVES)


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
    except RecursionError:
        # The composer recurses once per nesting level; no real config comes close.
        problems.at(1, 1, "(yaml)", "nested too deeply")
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


class _Builder(ActionReader, PoolReader, ListenerReader, ServiceReader, HaReader):
    """One pass over the document; each method returns None when its part had a problem."""

    def __init__(self, problems: Problems, base_dir: str, source: str) -> None:
        super().__init__(problems, base_dir)
        self.source = source

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
        ha_entry = top.get("ha")
        ha = self.ha_settings(ha_entry) if ha_entry is not None else None
        if settings is None or self.problems.items:
            return None
        return ProxyConfig(
            virtual_servers=tuple(services),
            pools=pools,
            global_=settings,
            source=self.source,
            warnings=tuple(self.problems.sorted_warnings()),
            ha=ha,
        )

    def default_global(self) -> GlobalSettings:
        return GlobalSettings(state_dir=self.in_config_dir(GlobalSettings().state_dir))

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
        admin_entry = m.get("admin_socket")
        admin_socket = self.admin_socket(admin_entry) if admin_entry is not None else None
        state_entry = m.get("state_file")
        state_file = self.path_value(state_entry, None)
        log_targets = self.log_targets(m.get("log"))
        user, group = self.user_and_group(m)
        pidfile_entry = m.get("pidfile")
        pidfile = self.path_value(pidfile_entry, None) if pidfile_entry else None
        workers = self.workers(m.get("workers"), defaults.workers)
        if None in (state_dir, grace, log_level, access_log, log_targets, workers):
            return None
        if (admin_entry is not None and admin_socket is None) or (
            state_entry is not None and state_file is None
        ):
            return None
        assert state_dir is not None and grace is not None
        assert log_level is not None and access_log is not None and log_targets is not None
        return GlobalSettings(
            state_dir=state_dir,
            grace=grace,
            log_level=log_level,
            access_log=access_log,
            stats=stats,
            admin_socket=admin_socket,
            state_file=state_file,
            log=log_targets,
            user=user,
            group=group,
            pidfile=pidfile,
            workers=workers if workers is not None else defaults.workers,
        )

    def workers(self, entry: Entry | None, default: int) -> int | None:
        """``workers: auto`` (one per core, at most MAX_AUTO_WORKERS) or a count."""
        if entry is None:
            return default
        node = entry.value
        if isinstance(node, ScalarNode) and node.value == "auto":
            return AUTO_WORKERS
        if not (isinstance(node, ScalarNode) and node.tag.endswith(":int")):
            self.problem(node, entry.path, "expected auto or a number of worker processes")
            return None
        return self.integer(node, entry.path, 1, MAX_WORKERS)

    def admin_socket(self, entry: Entry) -> AdminSocketSettings | None:
        """``admin_socket: PATH`` or ``{path: PATH, mode: 0600}``."""
        if isinstance(entry.value, ScalarNode):
            path = self.path_value(entry, None)
            return AdminSocketSettings(path) if path is not None else None
        m = self.mapping(entry.value, entry.path, ADMIN_SOCKET_KEYS, required=("path",))
        if m is None:
            return None
        path = self.path_value(m.get("path"), None)
        mode_entry = m.get("mode")
        mode = DEFAULT_ADMIN_SOCKET_MODE if mode_entry is None else self.file_mode(mode_entry)
        if path is None or mode is None:
            return None
        return AdminSocketSettings(path, mode)

    def file_mode(self, entry: Entry) -> int | None:
        """Octal as HAProxy's ``mode 600`` means it, with or without a leading 0 or ``0o``."""
        node = entry.value
        text = node.value if isinstance(node, ScalarNode) else ""
        digits = text[2:] if text.lower().startswith("0o") else text
        if not _FILE_MODE_RE.fullmatch(digits):
            self.problem(node, entry.path, f"expected an octal file mode like 0600, got {text!r}")
            return None
        return int(digits, 8)

    def stats(self, entry: Entry) -> StatsSettings | None:
        m = self.mapping(entry.value, entry.path, STATS_KEYS, required=("bind",))
        if m is None:
            return None
        bind_entry = m.get("bind")
        address = self.address(bind_entry.value, bind_entry.path) if bind_entry else None
        if address is not None and bind_entry is not None:
            self.note_bind(address, bind_entry.value, bind_entry.path, "the stats page")
        path = self.url_path(m.get("path"), "/")
        auth_entry = m.get("auth")
        auth = self.stats_auth(auth_entry) if auth_entry is not None else None
        if address is None or path is None or (auth_entry is not None and auth is None):
            return None
        return StatsSettings(bind=address, path=path, auth=auth)

    def stats_auth(self, entry: Entry) -> StatsAuth | None:
        m = self.mapping(entry.value, entry.path, STATS_AUTH_KEYS, required=STATS_AUTH_KEYS)
        if m is None:
            return None
        user_entry = m.get("user")
        user = self.opt_string(user_entry)
        if user is not None and user_entry is not None and ":" in user:
            # RFC 7617: the user-id ends at the first colon.
            self.problem(user_entry.value, user_entry.path, "must not contain ':'")
            user = None
        password_file = self.path_value(m.get("password_file"), None)
        if user is None or password_file is None:
            return None
        return StatsAuth(user=user, password_file=password_file)

    # -- named pools and virtual servers ------------------------------------------------------

    def named_pool(self, entry: Entry) -> Pool | None:
        m = self.mapping(entry.value, entry.path, POOL_KEYS)
        if m is None:
            return None
        return self.pool(m, entry.key.value, "named pool")

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
        self.mode(m.get("mode"))
        forwardfor, trusted = self.forwardfor(m.get("forwardfor"))
        timeouts = self.timeouts(m.get("timeouts"))
        redirect_entry = m.get("redirect_to_https")
        redirect = self.https_redirect(redirect_entry) if redirect_entry is not None else None
        rewrite_location = self.opt_bool(m.get("rewrite_location"), True)
        hsts_entry = m.get("hsts")
        hsts = self.hsts(hsts_entry)
        plain_only = binds is not None and all(bind.tls is None for bind in binds)
        if hsts is not None and hsts_entry is not None and plain_only:
            # Browsers ignore Strict-Transport-Security over plain HTTP (RFC 6797 8.1).
            self.warning(hsts_entry.key, hsts_entry.path, "hsts has no effect: no TLS bind")
        acls, policy = self.policy(m)
        rules = self.rules(m.get("rules"), pool_names, acls) if acls is not None else None
        max_connections = self.max_connections(m.get("limits"))
        pool = self.pool(m, label or path, "virtual server")
        if (
            label is None
            or binds is None
            or forwardfor is None
            or timeouts is None
            or rewrite_location is None
            or rules is None
            or policy is None
            or max_connections is None
            or pool is None
            or self.failed_since(m)
        ):
            return None
        return VirtualService(
            label=label,
            binds=binds,
            pool=pool,
            forwardfor=forwardfor,
            forwardfor_trusted=trusted,
            timeouts=timeouts,
            rules=rules,
            redirect_to_https=redirect,
            hsts=hsts,
            rewrite_location=rewrite_location,
            policy=policy,
            max_connections=max_connections,
        )

    def max_connections(self, entry: Entry | None) -> int | None:
        """``limits: {max_connections: N}`` (HAProxy frontend ``maxconn``); 0: no limit."""
        if entry is None or not isinstance(entry.value, MappingNode):
            return 0  # the policy reader reads ``limits`` too and reports its problems once
        m = self.mapping(entry.value, entry.path, None)
        if m is None:
            return None
        return self.opt_int(m.get("max_connections"), 0, 0, MAX_CONNECTIONS_LIMIT)

    def mode(self, entry: Entry | None) -> None:
        """``mode: http`` is accepted from older files: lbproxy speaks HTTP only (HAProxy ``mode
        http``), so the key changes nothing and only draws a warning."""
        if entry is not None and self.choice(entry.value, entry.path, MODES) is not None:
            self.warning(entry.key, entry.path, "mode has no effect: lbproxy is HTTP only")

    def timeouts(self, entry: Entry | None) -> Timeouts | None:
        if entry is None:
            return Timeouts()
        m = self.mapping(entry.value, entry.path, TIMEOUT_KEYS)
        if m is None:
            return None
        values: dict[str, float] = {}
        ok = True
        for key in TIMEOUT_KEYS:
            item = m.get(key)
            if item is None:
                continue  # the default; queue follows the connect timeout
            value = self.duration(item.value, item.path)
            if value is None:
                ok = False
            else:
                values[key] = value
        return Timeouts(**values) if ok else None

    def forwardfor(self, entry: Entry | None) -> tuple[bool | None, tuple[Network, ...] | None]:
        """``true``, ``false`` or ``{trusted: [CIDR, ...]}``: (forwardfor, trusted networks)."""
        if entry is None:
            return True, None
        if not isinstance(entry.value, MappingNode):
            return self.boolean(entry.value, entry.path), None
        m = self.mapping(entry.value, entry.path, FORWARDFOR_KEYS, required=("trusted",))
        trusted_entry = m.get("trusted") if m is not None else None
        if trusted_entry is None:
            return None, None
        networks = self.networks(trusted_entry)
        return (None, None) if networks is None else (True, networks)

    def https_redirect(self, entry: Entry) -> HttpsRedirect | None:
        """``false``, ``true`` or ``{code: 301|302|303|307|308, port: N}``."""
        if not isinstance(entry.value, MappingNode):
            return HttpsRedirect() if self.boolean(entry.value, entry.path) else None
        m = self.mapping(entry.value, entry.path, REDIRECT_KEYS)
        if m is None:
            return None
        code: int | None = None
        code_entry = m.get("code")
        if code_entry is not None:
            code = self.integer(code_entry.value, code_entry.path, 0)
            if code is not None and code not in REDIRECT_CODES:
                codes = ", ".join(map(str, REDIRECT_CODES))
                self.problem(code_entry.value, code_entry.path, f"{code} is not one of: {codes}")
        port_entry = m.get("port")
        port = self.integer(port_entry.value, port_entry.path, 1, MAX_PORT) if port_entry else None
        if self.failed_since(m):
            return None
        return HttpsRedirect(code=code, port=port)

    def hsts(self, entry: Entry | None) -> float | None:
        if entry is None or self.is_false(entry.value):
            return None
        # max-age=0 is meaningful: it tells browsers to forget an earlier HSTS policy.
        return self.duration(entry.value, entry.path, positive=False)

    # -- URL switching rules ------------------------------------------------------------------

    def rules(
        self, entry: Entry | None, pool_names: dict[str, Entry], acls: Acls
    ) -> tuple[Rule, ...] | None:
        return self.listed(
            entry, acls, lambda node, path, _: self.rule(node, path, pool_names, acls)
        )

    def rule(self, node: Node, path: str, pool_names: dict[str, Entry], acls: Acls) -> Rule | None:
        """``{if: condition, pool: NAME}``, or the condition's primitives inline."""
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
        if_entry = m.get("if")
        inline = [key for key in PRIMITIVES if key in m]
        if (if_entry is None) == (not inline):
            self.problem(
                m.node,
                path,
                "a rule needs one condition: if: CONDITION, or one or more of "
                + ", ".join(PRIMITIVES)
                + (" (not both)" if inline else ""),
            )
            return None
        if if_entry is not None:
            condition = self.condition(if_entry.value, if_entry.path, acls)
        else:
            condition = self.conditions_of(m, acls, PRIMITIVES)
        if pool is None or condition is None or self.failed_since(m):
            return None
        return Rule(pool=pool, condition=condition)
