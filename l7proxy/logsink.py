"""Where access log lines go: the log targets (stdout by default), written in batches.

Going through ``logging`` cost about a tenth of a proxied request (a LogRecord, a lock and a
flush per line); the access log is data, not diagnostics, so it is written directly. Lines are
flushed at least every FLUSH_INTERVAL seconds, when MAX_PENDING lines wait, and at shutdown.
A syslog target gets one datagram per line at the flush; its header time is the flush time
(the line itself carries the request's own date).
"""

from __future__ import annotations

import sys
from typing import TextIO

import trio

from .log_targets import LogOutputs

FLUSH_INTERVAL = 0.5  # seconds a line may wait: `tail -f` still feels live
MAX_PENDING = 256  # lines held at most before a write, bounding memory under load


class AccessLogSink:
    """``write(line)`` is all the connection code sees. Without ``outputs`` lines go to
    ``stream`` (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, outputs: LogOutputs | None = None) -> None:
        self._stream = stream
        self.outputs = outputs
        self._pending: list[str] = []

    @property
    def dropped(self) -> int:
        """Lines (access and diagnostic) the targets could not take at once and dropped."""
        return self.outputs.dropped if self.outputs is not None else 0

    def write(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines = self._pending
        self._pending = []
        if self.outputs is not None:
            self.outputs.access_lines(lines)
            return
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not take the proxy down

    async def run(self) -> None:
        """Flush on a timer until cancelled, then once more."""
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                self.flush()
        finally:
            self.flush()
