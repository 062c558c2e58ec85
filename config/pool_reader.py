"""Reading pools: real servers, the fallback servers, persistence, health checks and maxconn."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .fields import PATH_RE, FieldReader
from .model import (
    DEFAULT_RETRIES,
    Address,
    AdminState,
    Balance,
    CookiePersistence,
    Fallback,
    FallbackMode,
    HealthCheck,
    HttpCheck,
    Persistence,
    Pool,
    ProxyVersion,
    RealServer,
    ServerTls,
    SourcePersistence,
    Verify,
)
from .nodes import STR_TAG, Entry, Mapping, join

# HAProxy accepts server weights 0..256; 0 drains the server.
MAX_WEIGHT = 256
MAX_MASK4 = 32
MAX_MASK6 = 128
# Stick-table sizes beyond this would cost gigabytes; HAProxy examples stay well below.
MAX_SOURCE_TABLE_SIZE = 10_000_000
# RFC 9110 status codes are three digits; 1xx..5xx are the defined classes.
MIN_STATUS = 100
MAX_STATUS = 599
# More attempts than this only delay the 503 of a dead pool (HAProxy's default is 3).
MAX_RETRIES = 100
# HAProxy's maxconn is an int; far beyond what one process could hold open.
MAX_MAXCONN = 1_000_000

FALLBACK_LABEL = "fallback"  # the first fallback's label in logs and stats; then fallback2, ...
SAMESITE_VALUES = ("Strict", "Lax", "None")
_STATUS_RANGE_RE = re.compile(r"([0-9]{3})(?:\s*-\s*([0-9]{3}))?")
_DOMAIN_RE = re.compile(r"\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_SNI_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")

POOL_KEYS = (
    "balance",
    "persistence",
    "health_check",
    "fallback",
    "fallback_mode",
    "retries",
    "maxconn",
    "send_proxy",
    "real_servers",
    "tls",
)
FALLBACK_KEYS = ("address", "label", "health_check", "maxconn", "tls")
SERVER_KEYS = (
    "label",
    "address",
    "weight",
    "state",
    "check_address",
    "maxconn",
    "send_proxy",
    "tls",
)
TLS_KEYS = ("verify", "ca", "sni", "certificate")
TLS_VERIFY = (Verify.REQUIRED.value, Verify.NONE.value)
SNI_FROM_HOST = "host"  # ``sni: host``: the request's Host (HAProxy ``sni req.hdr(host)``)
COOKIE_KEYS = ("cookie", "httponly", "secure", "samesite", "domain", "path")
PERSISTENCE_KEYS = (*COOKIE_KEYS, "source")
SOURCE_KEYS = ("timeout", "mask", "mask6", "size")
HEALTH_KEYS = ("enabled", "interval", "rise", "fall", "timeout", "http")
HTTP_CHECK_KEYS = ("path", "method", "expect", "body", "host")


class PoolReader(FieldReader):
    """The part of a virtual server (or a named pool) that says where requests may go."""

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
        retries = self.opt_int(m.get("retries"), DEFAULT_RETRIES, 0, MAX_RETRIES)
        # The pool's maxconn is the default of its real servers and fallbacks; its tls too.
        maxconn = self.opt_int(m.get("maxconn"), 0, 0, MAX_MAXCONN)
        tls_ok, tls = self.server_tls(m.get("tls"), None)
        seen: dict[str, Node] = {}
        proxy_ok, send_proxy = self.send_proxy(m.get("send_proxy"), None)
        servers = self.real_servers(m, what, seen, maxconn or 0, send_proxy, tls)
        fallbacks: tuple[Fallback, ...] | None = ()
        fallback_entry = m.get("fallback")
        if fallback_entry is not None:
            fallbacks = self.fallbacks(fallback_entry, seen, maxconn or 0, tls)
        if fallbacks and send_proxy is not None:
            fallbacks = tuple(
                dataclasses.replace(f, server=dataclasses.replace(f.server, send_proxy=send_proxy))
                for f in fallbacks
            )
        mode = self.opt_enum(m.get("fallback_mode"), FallbackMode, FallbackMode.FIRST)
        if (
            not proxy_ok
            or not tls_ok
            or balance is None
            or health is None
            or servers is None
            or fallbacks is None
            or retries is None
            or maxconn is None
            or mode is None
        ):
            return None
        first = fallbacks[0] if fallbacks else None
        return Pool(
            name=name,
            real_servers=servers,
            balance=balance,
            fallback=first.server if first else None,
            persistence=persistence,
            health_check=health,
            fallback_check=first.check if first else HealthCheck(),
            retries=retries,
            more_fallbacks=fallbacks[1:],
            fallback_mode=mode,
        )

    def fallbacks(
        self, entry: Entry, seen: dict[str, Node], maxconn: int, pool_tls: ServerTls | None
    ) -> tuple[Fallback, ...] | None:
        """One fallback, or a list of them in the order they are used (HAProxy ``backup``
        servers, Pound ``Emergency``)."""
        if not isinstance(entry.value, SequenceNode):
            one = self.fallback(entry.value, entry.path, FALLBACK_LABEL, seen, maxconn, pool_tls)
            return None if one is None else (one,)
        items = self.sequence(entry.value, entry.path, allow_empty=False)
        if items is None:
            return None
        found: list[Fallback] = []
        for index, item in enumerate(items):
            default_label = FALLBACK_LABEL if index == 0 else f"{FALLBACK_LABEL}{index + 1}"
            path = f"{entry.path}[{index}]"
            one = self.fallback(item, path, default_label, seen, maxconn, pool_tls)
            if one is not None:
                found.append(one)
        return tuple(found) if len(found) == len(items) else None

    def fallback(
        self,
        node: Node,
        path: str,
        default_label: str,
        seen: dict[str, Node],
        maxconn: int,
        pool_tls: ServerTls | None = None,
    ) -> Fallback | None:
        """``ADDRESS`` or ``{address: ADDRESS, label:, health_check: {...}, maxconn:, tls:}``;
        the check defaults to a TCP connect, whatever the pool's own check is; ``tls`` to the
        pool's."""
        address_node, address_path = node, path
        check: HealthCheck | None = HealthCheck()
        label: str | None = default_label
        server_maxconn: int | None = maxconn
        tls_ok, tls = True, pool_tls
        if isinstance(node, MappingNode):
            m = self.mapping(node, path, FALLBACK_KEYS, required=("address",))
            if m is None:
                return None
            address_entry = m.get("address")
            if address_entry is None:
                return None
            address_node, address_path = address_entry.value, address_entry.path
            check_entry = m.get("health_check")
            if check_entry is not None:
                check = self.health_check(check_entry)
            label_entry = m.get("label")
            if label_entry is not None:
                label = self.label(label_entry, "fallback label", seen)
                default_label = ""
            server_maxconn = self.opt_int(m.get("maxconn"), maxconn, 0, MAX_MAXCONN)
            tls_ok, tls = self.server_tls(m.get("tls"), pool_tls)
        if default_label:
            if default_label in seen:
                line = seen[default_label].start_mark.line + 1
                self.problem(
                    node,
                    path,
                    f"this fallback is labelled {default_label!r}, the label of the real server "
                    f"at line {line}: give one of them another label",
                )
                label = None
            else:
                seen[default_label] = node
        address = self.address(address_node, address_path)
        if (
            address is None
            or check is None
            or label is None
            or server_maxconn is None
            or not tls_ok
        ):
            return None
        server = RealServer(
            label=label, address=address, backup=True, maxconn=server_maxconn, tls=tls
        )
        return Fallback(server, check)

    def send_proxy(
        self, entry: Entry | None, default: ProxyVersion | None
    ) -> tuple[bool, ProxyVersion | None]:
        """``v1``, ``v2`` or ``false``: (valid, the version or None)."""
        if entry is None:
            return True, default
        if self.is_false(entry.value):
            return True, None
        version = self.opt_enum(entry, ProxyVersion, ProxyVersion.V1)
        return version is not None, version

    def real_servers(
        self,
        m: Mapping,
        what: str,
        seen: dict[str, Node],
        maxconn: int,
        send_proxy: ProxyVersion | None = None,
        tls: ServerTls | None = None,
    ) -> tuple[RealServer, ...] | None:
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
        ok = True
        for index, item in enumerate(items):
            server = self.real_server(
                item, f"{entry.path}[{index}]", seen, maxconn, send_proxy, tls
            )
            if server is None:
                ok = False
            else:
                servers.append(server)
        return tuple(servers) if ok else None

    def real_server(
        self,
        node: Node,
        path: str,
        seen: dict[str, Node],
        maxconn: int,
        send_proxy: ProxyVersion | None = None,
        pool_tls: ServerTls | None = None,
    ) -> RealServer | None:
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
            seen.pop(FALLBACK_LABEL, None)
            label = None
        address_entry = m.get("address")
        address = self.address(address_entry.value, address_entry.path) if address_entry else None
        weight = self.opt_int(m.get("weight"), 1, 0, MAX_WEIGHT)
        state = self.opt_enum(m.get("state"), AdminState, AdminState.READY)
        server_maxconn = self.opt_int(m.get("maxconn"), maxconn, 0, MAX_MAXCONN)
        check_address: Address | None = None
        check_entry = m.get("check_address")
        if check_entry is not None:
            # Without a port, checks go to the server's own port on another host.
            port = address.port if address is not None else 1
            check_address = self.address(check_entry.value, check_entry.path, port)
            if check_address is None:
                return None
        proxy_ok, send_proxy = self.send_proxy(m.get("send_proxy"), send_proxy)
        tls_ok, tls = self.server_tls(m.get("tls"), pool_tls)
        if (
            label is None
            or address is None
            or weight is None
            or state is None
            or server_maxconn is None
            or not proxy_ok
            or not tls_ok
        ):
            return None
        return RealServer(
            label=label,
            address=address,
            weight=weight,
            state=state,
            check_address=check_address,
            send_proxy=send_proxy,
            maxconn=server_maxconn,
            tls=tls,
        )

    def server_tls(
        self, entry: Entry | None, default: ServerTls | None
    ) -> tuple[bool, ServerTls | None]:
        """``tls: true`` (verify against the system CAs), ``tls: false`` (plain HTTP, e.g. a
        server overriding its pool) or ``{verify, ca, sni, certificate}``. (ok, settings)."""
        if entry is None:
            return True, default
        node = entry.value
        if isinstance(node, ScalarNode) and node.tag.endswith(":bool"):
            on = self.boolean(node, entry.path)
            return on is not None, (ServerTls() if on else None)
        m = self.mapping(node, entry.path, TLS_KEYS)
        if m is None:
            return False, None
        verify = self.opt_choice(m.get("verify"), TLS_VERIFY, Verify.REQUIRED.value)
        ca_entry = m.get("ca")
        ca = self.path_value(ca_entry, None)
        certificate = self.path_value(m.get("certificate"), None)
        sni: str | None = None
        sni_entry = m.get("sni")
        if sni_entry is not None:
            sni = self.sni_name(sni_entry)
        if verify == Verify.NONE.value and ca_entry is not None:
            self.problem(
                ca_entry.key, ca_entry.path, "a CA file has no use with 'verify: none'; drop one"
            )
        if verify is None or self.failed_since(m):
            return False, None
        return True, ServerTls(
            verify=Verify(verify),
            ca=ca,
            sni=None if sni == SNI_FROM_HOST else sni,
            sni_from_host=sni == SNI_FROM_HOST,
            certificate=certificate,
        )

    def sni_name(self, entry: Entry) -> str | None:
        text = self.string(entry.value, entry.path)
        if text is None or text == SNI_FROM_HOST:
            return text
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            self.problem(
                entry.value,
                entry.path,
                "SNI cannot carry an IP address (RFC 6066); leave 'sni' out and the "
                "certificate is verified against the server's address",
            )
            return None
        if not _SNI_RE.fullmatch(text):
            self.problem(entry.value, entry.path, f"{text!r} is not a host name, nor 'host'")
            return None
        return text.rstrip(".").lower()

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
        timeout_entry = m.get("timeout")
        timeout = self.opt_duration(timeout_entry, defaults.timeout)
        if interval is not None and timeout is not None and timeout > interval:
            if timeout_entry is None:
                # A short interval brings the default timeout down with it (HAProxy's `timeout
                # check` falls back to `inter` too) instead of refusing a key nobody wrote.
                timeout = interval
            else:
                self.problem(
                    timeout_entry.value,
                    timeout_entry.path,
                    f"the check timeout ({timeout:g}s) must not exceed the interval "
                    f"({interval:g}s), or checks would overlap",
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
        expect_entry = m.get("expect")
        expect = self.expect(expect_entry) if expect_entry is not None else defaults.expect
        body: str | None = None
        body_entry = m.get("body")
        if body_entry is not None:
            body = self.string(body_entry.value, body_entry.path)
        host: str | None = None
        host_entry = m.get("host")
        if host_entry is not None:
            host = self.string(host_entry.value, host_entry.path)
            if host is not None and not PATH_RE.fullmatch("/" + host):
                self.problem(host_entry.value, host_entry.path, "must not contain spaces")
                host = None
        if path is None or method is None or expect is None or self.failed_since(m):
            return None
        return HttpCheck(path=path, method=method, expect=expect, body=body, host=host)

    def expect(self, entry: Entry) -> tuple[tuple[int, int], ...] | None:
        """``200``, ``"200-399"``, or a non-empty list of them (HAProxy ``http-check expect
        status`` / ``rstatus``): the statuses a healthy server may answer."""
        node = entry.value
        if isinstance(node, SequenceNode):
            items = self.sequence(node, entry.path, allow_empty=False)
            if items is None:
                return None
            parts = [(item, f"{entry.path}[{i}]") for i, item in enumerate(items)]
        else:
            parts = [(node, entry.path)]
        ranges: list[tuple[int, int]] = []
        for item, path in parts:
            status_range = self.status_range(item, path)
            if status_range is not None:
                ranges.append(status_range)
        return tuple(ranges) if len(ranges) == len(parts) else None

    def status_range(self, node: Node, path: str) -> tuple[int, int] | None:
        if isinstance(node, ScalarNode) and node.tag != STR_TAG:
            status = self.integer(node, path, MIN_STATUS, MAX_STATUS)
            return None if status is None else (status, status)
        text = self.string(node, path)
        if text is None:
            return None
        match = _STATUS_RANGE_RE.fullmatch(text.strip())
        if match is None:
            self.problem(
                node, path, f"{text!r} is not a status or a range of statuses like 200-399"
            )
            return None
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not (MIN_STATUS <= low <= high <= MAX_STATUS):
            self.problem(
                node,
                path,
                f"{text!r} must be statuses in {MIN_STATUS}..{MAX_STATUS}, the lower first",
            )
            return None
        return (low, high)
