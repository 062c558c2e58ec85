"""Request and response rewriting between client and real server: pure functions over headers.

Header lists are h11's: lower-case names and values as bytes. Framing headers
(Content-Length, Transfer-Encoding) are kept as h11 validated them; h11 then re-serialises the
framing on each side.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import h11

from balancing.persistence import clear_cookie_value, set_cookie_value
from balancing.scheduler import Choice
from config.model import CookiePersistence, Network, Persistence, VirtualService

from .header_rules import Edits
from .runtime import ClientInfo

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard Proxy-Connection and the h2c upgrade
# field HTTP2-Settings: h11 cannot speak h2c to the server (docs/architecture.md, "Bad input").
# Transfer-Encoding is hop-by-hop too, but it is the framing: h11 needs it to frame the body, so
# it stays.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"http2-settings",
    }
)
# Set by lbproxy from the listener, never trusted from the client.
PROXY_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-port", b"x-forwarded-host"})

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Request head limits (docs/architecture.md, "Bad input"): HAProxy tune.bufsize 16 KiB for the
# whole head, tune.http.maxhdr 101 headers; the request-target limit follows Pound's MaxURI
# practice and RFC 9112 §3's advice to support at least 8000 octets.
MAX_REQUEST_TARGET = 8192
MAX_HEADER_COUNT = 101
MAX_HEAD_BYTES = 32768


@dataclass(frozen=True, slots=True)
class RequestProblem:
    status: int
    reason: str


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-case option names listed in every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


class RequestScan:
    """What one pass over a request's headers learns, for the checks and the forwarding."""

    __slots__ = (
        "content_length",
        "has_body",
        "has_cl",
        "has_te",
        "host",
        "hosts",
        "size",
        "tokens",
        "upgrade",
    )

    def __init__(self, headers: Headers) -> None:
        size = hosts = 0
        has_te = has_cl = has_body = False
        host: bytes | None = None
        upgrade: bytes | None = None
        content_length: bytes | None = None
        tokens: set[bytes] = set()
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                hosts += 1
                if host is None:
                    host = value
            elif name == b"content-length":
                has_cl = True
                content_length = value
                if value.strip() not in (b"0", b""):
                    has_body = True
            elif name == b"transfer-encoding":
                has_te = has_body = True
            elif name == b"connection":
                for token in value.split(b","):
                    token = token.strip().lower()
                    if token:
                        tokens.add(token)
            elif name == b"upgrade" and upgrade is None:
                upgrade = value
        self.size = size
        self.hosts = hosts
        self.host = host  # the first Host value
        self.has_te = has_te
        self.has_cl = has_cl
        self.has_body = has_body
        self.content_length = content_length  # the (last) value as h11 kept it
        self.tokens = tokens  # Connection options, lower case
        # The protocol asked for when lbproxy may tunnel it (WebSocket and the like); never h2c,
        # which h11 cannot speak on the other side (docs/architecture.md, "Bad input").
        if b"upgrade" not in tokens or upgrade is None or b"h2c" in upgrade.lower():
            upgrade = None
        self.upgrade = upgrade


