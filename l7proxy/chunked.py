"""A strict reading of a chunked request body's framing, beside h11's (RFC 9112 §7.1).

h11 reads chunk sizes of up to 20 hex digits (a body it then waits for forever), takes anything
after a ``;`` as a chunk extension (bare CR and NUL included) and accepts bare LF line ends in
trailers. lbproxy re-frames the body for the real server, but a server that read the client's
framing differently would be a smuggling target, so what h11 lets through and RFC 9112 does not
is refused: 400 and close (docs/architecture.md, "Bad input"). Pure: bytes in, ``ChunkError``
out. ``chunk`` and ``LAST_CHUNK`` write a body chunked again, for a server or a client.
"""

from __future__ import annotations

import enum
import re

# Hex digits of a chunk size, leading zeros included (HAProxy refuses sizes past 2^51; 1 TiB in
# one chunk is already more than any client sends).
MAX_CHUNK_SIZE_DIGITS = 16
MAX_CHUNK_SIZE = 1 << 40
MAX_CHUNK_LINE = 4096  # a size line with its extensions (nginx: 4 KiB line buffers)
MAX_TRAILERS = 32768  # the trailer section, like a request head (exchange.MAX_HEAD_BYTES)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*)[ \t]*\Z"
)
_TRAILER = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*[\x21-\x7e\x80-\xff]*(?:[ \t]+[\x21-\x7e\x80-\xff]+)*[ \t]*\Z"
)


class ChunkError(Exception):
    """The chunked framing is not RFC 9112's; the message says where."""


class _State(enum.Enum):
    SIZE = "size"  # reading a size line
    DATA = "data"  # inside a chunk's data
    DATA_END = "data end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"  # after the last chunk: trailer lines up to an empty one
    DONE = "done"


class ChunkedBody:
    """Follows one chunked body through ``feed``; ``done`` once its end has been read."""

    __slots__ = ("_left", "_line", "_state", "_trailers", "declared")

    def __init__(self) -> None:
        self.declared = 0  # the sum of the chunk sizes read so far (for limits.max_body)
        self._state = _State.SIZE
        self._line = bytearray()
        self._left = 0
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes | bytearray) -> None:
        """Check the next bytes of the body; bytes after its end are not looked at."""
        view = memoryview(data)
        while view and self._state is not _State.DONE:
            if self._state is _State.DATA:
                step = min(self._left, len(view))
                self._left -= step
                view = view[step:]
                if not self._left:
                    self._state = _State.DATA_END
                continue
            line, view = self._take_line(view)
            if line is not None:
                self._line_done(line)

    def _take_line(self, view: memoryview) -> tuple[bytes | None, memoryview]:
        """A whole line (without CRLF) once it has arrived, and what follows it."""
        data = bytes(view)
        end = data.find(b"\n")
        if end < 0:
            self._line += data
            self._check_length()
            return None, view[len(view) :]
        self._line += data[:end]
        self._check_length()
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r"):
            raise ChunkError(f"bare LF in the chunked framing ({self._state.value})")
        return line[:-1], view[end + 1 :]

    def _check_length(self) -> None:
        limit = MAX_TRAILERS if self._state is _State.TRAILERS else MAX_CHUNK_LINE
        if len(self._line) > limit:
            raise ChunkError(f"chunked framing line too long ({self._state.value})")

    def _line_done(self, line: bytes) -> None:
        if self._state is _State.DATA_END:
            if line:
                raise ChunkError("chunk data longer than its size")
            self._state = _State.SIZE
        elif self._state is _State.SIZE:
            self._size_line(line)
        else:  # trailers
            if not line:
                self._state = _State.DONE
                return
            self._trailers += len(line) + 2
            if self._trailers > MAX_TRAILERS or _TRAILER.match(line) is None:
                raise ChunkError("invalid trailer field")

    def _size_line(self, line: bytes) -> None:
        match = _SIZE_LINE.match(line)
        if match is None:
            raise ChunkError("invalid chunk size line or extension")
        digits = match.group(1)
        if len(digits) > MAX_CHUNK_SIZE_DIGITS or int(digits, 16) > MAX_CHUNK_SIZE:
            raise ChunkError("chunk size too large")
        size = int(digits, 16)
        self.declared += size
        if size:
            self._left = size
            self._state = _State.DATA
        else:
            self._state = _State.TRAILERS


LAST_CHUNK = b"0\r\n\r\n"  # no trailers: the client's and the server's are not forwarded


def chunk(data: bytes | bytearray) -> bytes:
    """One piece of a chunked body (an empty piece is nothing: it would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
