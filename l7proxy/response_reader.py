"""A real server's response, read without h11: sans-IO, bytes in, events out.

h11 stays the parser of client requests, where its strictness protects the real servers. On
the server side it cost about as much again per proxied request (an event object, a header
validation pass and a state machine step per head, body piece and end), for bytes that only
pass through. This reader takes the same decisions as h11 0.16's client side on the same bytes:

- the status line, the header lines and obsolete line folding by h11's grammar (``_abnf``);
- Content-Length and Transfer-Encoding normalised and refused as ``normalize_and_validate``
  does; informational (1xx) heads are read and handed on, a 101 ends the reading;
- the framing of RFC 9112 §6.3 as h11 chooses it: no body for 204, 304 and HEAD; chunked;
  Content-Length; else until the server closes (CONNECT is refused before any server is
  chosen, so its 2xx never comes here);
- chunked bodies with h11's chunk grammar (1-20 hex digits, any extension, trailing blanks),
  the exact CRLF after each chunk, and trailer lines;
- keep-alive as h11 sees it: HTTP/1.1 or later without ``Connection: close``, and a framed body.

``tests/l7proxy/test_response_reader.py`` holds it to that with a property-based differential
test against h11 over generated and mutated responses, fed in random pieces. What lbproxy
refuses beyond h11 (both framing headers at once, an oversized head that came in one read) is
checked by relay.py, as it was with h11.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]


class BadResponse(Exception):
    """The server's bytes are not an HTTP/1.x response h11 would accept."""


class Truncated(BadResponse):
    """The server closed in the middle of a framed body."""


class Framing(Enum):
    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "until close"  # HTTP/1.0 style: the body ends when the connection does


class Signal(Enum):
    NEED_DATA = "need data"  # nothing more can be read from what has arrived
    END = "end of response"  # the body is complete (after EOF too, for CLOSE framing)


NEED_DATA = Signal.NEED_DATA
END = Signal.END


class ResponseHead(NamedTuple):
    status: int
    reason: bytes
    http_version: bytes
    # Lower-case names, in order; Content-Length once, stripped; Transfer-Encoding lower case.
    headers: Headers