def check_head_bytes(data: bytes | bytearray) -> None:
    """Refuse obs-fold in a request head: h11 would unfold it silently, and a server behind us
    might not (docs/architecture.md, "Bad input")."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    if b"\n " in head or b"\n\t" in head:
        raise h11.RemoteProtocolError("obsolete line folding in the request head", 400)


# RFC 3986 host: an IP-literal in brackets, or a reg-name (IPv4 addresses are reg-names here);
# then an optional port. Anything else in Host is refused (RFC 9112 §3.2: 400).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?\Z")
_GOOD_HOSTS: set[bytes] = set()  # Host values seen valid: most requests repeat a few
_GOOD_HOSTS_MAX = 1024


def _valid_host(host: bytes) -> bool:
    if host in _GOOD_HOSTS:
        return True
    if _HOST.match(host) is None:
        return False
    if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(host)
    return True


# A Content-Length longer than this is no body anybody sends (h11 would wait for it).
MAX_CONTENT_LENGTH_DIGITS = 15


def check_request(
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: Headers,
    scan: RequestScan | None = None,
) -> RequestProblem | None:
    """What h11 accepts but a proxy must refuse (docs/architecture.md, "Bad input")."""
    if http_version not in (b"1.1", b"1.0"):
        # HTTP/2's preface (PRI * HTTP/2.0) and any other major version: never forwarded.
        return RequestProblem(505, f"HTTP/{http_version.decode('ascii', 'replace')}")
    if len(target) > MAX_REQUEST_TARGET:
        return RequestProblem(414, "request target too long")
    if len(headers) > MAX_HEADER_COUNT:
        return RequestProblem(431, "too many header fields")
    if scan is None:
        scan = RequestScan(headers)
    if scan.size > MAX_HEAD_BYTES:
        return RequestProblem(431, "header section too large")
    if scan.has_te and scan.has_cl:
        # RFC 9112 §6.1 allows Transfer-Encoding to win and closing after; refusing is simpler
        # and closes the request-smuggling door entirely.
        return RequestProblem(400, "both Transfer-Encoding and Content-Length")
    if scan.has_te and http_version == b"1.0":
        return RequestProblem(400, "Transfer-Encoding in an HTTP/1.0 request")
    if scan.hosts > 1:
        return RequestProblem(400, "more than one Host header")
    if scan.host is not None and not _valid_host(scan.host):
        return RequestProblem(400, "invalid Host header")
    if scan.content_length is not None and (
        len(scan.content_length) > MAX_CONTENT_LENGTH_DIGITS or not scan.content_length.isdigit()
    ):
        return RequestProblem(400, "invalid Content-Length")
    if method == b"CONNECT":
        return RequestProblem(405, "CONNECT is not served by a reverse proxy")
    if target[:1] != b"/" and target != b"*" and not _absolute_form_agrees(target, scan.host):
        return RequestProblem(400, "the request target names another host than Host")
    if b"#" in target:
        return RequestProblem(400, "fragment in the request target")
    return None


def _absolute_form_agrees(target: bytes, host: bytes | None) -> bool:
    """An absolute-form target (``http://host/path``) must name the host Host names: a proxy
    routing on one and a server reading the other is a smuggling shape (RFC 9112 §3.2.2)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return False
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
    return host is not None and authority.lower() == host.lower()


# Names a Connection header may not remove: the framing, and in a request Host.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b""})
_NOT_LISTABLE = _FRAMING | {b"host"}
_NOT_LISTABLE_RESPONSE = _FRAMING | HOP_BY_HOP  # hop-by-hop names are gone already


def forward_request_split(
    headers: Headers,
    scan: RequestScan,
    *,
    client_ip: bytes,
    forwardfor: bool,
    tail: Sequence[tuple[bytes, bytes]] = (),
    drop: frozenset[bytes] = frozenset(),
    default_host: bytes = b"",
    keep_forwarded_for: bool = True,
) -> tuple[Headers, Headers]:
    """Headers for the real server, split for h11 (the headers h11 must see, then the rest):
    hop-by-hop removed,
    X-Forwarded-For set, ``drop`` removed, ``tail`` (lbproxy's own) appended to the rest.

    X-Forwarded-For is HAProxy's ``option forwardfor``: the client address appended as the last
    hop, after whatever the client sent (joined into one field so the last hop is always last).
    With ``keep_forwarded_for`` false (a peer outside ``forwardfor: {trusted}``), the client's
    own X-Forwarded-For is dropped and the peer's address is the only hop.
    X-Forwarded-Host is the Host the client asked for. An HTTP/1.0 request may come without
    Host; it goes on as HTTP/1.1, which needs one: ``default_host``, the address the client
    connected to.
    """
    listed = scan.tokens - _NOT_LISTABLE if scan.tokens else scan.tokens
    semantic: Headers = []
    rest: Headers = []
    forwarded_for: list[bytes] = []
    for item in headers:
        name = item[0]
        if name in HOP_BY_HOP or name in PROXY_SET or name in drop:
            continue
        if listed and name in listed:
            continue
        if name in H11_SEMANTIC:
            semantic.append(item)
        elif name == b"x-forwarded-for" and forwardfor:
            if keep_forwarded_for:
                forwarded_for.append(item[1])
        else:
            rest.append(item)
    if forwardfor:
        forwarded_for.append(client_ip)
        rest.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    host = scan.host
    if host is None:
        if default_host:
            semantic.append((b"host", default_host))
    else:
        rest.append((b"x-forwarded-host", host))
    if scan.upgrade is not None:
        semantic.append((b"connection", b"upgrade"))
        semantic.append((b"upgrade", scan.upgrade))
    rest.extend(tail)
    return semantic, rest


def trusted_peer(ip: str, trusted: tuple[Network, ...] | None) -> bool:
    """Whether a client's own X-Forwarded-For is kept (``forwardfor: {trusted: [...]}``):
    always without a list (HAProxy's and Pound's behaviour), else only from those networks."""
    if trusted is None:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def local_authority(client: ClientInfo) -> bytes:
    """The address the client connected to, as a Host value."""
    host = f"[{client.local_ip}]" if ":" in client.local_ip else client.local_ip
    return f"{host}:{client.local_port}".encode("ascii")


def forwarded_tail(client: ClientInfo, listener_port: int) -> Headers:
    """The X-Forwarded-Proto and -Port every request of one connection carries."""
    return [
        (b"x-forwarded-proto", b"https" if client.tls else b"http"),
        (b"x-forwarded-port", str(listener_port).encode("ascii")),
    ]


def switching_protocols_headers(headers: Headers) -> Headers:
    """A 101 response keeps its Upgrade and Connection: upgrade; other hop-by-hop goes."""
    out = forward_response_headers(headers)
    value = header_value(headers, b"upgrade")
    if value is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", value)]
    return out


def forward_response_headers(
    headers: Headers, extra: Iterable[tuple[bytes, bytes]] = ()
) -> Headers:
    """Headers for the client: hop-by-hop removed, ``extra`` appended."""
    listed = connection_tokens(headers)
    out: Headers = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP
        and (name not in listed or name in (b"content-length", b"transfer-encoding"))
    ]
    out.extend(extra)
    return out


