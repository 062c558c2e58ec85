"""A relayed response as the client gets it, written without h11's send: sans-IO.

h11 reads the client's requests; writing a response through it cost a second validation of the
headers, up to three more when it fixes the framing, and a state machine step per head, body
piece and end: about a sixth of a small proxied request. ``reply_head`` makes the same bytes
h11 0.16's server side makes (``Connection._clean_up_response_headers_for_sending``, the
writers), and says how the body goes and whether the connection ends after it:

- the status line is always ``HTTP/1.1``;
- a body of unknown length (chunked from the server, or no Content-Length) goes chunked to an
  HTTP/1.1 client, and as it comes to an HTTP/1.0 one, which then sees the connection close;
- Content-Length is dropped when the length is unknown; ``Connection: close`` is set when the
  request or the framing means the connection cannot go on;
- no body at all for HEAD, 204 and 304.

``tests/l7proxy/test_response_writer.py`` compares the bytes with h11's (property-based). Only
final (2xx-5xx) responses come here; interim ones and lbproxy's own answers still go through
h11.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]


class Body(Enum):
    NONE = "none"  # HEAD, 204, 304: nothing, whatever the server sent
    AS_IS = "as is"  # Content-Length, or until the close for an HTTP/1.0 client
    CHUNKED = "chunked"  # each piece chunked; LAST_CHUNK at the end


class Reply(NamedTuple):
    head: bytes
    body: Body
    close: bool  # the client connection ends after this response


_BODYLESS = (204, 304)


def reply_head(
    status: int,
    reason: bytes,
    semantic: Headers,
    rest: Headers,
    *,
    method: bytes,
    version: bytes,
    keep_alive: bool,
) -> Reply:
    """The head for ``status`` with the framing headers ``semantic`` (lower-case names, as the
    response reader normalised them) and the other fields ``rest``, to a ``method`` request of
    HTTP ``version``; ``keep_alive`` is false when that request asked for the close."""
    has_te = has_cl = False
    for name, _ in semantic:
        if name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            has_cl = True
    headers = semantic
    need_close = False
    if status not in _BODYLESS and (has_te or not has_cl):
        # A body of unknown length (h11 frames a HEAD answer as it would the GET's).
        headers = [item for item in headers if item[0] not in _FRAMING]
        if version < b"1.1":
            need_close = method != b"HEAD"
            has_te = False
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
            has_te = True
        has_cl = False
    if not keep_alive or need_close:
        tokens = {b"close"}
        for name, value in headers:
            if name == b"connection":
                tokens.update(_tokens(value))
        tokens.discard(b"keep-alive")
        headers = [item for item in headers if item[0] != b"connection"]
        headers += [(b"Connection", token) for token in sorted(tokens)]
        close = True
    else:
        close = any(name == b"connection" and b"close" in _tokens(v) for name, v in headers)
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    hosts = [item for item in headers if item[0] == b"host"]
    if hosts:  # h11 writes any Host first
        headers = hosts + [item for item in headers if item[0] != b"host"]
    lines += [name + b": " + value for name, value in headers]
    lines += [name + b": " + value for name, value in rest]
    lines.append(b"\r\n")
    if method == b"HEAD" or status in _BODYLESS:
        body = Body.NONE
    elif has_te:
        body = Body.CHUNKED
    else:
        body = Body.AS_IS
    return Reply(b"\r\n".join(lines), body, close)


_FRAMING = (b"content-length", b"transfer-encoding")


def _tokens(value: bytes) -> list[bytes]:
    return [token for token in (part.strip() for part in value.lower().split(b",")) if token]
