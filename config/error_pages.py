"""Error page files, read once at load: HAProxy's ``errorfile`` (a whole raw HTTP response:
status line, header fields, blank line, body) or Pound's ``ErrorFile`` (the body alone, sent
as text/html). The two are told apart by the first bytes: ``HTTP/``.

The page's own framing fields (Content-Length, Transfer-Encoding, Connection) are dropped:
lbproxy frames what it sends itself, so a stale length in a file can never desynchronise a
client.
"""

from __future__ import annotations

import re

from .actions import ErrorPage

# HAProxy's errorfile must fit a buffer (tune.bufsize, 16 KiB); a bit more room here.
MAX_ERROR_PAGE = 65536
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?\Z")
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*("
    + _VCHAR
    + rb"(?:[ \t\x21-\x7e\x80-\xff]*"
    + _VCHAR
    + rb")?)?[ \t]*\Z"
)
_HTML = ((b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-cache"))


def read_error_page(path: str, status: int) -> ErrorPage:
    """The page in ``path`` for ``status``; ValueError names the file and the cause."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_ERROR_PAGE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_ERROR_PAGE:
        raise ValueError(f"{path} is larger than {MAX_ERROR_PAGE} bytes")
    try:
        return parse_error_page(data, status)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def parse_error_page(data: bytes, status: int) -> ErrorPage:
    if not data.startswith(b"HTTP/"):
        return ErrorPage(status, b"", _HTML, data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise ValueError("a raw HTTP page needs an empty line between its head and its body")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    match = _STATUS_LINE.match(lines[0])
    if match is None:
        raise ValueError(f"line 1: not an HTTP/1.x status line: {lines[0][:80]!r}")
    code = int(match.group(1))
    if code < 200 or code in (204, 304):
        raise ValueError(f"line 1: status {code} cannot carry a page")
    headers: list[tuple[bytes, bytes]] = []
    for number, line in enumerate(lines[1:], start=2):
        field = _FIELD.match(line)
        if field is None:
            raise ValueError(f"line {number}: not a header field: {line[:80]!r}")
        name = field.group(1).lower()
        if name not in _FRAMING:
            headers.append((name, field.group(2) or b""))
    return ErrorPage(code, match.group(2) or b"", tuple(headers), body)