def add_private_cache_control(headers: Headers) -> Headers:
    """HAProxy ``nocache``: a response that sets the persistence cookie is marked private.

    Like HAProxy, a header is added, never removed; a response already uncacheable is left alone.
    """
    for name, value in headers:
        if name == b"cache-control":
            lowered = value.lower()
            if b"private" in lowered or b"no-store" in lowered or b"no-cache" in lowered:
                return headers
    return [*headers, (b"cache-control", b"private")]


def ambiguous_framing(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Transfer-Encoding and Content-Length together: the smuggling shape (RFC 9112 §6.1)."""
    names = {name for name, _ in headers}
    return b"transfer-encoding" in names and b"content-length" in names


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _authority_parts(authority: bytes, default_port: int) -> tuple[bytes, int]:
    host, port = authority, default_port
    if authority.startswith(b"["):
        end = authority.find(b"]")
        host = authority[1:end]
        rest = authority[end + 1 :]
        if rest.startswith(b":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif authority.count(b":") == 1:
        name, _, digits = authority.partition(b":")
        host = name
        if digits.isdigit():
            port = int(digits)
    return host.lower(), port


def rewrite_location(
    location: bytes, *, server_host: str, server_port: int, request_host: bytes, tls: bool
) -> bytes:
    """Pound's ``RewriteLocation 1``: a Location that points at the real server itself, or at
    this virtual server with the wrong scheme, is rewritten to what the client used."""
    scheme, sep, rest = location.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https") or not request_host:
        return location
    slash = rest.find(b"/")
    authority, path = (rest, b"") if slash < 0 else (rest[:slash], rest[slash:])
    default_port = 443 if scheme.lower() == b"https" else 80
    host, port = _authority_parts(authority, default_port)
    client_scheme = b"https" if tls else b"http"
    points_at_server = host == server_host.lower().encode() and port == server_port
    wanted_host, _ = _authority_parts(request_host, 443 if tls else 80)
    wrong_scheme = host == wanted_host and scheme.lower() != client_scheme
    if points_at_server or wrong_scheme:
        return client_scheme + b"://" + request_host + path
    return location


def https_redirect_target(host: bytes, target: bytes, tls_port: int) -> bytes:
    """Where ``redirect_to_https`` sends a plain-HTTP request: same host and path, TLS port."""
    name, _ = _authority_parts(host, 80)
    if b":" in name:
        name = b"[" + name + b"]"
    port = b"" if tls_port == 443 else b":" + str(tls_port).encode()
    return b"https://" + name + port + target


# The fields that frame a message or steer the connection: framing, keep-alive, Host and Expect.
# They are kept apart from the rest, which is passed on as it is: the writers (request_writer,
# response_writer) and h11's events for lbproxy's own answers look only at these.
H11_SEMANTIC = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"}
)


def forward_response_split(headers: Headers) -> tuple[Headers, Headers]:
    """``forward_response_headers`` split for h11 (the headers h11 must be given, then the
    rest, each in their original order), in one pass when no
    Connection header lists more than hop-by-hop names (the usual ``keep-alive``)."""
    semantic: Headers = []
    rest: Headers = []
    listed: set[bytes] | None = None
    for item in headers:
        name = item[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                listed = (listed or set()) | {t.strip().lower() for t in item[1].split(b",")}
            continue
        (semantic if name in H11_SEMANTIC else rest).append(item)
    if listed:
        # A listed name may come before its Connection header: removed after the fact.
        listed -= _NOT_LISTABLE_RESPONSE
        if listed:
            semantic = [item for item in semantic if item[0] not in listed]
            rest = [item for item in rest if item[0] not in listed]
    return semantic, rest


class ResponseRewrite(NamedTuple):
    """What lbproxy changes in the responses of the server chosen for one request (made per
    attempt: a named tuple is cheaper to make than a frozen dataclass)."""

    set_cookie: bytes | None = None  # a Set-Cookie value: the persistence cookie, or its clearing
    nocache: bool = False  # HAProxy ``nocache``: the response that sets the cookie is private
    request_host: bytes = b""  # the Host the client used; empty: Location is left alone
    server_host: str = ""
    server_port: int = 0
    tls: bool = False  # the client came over TLS
    hsts: int | None = None  # Strict-Transport-Security max-age, on TLS responses only
    # The response_headers rules this request's conditions met, with what their %[...] mean.
    header_rules: Edits | None = None


def response_rewrite(
    choice: Choice, persistence: Persistence | None, vs: VirtualService, host: bytes, tls: bool
) -> ResponseRewrite:
    """What the chosen server's responses get changed in, for a request to ``host``."""
    cookie: bytes | None = None
    if isinstance(persistence, CookiePersistence):
        if choice.clear_cookie:
            cookie = clear_cookie_value(persistence, tls)
        elif choice.insert_cookie:
            cookie = set_cookie_value(persistence, choice.server.label, tls)
    address = choice.server.address
    return ResponseRewrite(
        set_cookie=cookie,
        nocache=choice.insert_cookie,
        request_host=host if vs.rewrite_location else b"",
        server_host=address.host,
        server_port=address.port,
        tls=tls,
        hsts=int(vs.hsts) if tls and vs.hsts is not None else None,
    )


def client_response_headers(headers: Headers, rewrite: ResponseRewrite) -> tuple[Headers, Headers]:
    """What the client gets, split for h11: hop-by-hop gone, the cookie, nocache, Location
    rewritten, HSTS (all of these in the spliced rest)."""
    semantic, rest = forward_response_split(headers)
    if rewrite.set_cookie is not None:
        rest.append((b"set-cookie", rewrite.set_cookie))
        if rewrite.nocache:
            rest = add_private_cache_control(rest)
    if rewrite.request_host:
        for index, (name, value) in enumerate(rest):
            if name == b"location" or name == b"content-location":
                rest[index] = (
                    name,
                    rewrite_location(
                        value,
                        server_host=rewrite.server_host,
                        server_port=rewrite.server_port,
                        request_host=rewrite.request_host,
                        tls=rewrite.tls,
                    ),
                )
    if rewrite.hsts is not None and not header_value(rest, b"strict-transport-security"):
        rest.append((b"strict-transport-security", b"max-age=%d" % rewrite.hsts))
    if rewrite.header_rules is not None:
        rest = rewrite.header_rules.apply(rest)
    return semantic, rest