# h11's grammar (h11/_abnf.py), byte for byte.
_OWS = rb"[ \t]*"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_CONTENT = _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR + rb"+)*"
_FIELD = rb"(" + _TOKEN + rb"):" + _OWS + rb"((?:" + _FIELD_CONTENT + rb")?)" + _OWS
_HEADER_FIELD = re.compile(_FIELD)
_FIELD_LINE = re.compile(_FIELD + rb"\r\n")
# Field lines that all end in CRLF and need no unfolding (no line starts with a blank).
_FIELD_BLOCK = re.compile(
    rb"(?:" + _TOKEN + rb":" + _OWS + rb"(?:" + _FIELD_CONTENT + rb")?" + _OWS + rb"\r\n)*"
)
_STATUS_LINE = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|" + _FIELD_VCHAR + rb")*))?"
)
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?" + _OWS + rb"\r\n")
_FOLD = re.compile(rb"[ \t]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_DIGITS = re.compile(rb"[0-9]+")
CONTENT_LENGTH_MAX_DIGITS = 20  # h11's bound
_BODYLESS = (204, 304)

_HEAD, _BODY, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _DONE, _SWITCHED = range(7)


class ResponseReader:
    """One response from one server connection, to the request ``method``.

    ``receive_data`` takes what the server sent (``b""`` for its close); ``next_event`` gives a
    ``ResponseHead`` (1xx heads first, if any), then body pieces as ``bytes``/``bytearray``,
    then ``END``; ``NEED_DATA`` when more must arrive; ``BadResponse`` where h11 would raise.
    """

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_closed",
        "_crlf",
        "_max_head",
        "_method",
        "_remaining",
        "_search",
        "_state",
        "_upgrade",
        "framing",
        "keep_alive",
        "length",
    )

    def __init__(self, method: bytes, *, max_head: int = 16384, upgrade: bool = False) -> None:
        self._method = method
        self._max_head = max_head  # an unfinished head longer than this is refused (h11's 431)
        self._upgrade = upgrade  # the request offered an Upgrade: a 101 may switch protocols
        self._buffer = bytearray()
        self._closed = False
        self._state = _HEAD
        self._search = 0  # where the blank-line search goes on from
        self._remaining = 0  # of a Content-Length body
        self._chunk_left = 0
        self._crlf = b""  # what of the CRLF after a chunk is still to come
        self.framing: Framing | None = None
        self.length = 0  # with Framing.LENGTH
        self.keep_alive = True

    # ---- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        if data:
            if self._closed:
                raise RuntimeError("received data after the close")
            self._buffer += data
        else:
            self._closed = True

    @property
    def trailing_data(self) -> bytes:
        """What came after the response (or after a 101: the new protocol's first bytes)."""
        return bytes(self._buffer)

    @property
    def buffered(self) -> int:
        """How many received bytes are not read yet."""
        return len(self._buffer)

    @property
    def switched(self) -> bool:
        return self._state == _SWITCHED

    def reusable(self) -> bool:
        """The connection may carry another request: this response ended where its framing
        said, it allows keep-alive, and nothing came after it."""
        return self._state == _DONE and self.keep_alive and not self._buffer and not self._closed

    # ---- events ------------------------------------------------------------------------------

    def next_event(self) -> ResponseHead | bytes | bytearray | Signal:
        state = self._state
        if state == _BODY:
            return self._length_body()  # the common case first: it sees the close itself
        event: ResponseHead | bytes | bytearray | Signal
        if state == _HEAD:
            event = self._head()
        elif state in (_CHUNK_DATA, _CHUNK_CRLF):
            event = self._chunked()
        elif state == _TRAILER:
            event = self._trailer()
        else:
            # After the end (and after a 101) nothing more is read: h11 pauses there.
            return NEED_DATA
        if event is NEED_DATA:
            buffer = self._buffer
            if len(buffer) > self._max_head:
                raise BadResponse("Receive buffer too long")
            if self._closed:
                if buffer:
                    raise BadResponse("peer unexpectedly closed connection")
                if state == _HEAD:
                    raise BadResponse("server closed before responding")
                raise Truncated(
                    "peer closed connection without sending complete message body "
                    "(incomplete chunked read)"
                )
        return event

    def _head(self) -> ResponseHead | Signal:
        buffer = self._buffer
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            raise BadResponse("no response line received")
        match = _BLANK_LINE.search(buffer, self._search)
        if match is None:
            if buffer and buffer[0] < 0x21:
                raise BadResponse("illegal request line")
            self._search = max(0, len(buffer) - 2)
            return NEED_DATA
        end = match.end()
        head = bytes(buffer[:end])
        del buffer[:end]
        self._search = 0
        first = head.find(b"\n")
        line = head[:first]
        if line[-1:] == b"\r":
            line = line[:-1]
        status = _STATUS_LINE.fullmatch(line)
        if status is None:
            raise BadResponse(f"illegal status line: {line!r}")
        version, code, reason = status.groups()
        status_code = int(code)
        # The field lines, each with its LF; the blank line's LF starts at match.start() + 1.
        headers = _normalized(_fields(head[first + 1 : match.start() + 1]))
        if status_code < 200:
            if status_code < 100:
                raise BadResponse(f"status code {status_code} out of range")
            if status_code == 101:
                if not self._upgrade:
                    raise BadResponse("101 without an upgrade proposal")
                self._state = _SWITCHED
            return ResponseHead(status_code, reason or b"", version, headers)
        self._frame(status_code, version, headers)
        return ResponseHead(status_code, reason or b"", version, headers)

    def _frame(self, status: int, version: bytes, headers: Headers) -> None:
        """h11's _body_framing and _keep_alive for a final response."""
        chunked = False
        length: bytes | None = None
        keep_alive = version >= b"1.1"
        for name, value in headers:
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"content-length":
                length = value
            elif name == b"connection" and keep_alive:
                for token in value.lower().split(b","):
                    if token.strip() == b"close":
                        keep_alive = False
        self.keep_alive = keep_alive
        method = self._method
        if status in _BODYLESS or method == b"HEAD":
            self.framing, self.length = Framing.LENGTH, 0
        elif chunked:
            self.framing = Framing.CHUNKED
            self._state = _CHUNK_DATA
            return
        elif length is not None:
            self.framing, self.length = Framing.LENGTH, int(length)
        else:
            self.framing = Framing.CLOSE
            self.keep_alive = False
            self._remaining = -1
            self._state = _BODY
            return
        self._remaining = self.length
        self._state = _BODY

    def _length_body(self) -> bytes | bytearray | Signal:
        remaining = self._remaining
        if remaining == 0:
            self._state = _DONE
            return END
        buffer = self._buffer
        if not buffer:
            if self._closed:
                if remaining < 0:
                    self._state = _DONE
                    return END
                received = self.length - remaining
                raise Truncated(
                    "peer closed connection without sending complete message body "
                    f"(received {received} bytes, expected {self.length})"
                )
            return NEED_DATA
        if remaining < 0 or len(buffer) <= remaining:
            # The whole buffer is body: handed on as it is, no copy.
            self._buffer = bytearray()
            if remaining > 0:
                self._remaining = remaining - len(buffer)
            return buffer
        data = buffer[:remaining]
        del buffer[:remaining]
        self._remaining = 0
        return data

    def _chunked(self) -> bytes | bytearray | Signal:
        buffer = self._buffer
        if self._state == _CHUNK_CRLF:
            expected = self._crlf
            piece = buffer[: len(expected)]
            if not piece:
                return NEED_DATA
            if piece != expected[: len(piece)]:
                raise BadResponse(
                    f"malformed chunk footer: {bytes(piece)!r} (expected {expected!r})"
                )
            del buffer[: len(piece)]
            self._crlf = expected[len(piece) :]
            if self._crlf:
                return NEED_DATA
            self._state = _CHUNK_DATA
        if self._chunk_left == 0:
            end = buffer.find(b"\r\n")
            if end < 0:
                return NEED_DATA
            line = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            match = _CHUNK_HEADER.fullmatch(line)
            if match is None:
                raise BadResponse(f"illegal chunk header: {line!r}")
            size = int(match.group(1), 16)
            if size == 0:
                self._state = _TRAILER
                return self._trailer()
            self._chunk_left = size
        if not buffer:
            return NEED_DATA
        left = self._chunk_left
        if len(buffer) <= left:
            data = buffer
            self._buffer = bytearray()
        else:
            data = buffer[:left]
            del buffer[:left]
        left -= len(data)
        self._chunk_left = left
        if left == 0:
            self._crlf = b"\r\n"
            self._state = _CHUNK_CRLF
        return data

    def _trailer(self) -> Signal:
        buffer = self._buffer
        if buffer[:1] == b"\n":
            del buffer[:1]
        elif buffer[:2] == b"\r\n":
            del buffer[:2]
        else:
            match = _BLANK_LINE.search(buffer)
            if match is None:
                return NEED_DATA
            block = bytes(buffer[: match.start() + 1])
            del buffer[: match.end()]
            _normalized(_fields(block))  # validated like h11's trailers, then dropped
        self._state = _DONE
        return END


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) of each field line in ``block`` (every line ends with its LF), unfolded
    and checked by h11's grammar."""
    if _FIELD_BLOCK.fullmatch(block) is not None:
        # The usual head, every line a field ending in CRLF: one pass in C finds them all.
        return _FIELD_LINE.findall(block)
    lines: list[bytes | bytearray] = []
    for line in block.split(b"\n")[:-1]:
        if line[-1:] == b"\r":
            line = line[:-1]
        fold = _FOLD.match(line)
        if fold is None:
            lines.append(line)
            continue
        if not lines:
            raise BadResponse("continuation line at start of headers")
        last = lines[-1]
        if not isinstance(last, bytearray):
            last = bytearray(last)
            lines[-1] = last
        last += b" "
        last += line[fold.end() :]
    fields: list[tuple[bytes, bytes]] = []
    for unfolded in lines:
        field = _HEADER_FIELD.fullmatch(unfolded)
        if field is None:
            raise BadResponse(f"illegal header line: {bytes(unfolded)!r}")
        fields.append((field[1], field[2]))
    return fields


def _normalized(fields: list[tuple[bytes, bytes]]) -> Headers:
    """Lower-case names, and Content-Length and Transfer-Encoding as h11 normalises them."""
    headers: Headers = []
    seen_length: bytes | None = None
    seen_te = False
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise BadResponse("conflicting Content-Length headers")
            value = lengths.pop()
            if _DIGITS.fullmatch(value) is None or len(value) > CONTENT_LENGTH_MAX_DIGITS:
                raise BadResponse("bad Content-Length")
            if seen_length is None:
                seen_length = value
            elif seen_length != value:
                raise BadResponse("conflicting Content-Length headers")
            else:
                continue
        elif name == b"transfer-encoding":
            if seen_te:
                raise BadResponse("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise BadResponse("Only Transfer-Encoding: chunked is supported")
            seen_te = True
        headers.append((name, value))
    return headers
