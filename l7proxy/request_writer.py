"""The request as a real server gets it, written without h11: the head and the body framing.

Every name and value here was validated when h11 parsed the client's request, or was made by
lbproxy from validated parts, so nothing is validated again. The bytes are what h11's client
side wrote: ``METHOD target HTTP/1.1``, Host first, then the fields in order; a chunked body is
chunked again piece by piece (lbproxy's strict reader checked the client's framing), a
Content-Length body goes on as it came.
"""

from __future__ import annotations

from collections.abc import Iterable


def request_head(
    method: bytes,
    target: bytes,
    semantic: Iterable[tuple[bytes, bytes]],
    rest: Iterable[tuple[bytes, bytes]],
) -> bytes:
    """The head: Host first (as h11 writes it), then ``semantic`` and ``rest`` in order."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    others = []
    for item in semantic:
        if item[0] == b"host":
            lines.append(item[0] + b": " + item[1])
        else:
            others.append(item[0] + b": " + item[1])
    lines += others
    lines += [name + b": " + value for name, value in rest]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
