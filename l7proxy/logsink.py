"""Where access log lines go: a text stream, written in batches.

Going through ``logging`` cost about a tenth of a proxied request (a LogRecord, a lock and a
flush per line); the access log is data, not diagnostics, so it is written directly. Lines are
flushed at least every FLUSH_INTERVAL seconds, when MAX_PENDING lines wait, and at shutdown.
"""

from __future__ import annotations

import sys
from typing import TextIO

import trio

FLUSH_INTERVAL = 0.5  # seconds a line may wait: `tail -f` still feels live
MAX_PENDING = 256  # lines held at most before a write, bounding memory under load


class AccessLogSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []

    def write(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        stream = self._stream or sys.stdout
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            stream.write(text)
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
