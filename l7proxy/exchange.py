"""Request and response rewriting between client and real server: pure functions over headers.

Header lists are h11's: lower-case names and values as bytes. Framing headers
(Content-Length, Transfer-Encoding) are kept as h11 validated them; h11 then re-serialises the
framing on each side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard Proxy-Connection and the h2c upgrade
# fields RELIABILITY.md asks us to strip. Transfer-Encoding is hop-by-hop too, but it is the
# framing: h11 needs it to frame the body, so it stays.
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
PROXY_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-port"})

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Request head limits (RELIABILITY.md §5): HAProxy tune.bufsize 16 KiB for the whole head,
# tune.http.maxhdr 101 headers; the request-target limit follows Pound's MaxURI practice and
# RFC 9112 §3's advice to support at least 8000 octets.
MAX_REQUEST_TARGET = 8192
MAX_HEADER_COUNT = 101
MAX_HEAD_BYTES = 32768


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is on the other side of one client connection, recorded once at accept."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    tls: bool = False


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


def check_request(
    method: bytes, target: bytes, http_version: bytes, headers: Headers
) -> RequestProblem | None:
    """What h11 accepts but a proxy must refuse (RELIABILITY.md, requests §1-5)."""
    if len(target) > MAX_REQUEST_TARGET:
        return RequestProblem(414, "request target too long")
    if len(headers) > MAX_HEADER_COUNT:
        return RequestProblem(431, "too many header fields")
    size = 0
    has_te = has_cl = False
    hosts = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            has_cl = True
        elif name == b"host":
            hosts += 1
    if size > MAX_HEAD_BYTES:
        return RequestProblem(431, "header section too large")
    if has_te and has_cl:
        # RFC 9112 §6.1 allows Transfer-Encoding to win and closing after; refusing is simpler
        # and closes the request-smuggling door entirely.
        return RequestProblem(400, "both Transfer-Encoding and Content-Length")
    if has_te and http_version == b"1.0":
        return RequestProblem(400, "Transfer-Encoding in an HTTP/1.0 request")
    if hosts > 1:
        return RequestProblem(400, "more than one Host header")
    if b"#" in target:
        return RequestProblem(400, "fragment in the request target")
    if method == b"CONNECT":
        return RequestProblem(405, "CONNECT is not served by a reverse proxy")
    return None


def forward_request_headers(
    headers: Headers,
    client: ClientInfo,
    *,
    forwardfor: bool,
    listener_port: int,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """Headers for the real server: hop-by-hop removed, X-Forwarded-* set, ``drop`` removed.

    X-Forwarded-For is HAProxy's ``option forwardfor``: the client address appended as the last
    hop, after whatever the client sent (joined into one field so the last hop is always last).
    """
    listed = connection_tokens(headers)
    out: Headers = []
    forwarded_for: list[bytes] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in PROXY_SET or name in drop:
            continue
        if name in listed and name not in (b"content-length", b"transfer-encoding", b"host"):
            continue
        if name == b"x-forwarded-for" and forwardfor:
            forwarded_for.append(value)
            continue
        out.append((name, value))
    if forwardfor:
        forwarded_for.append(client.ip.encode("ascii"))
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    upgrade = upgrade_protocol(headers)
    if upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    out.append((b"x-forwarded-proto", b"https" if client.tls else b"http"))
    out.append((b"x-forwarded-port", str(listener_port).encode("ascii")))
    return out


def upgrade_protocol(headers: Headers) -> bytes | None:
    """The protocol a request asks to switch to, when lbproxy may tunnel it (WebSocket and the
    like); never h2c, which h11 cannot speak on the other side (RELIABILITY.md §7)."""
    if b"upgrade" not in connection_tokens(headers):
        return None
    value = header_value(headers, b"upgrade")
    if value is None or b"h2c" in value.lower():
        return None
    return value


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


def request_has_body(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"0", b""):
            return True
    return False


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


# What h11 must see to keep its state machines right: framing, keep-alive, Host (required for
# HTTP/1.1 requests) and Expect (100-continue tracking). Everything else is spliced in as bytes.
H11_SEMANTIC = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"}
)


def split_for_h11(headers: Headers) -> tuple[Headers, Headers]:
    """(the headers h11 must be given, the rest) in their original order."""
    semantic: Headers = []
    rest: Headers = []
    for item in headers:
        (semantic if item[0] in H11_SEMANTIC else rest).append(item)
    return semantic, rest


def splice_head(head: bytes, rest: Headers) -> bytes:
    """Add ``rest`` to a head h11 serialised (before its final blank line).

    h11 validates every name and value of the events it is given; constructing an event with
    all forwarded headers validates them a second time (they were validated when h11 parsed
    them, or are made by lbproxy from validated parts). Only ever pass such headers here.
    """
    if not rest:
        return head
    return head[:-2] + b"".join([name + b": " + value + b"\r\n" for name, value in rest]) + b"\r\n"
