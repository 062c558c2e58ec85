"""Reading listeners: bind addresses, TLS settings, and clashes between listeners."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode

from .fields import FieldReader
from .model import Address, Bind, CertificateSpec, Network, TlsSettings, Verify
from .nodes import Entry, Problems, describe
from .scalars import parse_network

TLS_VERSIONS = ("1.2", "1.3")
BIND_KEYS = ("address", "tls", "accept_proxy")
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


@dataclass(frozen=True, slots=True)
class _BindSeen:
    address: Address
    line: int
    owner: str  # "virtual server 'www'" or "the stats page"


class ListenerReader(FieldReader):
    """Binds and TLS; remembers every bind so a clash is reported at the second one."""

    def __init__(self, problems: Problems, base_dir: str) -> None:
        super().__init__(problems, base_dir)
        self.binds: list[_BindSeen] = []

    def _one_or_list(self, entry: Entry) -> list[tuple[Node, str]] | None:
        """A key that takes one item or a non-empty list of them: the items with their paths."""
        node = entry.value
        if isinstance(node, ScalarNode | MappingNode):
            return [(node, entry.path)]
        seq = self.sequence(node, entry.path, allow_empty=False)
        if seq is None:
            return None
        return [(item, f"{entry.path}[{i}]") for i, item in enumerate(seq)]

    def binds_of(self, entry: Entry, owner: str) -> tuple[Bind, ...] | None:
        items = self._one_or_list(entry)
        if items is None:
            return None
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
        accept_proxy: tuple[Network, ...] | None = ()
        proxy_entry = m.get("accept_proxy")
        if proxy_entry is not None:
            accept_proxy = self.networks(proxy_entry, allow_empty=False)
        if address is None or accept_proxy is None:
            return None
        return Bind(address=address, tls=tls, accept_proxy=accept_proxy)

    def networks(self, entry: Entry, *, allow_empty: bool = True) -> tuple[Network, ...] | None:
        """A list of networks: ``[10.0.0.0/8, "2001:db8::/32", 192.0.2.7]``."""
        items = self.sequence(entry.value, entry.path, allow_empty=allow_empty)
        if items is None:
            return None
        networks: list[Network] = []
        for index, item in enumerate(items):
            path = f"{entry.path}[{index}]"
            text = self.string(item, path)
            network = self.parsed(item, path, parse_network, text) if text is not None else None
            if network is not None:
                networks.append(network)
        return tuple(networks) if len(networks) == len(items) else None

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
        items = self._one_or_list(entry)
        if items is None:
            return None
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


def _same_listener(a: Address, b: Address) -> bool:
    if a.port != b.port:
        return False
    host_a, host_b = _listener_host(a.host), _listener_host(b.host)
    if host_a == host_b:
        return True
    if isinstance(host_a, str) or isinstance(host_b, str):
        return False  # names are not resolved here; only equal names are known to collide
    # A wildcard takes the port for every address of its family; the server opens "[::]" as a
    # dual-stack socket (like HAProxy `bind :::80 v4v6`), so it takes IPv4 addresses too.
    for wild, other in ((host_a, host_b), (host_b, host_a)):
        if wild.is_unspecified and (wild.version == other.version or wild.version == 6):
            return True
    return False


def _listener_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
