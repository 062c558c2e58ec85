"""The parsed configuration: frozen values, built once by the loader and never mutated.

Runtime state (health, counters, admin changes at run time) lives elsewhere
(``balancing.state``); these objects only say what the operator wrote, with defaults filled in.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from .actions import RequestPolicy
from .conditions import Condition
from .conditions import Network as Network  # re-exported: the model's users import it here

# Defaults, with their precedent.
DEFAULT_CONNECT_TIMEOUT = 5.0  # HAProxy examples use `timeout connect 5s`
DEFAULT_HEADER_TIMEOUT = 10.0  # Pound `Client` 10 s; HAProxy `timeout http-request` 10s typical
DEFAULT_CLIENT_IDLE_TIMEOUT = 60.0  # HAProxy `timeout http-keep-alive` falls back to client 60s
DEFAULT_SERVER_TIMEOUT = 60.0  # HAProxy `timeout server` in the shipped examples
DEFAULT_TUNNEL_TIMEOUT = 600.0  # Pound `WSTimeOut` 600 s
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # same budget as the request head
# `workers: auto` is stored as 0: one worker process per core the proxy may run on.
AUTO_WORKERS = 0
# auto stops here: each worker costs ~30 MB and its own health view and counters pushed through
# the master, and past 16 the master's fan-out and the kernel's accept spread (one shared socket)
# matter more than another core; HAProxy likewise caps its automatic nbthread (at 64 threads).
# Asking for more explicitly is allowed up to MAX_WORKERS.
MAX_AUTO_WORKERS = 16
MAX_WORKERS = 64
DEFAULT_WORKERS = 1  # see docs/configuration.md, "workers": why not auto
DEFAULT_GRACE = 30.0  # in-flight requests get this long after SIGTERM (HAProxy hard-stop-after)
DEFAULT_CHECK_INTERVAL = 2.0  # HAProxy DEF_CHKINTR 2000 ms
DEFAULT_CHECK_RISE = 2  # HAProxy DEF_RISETIME
DEFAULT_CHECK_FALL = 3  # HAProxy DEF_FALLTIME
DEFAULT_CHECK_TIMEOUT = 1.0  # below the interval so a check never overlaps the next one
DEFAULT_SOURCE_TIMEOUT = 300.0  # stick-table `expire 5m` in HAProxy's examples
DEFAULT_SOURCE_MASK4 = 24  # the appliance's "source IP /24"
DEFAULT_SOURCE_MASK6 = 64
DEFAULT_SOURCE_TABLE_SIZE = 100_000  # bounded like a stick-table `size 100k`
DEFAULT_STATE_DIR = "./lbproxy-state"
DEFAULT_RETRIES = 3  # HAProxy `retries` default (DEF_RETRIES)
DEFAULT_SYSLOG_PORT = 514
DEFAULT_SYSLOG_FACILITY = "local0"  # HAProxy's usual `log /dev/log local0`

# RFC 5424 section 6.2.1 facility codes, by the names syslog.conf uses.
SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}


class Balance(enum.Enum):
    ROUNDROBIN = "roundrobin"
    LEASTCONN = "leastconn"
    SOURCE = "source"


class AdminState(enum.Enum):
    """What the operator asked for; health (up/down) is separate runtime state."""

    READY = "ready"
    DRAIN = "drain"  # no new clients; persistent clients still served
    MAINT = "maint"  # no traffic at all


class ProxyVersion(enum.Enum):
    """The PROXY protocol version sent to a real server (HAProxy ``send-proxy``/``-v2``)."""

    V1 = "v1"
    V2 = "v2"


class Verify(enum.Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Address:
    """A host (IPv4, IPv6 without brackets, or a name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """One certificate file (PEM bundle, or leaf with a sidecar ``.key``) or a directory."""

    path: str
    default: bool = False


@dataclass(frozen=True, slots=True)
class TlsSettings:
    # Empty means: a self-signed certificate made on first start under global.state_dir.
    certificates: tuple[CertificateSpec, ...] = ()
    min_version: str = "1.2"  # "1.2" | "1.3"
    ciphers: str | None = None  # OpenSSL cipher string for TLS <= 1.2; None = Mozilla intermediate
    ciphersuites: str | None = None  # TLS 1.3 suites; None = Mozilla intermediate
    client_ca: str | None = None
    verify: Verify = Verify.NONE
    strict_sni: bool = False  # unknown SNI -> handshake failure instead of the default cert
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Bind:
    address: Address
    tls: TlsSettings | None = None
    # Peers in these networks must start with a PROXY protocol header (HAProxy `accept-proxy`);
    # empty: no header is expected from anyone.
    accept_proxy: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = DEFAULT_CONNECT_TIMEOUT
    header: float = DEFAULT_HEADER_TIMEOUT
    client_idle: float = DEFAULT_CLIENT_IDLE_TIMEOUT
    server: float = DEFAULT_SERVER_TIMEOUT
    tunnel: float = DEFAULT_TUNNEL_TIMEOUT
    # How long a request may wait for a slot of a full server (HAProxy `timeout queue`); None:
    # the connect timeout, HAProxy's fallback too.
    queue: float | None = None

    def queue_timeout(self) -> float:
        return self.connect if self.queue is None else self.queue


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Re-encryption to a real server (HAProxy ``server ... ssl``, Pound ``HTTPS`` in a
    ``BackEnd``). Verifies by default, as a browser would."""

    verify: Verify = Verify.REQUIRED  # REQUIRED or NONE
    ca: str | None = None  # PEM file or directory of trusted CAs; None: the system's
    sni: str | None = None  # the name sent and verified; None: the address's host
    sni_from_host: bool = False  # send (and verify) the request's Host instead (``sni: host``)
    certificate: str | None = None  # client certificate: PEM bundle, or a sidecar .key


@dataclass(frozen=True, slots=True)
class RealServer:
    label: str  # the persistence cookie value and the name in logs and stats
    address: Address
    weight: int = 1  # 0 = drain (HAProxy: no new sessions, persistent ones still served)
    state: AdminState = AdminState.READY
    check_address: Address | None = None  # health checks go here instead, when set
    backup: bool = False  # a fallback server
    send_proxy: ProxyVersion | None = None  # PROXY header first on each connection to it
    # Requests at once on this server (HAProxy `server ... maxconn`); the rest wait in a queue.
    # 0: no limit.
    maxconn: int = 0
    tls: ServerTls | None = None  # None: plain HTTP to the server


@dataclass(frozen=True, slots=True)
class CookiePersistence:
    """HAProxy ``cookie NAME insert indirect nocache`` with ``attr``-style options."""

    name: str = "SERVERID"
    httponly: bool = False
    secure: bool | None = None  # None: on for requests that arrived over TLS
    samesite: str | None = None  # "Strict" | "Lax" | "None"
    domain: str | None = None
    path: str = "/"


@dataclass(frozen=True, slots=True)
class SourcePersistence:
    timeout: float = DEFAULT_SOURCE_TIMEOUT
    mask4: int = DEFAULT_SOURCE_MASK4
    mask6: int = DEFAULT_SOURCE_MASK6
    size: int = DEFAULT_SOURCE_TABLE_SIZE


Persistence = CookiePersistence | SourcePersistence


# HAProxy `option httpchk` without `http-check expect` counts any 2xx or 3xx as healthy.
DEFAULT_CHECK_EXPECT: tuple[tuple[int, int], ...] = ((200, 399),)


@dataclass(frozen=True, slots=True)
class HttpCheck:
    path: str = "/"
    method: str = "GET"
    # Healthy statuses as inclusive ranges; a single status is (s, s).
    expect: tuple[tuple[int, int], ...] = DEFAULT_CHECK_EXPECT
    body: str | None = None  # substring the response body must contain
    host: str | None = None  # Host header; default: the server address

    def expects(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expect)

    def expect_text(self) -> str:
        """``"200-399"``, ``"200, 204"``: the expectation as the operator would write it."""
        return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.expect)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    enabled: bool = True
    interval: float = DEFAULT_CHECK_INTERVAL
    rise: int = DEFAULT_CHECK_RISE
    fall: int = DEFAULT_CHECK_FALL
    timeout: float = DEFAULT_CHECK_TIMEOUT
    http: HttpCheck | None = None  # None: TCP connect check


class FallbackMode(enum.Enum):
    """Which fallbacks take requests when no real server can: the first usable one in the
    listed order (HAProxy's default), or all usable ones balanced (HAProxy `option allbackups`)."""

    FIRST = "first"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Fallback:
    """One fallback server with its own check."""

    server: RealServer
    check: HealthCheck = field(default_factory=HealthCheck)


@dataclass(frozen=True, slots=True)
class Pool:
    """A set of real servers with how to choose among them (HAProxy backend)."""

    name: str
    real_servers: tuple[RealServer, ...]
    balance: Balance = Balance.ROUNDROBIN
    fallback: RealServer | None = None  # label "fallback"; used only when no real server can
    persistence: Persistence | None = None
    health_check: HealthCheck = field(default_factory=HealthCheck)
    # The fallback is usually a "sorry" server without the pool's health URL, so it has its own
    # check: by default a TCP connect with the default timing (HAProxy `backup` server with a
    # bare `check`), never the pool's HTTP check.
    fallback_check: HealthCheck = field(default_factory=HealthCheck)
    # Further connect attempts after a failed one, before the request gets a 503 (HAProxy
    # `retries`): the request path decides which server each attempt goes to.
    retries: int = DEFAULT_RETRIES
    # Further fallbacks after ``fallback``, in the listed order, each with its own check.
    more_fallbacks: tuple[Fallback, ...] = ()
    fallback_mode: FallbackMode = FallbackMode.FIRST

    def fallbacks(self) -> tuple[Fallback, ...]:
        """Every fallback in the listed order."""
        if self.fallback is None:
            return ()
        return (Fallback(self.fallback, self.fallback_check), *self.more_fallbacks)

    def server(self, label: str) -> RealServer | None:
        for server in self.real_servers:
            if server.label == label:
                return server
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    """URL switching (HAProxy ``use_backend ... if``): the first rule whose condition matches
    names the pool."""

    pool: str
    condition: Condition


# Redirect statuses that keep the method and body (307, 308) or turn it into GET (301, 302, 303).
REDIRECT_CODES = (301, 302, 303, 307, 308)
DEFAULT_HTTPS_PORT = 443


@dataclass(frozen=True, slots=True)
class HttpsRedirect:
    """Plain-HTTP requests are answered with a redirect to https:// (HAProxy ``http-request
    redirect scheme https [code N]``, Pound ``Redirect``)."""

    # None: 301 for GET and HEAD (what HAProxy and Pound send), 308 for other methods so that a
    # POST stays a POST with its body instead of becoming a GET.
    code: int | None = None
    port: int | None = None  # None: the first TLS bind's port, or 443 without one

    def status_for(self, method: bytes) -> int:
        if self.code is not None:
            return self.code
        return 301 if method in (b"GET", b"HEAD") else 308


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One virtual server: where it listens, how it routes, its own pool (HAProxy frontend)."""

    label: str
    binds: tuple[Bind, ...]
    pool: Pool  # the default pool, named after the virtual service
    forwardfor: bool = True  # X-Forwarded-For only; X-Forwarded-Proto/-Port/-Host are always set
    # None: append the peer to the client's X-Forwarded-For (HAProxy `option forwardfor`).
    # A tuple: append only when the peer is in one of these networks, else replace the header
    # (the client's own value would be a spoofing vector).
    forwardfor_trusted: tuple[Network, ...] | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    rules: tuple[Rule, ...] = ()
    redirect_to_https: HttpsRedirect | None = None
    hsts: float | None = None  # max-age in seconds, sent on TLS responses only
    rewrite_location: bool = True  # Pound RewriteLocation 1 (its default)
    # Client connections at once (HAProxy frontend `maxconn`); 0: no limit. Beyond it the
    # virtual server stops accepting and new connections wait in the listen backlog.
    max_connections: int = 0
    # Header rules, redirects, deny rules, the method filter, the body limit, error pages.
    policy: RequestPolicy = field(default_factory=RequestPolicy)

    def https_port(self) -> int:
        """The port ``redirect_to_https`` sends clients to."""
        if self.redirect_to_https is not None and self.redirect_to_https.port is not None:
            return self.redirect_to_https.port
        tls_ports = [bind.address.port for bind in self.binds if bind.tls is not None]
        return tls_ports[0] if tls_ports else DEFAULT_HTTPS_PORT


@dataclass(frozen=True, slots=True)
class StatsAuth:
    """HTTP Basic credentials for the stats listener; the password is read from the file's
    first line when the listener starts, never kept in the configuration."""

    user: str
    password_file: str


@dataclass(frozen=True, slots=True)
class StatsSettings:
    bind: Address
    path: str = "/"
    auth: StatsAuth | None = None  # None: the page is read-only and open


DEFAULT_ADMIN_SOCKET_MODE = 0o600  # HAProxy `stats socket ... mode 600` in its examples


@dataclass(frozen=True, slots=True)
class AdminSocketSettings:
    """The runtime API's unix socket (HAProxy ``stats socket PATH mode M level admin``)."""

    path: str
    mode: int = DEFAULT_ADMIN_SOCKET_MODE


class LogKind(enum.Enum):
    STDOUT = "stdout"  # access lines on stdout, diagnostics on stderr (the default)
    STDERR = "stderr"  # both on stderr
    FILE = "file"  # both in one file, reopened on SIGUSR1
    UDP = "udp"  # syslog datagrams to HOST:PORT
    UNIX = "unix"  # syslog datagrams to a unix socket such as /dev/log


class SyslogFormat(enum.Enum):
    RFC3164 = "rfc3164"
    RFC5424 = "rfc5424"


@dataclass(frozen=True, slots=True)
class LogTarget:
    """Where log lines go; ``access`` False keeps the access lines out of this target."""

    kind: LogKind
    path: str | None = None  # FILE and UNIX
    address: Address | None = None  # UDP
    format: SyslogFormat = SyslogFormat.RFC3164
    facility: str = DEFAULT_SYSLOG_FACILITY
    access: bool = True

    def __str__(self) -> str:
        if self.kind is LogKind.UDP:
            return f"udp://{self.address}"
        if self.kind is LogKind.UNIX:
            return f"unix://{self.path}"
        if self.kind is LogKind.FILE:
            return str(self.path)
        return str(self.kind.value)


@dataclass(frozen=True, slots=True)
class GlobalSettings:
    state_dir: str = DEFAULT_STATE_DIR
    grace: float = DEFAULT_GRACE
    log_level: str = "info"
    access_log: bool = True
    stats: StatsSettings | None = None
    admin_socket: AdminSocketSettings | None = None  # off unless configured
    state_file: str | None = None  # HAProxy server-state-file: runtime changes survive a restart
    log: tuple[LogTarget, ...] = (LogTarget(LogKind.STDOUT),)
    user: str | None = None  # name or number; privileges are dropped to it after binding
    group: str | None = None  # default: the user's primary group
    pidfile: str | None = None
    workers: int = DEFAULT_WORKERS  # AUTO_WORKERS, or a count; 1 is one process, no master

    def worker_count(self, cpus: int) -> int:
        """How many worker processes to run when ``cpus`` cores are available."""
        if self.workers != AUTO_WORKERS:
            return self.workers
        return max(1, min(cpus, MAX_AUTO_WORKERS))


DEFAULT_HA_ADVERT = 1.0  # keepalived's advert_int default
DEFAULT_HA_SYNC_PORT = 7443
HA_ROLE_PRIORITY = {"master": 150, "backup": 100}  # keepalived's sample priorities


@dataclass(frozen=True, slots=True)
class HaVip:
    """A floating address (with its prefix length) and the interface it goes on."""

    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    interface: str


@dataclass(frozen=True, slots=True)
class HaNode:
    """One node of the pair; a node finds itself by its address (like corosync's nodelist)."""

    name: str
    address: str  # an IP address on the VRRP interface: VRRP unicast and the sync channel
    priority: int
    sync_cert: str | None = None  # the node's sync certificate (public): its peer pins it
    fingerprint: str | None = None  # SHA-256 of sync_cert's DER, lower-case hex, no colons


@dataclass(frozen=True, slots=True)
class HaSync:
    """The sync channel: TLS both ways, each side pinned to the other's certificate."""

    key: str  # this node's private key for its sync_cert (never copied to the peer)
    port: int = DEFAULT_HA_SYNC_PORT
    bind: str | None = None  # the receiver listens here; None: the node's own address


@dataclass(frozen=True, slots=True)
class HaSettings:
    """``ha:``: a keepalived pair sharing floating addresses; the same text on both nodes."""

    router_id: int  # VRRP virtual_router_id, 1..255, unique on the segment
    interface: str  # the VRRP interface and the default one for the VIPs
    vips: tuple[HaVip, ...]
    nodes: tuple[HaNode, ...]  # exactly two
    advert_interval: float = DEFAULT_HA_ADVERT
    preempt: bool = True  # the higher priority takes the VIPs back when it returns
    auth_pass_file: str | None = None  # VRRP PASS authentication, first line of the file
    notify_master: str | None = None  # a command keepalived runs on becoming master
    sync: HaSync | None = None

    def node_named(self, name: str) -> HaNode | None:
        return next((node for node in self.nodes if node.name == name), None)

    def is_vip(self, host: str) -> bool:
        return any(str(vip.address.ip) == host for vip in self.vips)

    def peer_of(self, node: HaNode) -> HaNode:
        return next(other for other in self.nodes if other is not node)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    virtual_servers: tuple[VirtualService, ...]
    pools: dict[str, Pool] = field(default_factory=dict)  # named pools referenced by rules
    global_: GlobalSettings = field(default_factory=GlobalSettings)
    source: str = "<embedded>"  # the file it came from, for messages
    # Settings that are valid but have no effect, formatted like ConfigError's problems
    # ("FILE:LINE:COL: key.path: message"); `check` prints them, `run` logs them.
    warnings: tuple[str, ...] = ()
    ha: HaSettings | None = None  # a clustered pair (docs/high-availability.md)

    def all_pools(self) -> list[Pool]:
        """Every pool once: each virtual server's own, then the named ones."""
        return [vs.pool for vs in self.virtual_servers] + list(self.pools.values())
