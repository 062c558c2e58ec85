"""The channel between the master and one worker process: a unix socketpair carrying the frames
of ``worker_messages`` (docs/architecture.md, "Worker processes").

Either side may send from several tasks (the master's state pushes, a worker's counter pushes):
sends are serialised by a lock so frames never interleave.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import trio

from .stream import SockStream
from .worker_messages import HEADER, MAX_FRAME, FrameReader

RECEIVE_SIZE = 65536


class Link:
    """One end of a master-worker socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._stream = SockStream(sock)
        self._sending = trio.Lock()
        self._reader = FrameReader()

    async def send(self, frame: bytes) -> bool:
        """Send whole frames; False when the other side is gone (nothing to do about it)."""
        async with self._sending:
            try:
                await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
        return True

    async def frames(self) -> AsyncIterator[tuple[bytes, Any]]:
        """Frames as they arrive, until the other side closes."""
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            for frame in self._reader.feed(data):
                yield frame

    def close(self) -> None:
        self._stream.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError("the master closed the link before the start-up frames")
        data += more
    return data


def read_frames_blocking(sock: socket.socket, count: int) -> list[tuple[bytes, Any]]:
    """The first ``count`` frames, read before trio runs (a worker's start-up message); what
    follows stays in the socket for the ``Link``."""
    reader = FrameReader()
    frames: list[tuple[bytes, Any]] = []
    while len(frames) < count:
        header = _read_exactly(sock, HEADER.size)
        (length,) = HEADER.unpack(header)
        frames.extend(reader.feed(header + _read_exactly(sock, min(length, MAX_FRAME))))
    return frames
