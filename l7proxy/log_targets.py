"""The log targets: standard streams, a file reopened on SIGUSR1, syslog datagrams. [io]

Access lines arrive in batches from ``AccessLogSink``; diagnostics one by one from the
``logging`` handler below. Nothing here may block or raise into the proxy: a syslog datagram
that cannot leave at once (EAGAIN, ENOBUFS, ECONNREFUSED, a missing socket) is dropped and
counted in ``dropped``, as HAProxy drops log lines rather than slow traffic; a file that fails
to write counts its lines the same way.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
from collections.abc import Sequence

from config.model import LogKind, LogTarget, SyslogFormat

from .syslog_format import ACCESS_SEVERITY, Origin, format_message, severity_of

log = logging.getLogger("lbproxy.log")

DIAGNOSTIC_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_MODE = 0o640  # the group (adm, say) may read the log; others may not


class LogOutputError(Exception):
    """A target cannot be opened at start: one line naming it and the cause."""


class Output:
    """One opened target."""

    def __init__(self, target: LogTarget) -> None:
        self.target = target
        self.access = target.access
        self.dropped = 0

    def access_lines(self, lines: Sequence[str], when: datetime.datetime) -> None:
        raise NotImplementedError

    def diagnostic(self, record: logging.LogRecord, text: str) -> None:
        """``text`` is the record with time, level and logger name, for text targets."""
        raise NotImplementedError

    def reopen(self) -> bool:
        """SIGUSR1: only files have something to do. False when the reopen failed."""
        return True

    def close(self) -> None:
        """Release the descriptor; standard streams stay open."""


class StreamOutput(Output):
    """``stdout``: access lines on stdout, diagnostics on stderr; ``stderr``: both on stderr.
    The streams are looked up at each write so a test's captured streams are used."""

    def access_lines(self, lines: Sequence[str], when: datetime.datetime) -> None:
        stream = sys.stdout if self.target.kind is LogKind.STDOUT else sys.stderr
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.dropped += len(lines)  # a closed or broken stream must not take the proxy down

    def diagnostic(self, record: logging.LogRecord, text: str) -> None:
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            self.dropped += 1


class FileOutput(Output):
    """Appends to a file; ``reopen`` opens the path again (after logrotate renamed it)."""

    def __init__(self, target: LogTarget) -> None:
        super().__init__(target)
        assert target.path is not None
        self.path = target.path
        self.fd = self._open()
        self._reopen_failed = False

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, FILE_MODE)

    def _write(self, data: bytes, count: int) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError:
            self.dropped += count  # a full disk must not stop the traffic

    def access_lines(self, lines: Sequence[str], when: datetime.datetime) -> None:
        self._write(("\n".join(lines) + "\n").encode("utf-8", "replace"), len(lines))

    def diagnostic(self, record: logging.LogRecord, text: str) -> None:
        self._write((text + "\n").encode("utf-8", "replace"), 1)

    def reopen(self) -> bool:
        try:
            fd = self._open()
        except OSError as error:
            # Keep writing to the old file; say so once until a reopen works again.
            if not self._reopen_failed:
                self._reopen_failed = True
                log.error(
                    "log file %s: cannot reopen (%s); still writing to the old file",
                    self.path,
                    error.strerror or error,
                )
            return False
        old, self.fd = self.fd, fd
        os.close(old)
        if self._reopen_failed:
            self._reopen_failed = False
            log.warning("log file %s: reopened", self.path)
        return True

    def close(self) -> None:
        os.close(self.fd)


class SyslogOutput(Output):
    """Datagrams to a UDP address (connected, so a closed port shows as ECONNREFUSED) or to a
    unix socket path (sent by name each time, so a restarted syslog daemon is found again)."""

    def __init__(self, target: LogTarget, hostname: str, pid: int) -> None:
        super().__init__(target)
        self.unix_path: str | None = None
        if target.kind is LogKind.UNIX:
            assert target.path is not None
            self.unix_path = target.path
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            assert target.address is not None
            family, _, _, _, sockaddr = socket.getaddrinfo(
                target.address.host, target.address.port, type=socket.SOCK_DGRAM
            )[0]
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.connect(sockaddr)
        self.sock.setblocking(False)
        # glibc's syslog() leaves the host name out of RFC 3164 on the local socket: the
        # daemon adds its own. RFC 5424 always has the field.
        local_bsd = self.unix_path is not None and target.format is SyslogFormat.RFC3164
        self.origin = Origin(None if local_bsd else hostname, pid, target.facility, target.format)

    def _send(self, data: bytes) -> None:
        try:
            if self.unix_path is not None:
                self.sock.sendto(data, self.unix_path)
            else:
                self.sock.send(data)
        except OSError:
            self.dropped += 1

    def access_lines(self, lines: Sequence[str], when: datetime.datetime) -> None:
        for line in lines:
            self._send(format_message(self.origin, ACCESS_SEVERITY, when, line))

    def diagnostic(self, record: logging.LogRecord, text: str) -> None:
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        message = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self._send(format_message(self.origin, severity_of(record.levelno), when, message))

    def close(self) -> None:
        self.sock.close()


def open_output(target: LogTarget, hostname: str, pid: int) -> Output:
    """Open one target; LogOutputError (naming it) when it cannot be."""
    try:
        if target.kind in (LogKind.STDOUT, LogKind.STDERR):
            return StreamOutput(target)
        if target.kind is LogKind.FILE:
            return FileOutput(target)
        return SyslogOutput(target, hostname, pid)
    except OSError as error:
        reason = error.strerror or str(error)
        raise LogOutputError(f"log target {target}: {reason}") from error


class LogOutputs:
    """Every opened target of ``global.log``: what the access sink and the logging handler
    write to, what SIGUSR1 reopens, and the drop count they share."""

    def __init__(self, outputs: Sequence[Output]) -> None:
        self.outputs = list(outputs)
        self.access = [o for o in self.outputs if o.access]

    @classmethod
    def open(cls, targets: Sequence[LogTarget]) -> LogOutputs:
        hostname = socket.gethostname()
        pid = os.getpid()
        opened: list[Output] = []
        try:
            for target in targets:
                opened.append(open_output(target, hostname, pid))
        except LogOutputError:
            for output in opened:
                output.close()
            raise
        return cls(opened)

    @property
    def dropped(self) -> int:
        return sum(o.dropped for o in self.outputs)

    def access_lines(self, lines: Sequence[str]) -> None:
        when = datetime.datetime.now().astimezone()
        for output in self.access:
            output.access_lines(lines, when)

    def reopen(self) -> int:
        """Reopen every file; the number that failed (and keep their old files)."""
        return sum(0 if output.reopen() else 1 for output in self.outputs)

    def close(self) -> None:
        for output in self.outputs:
            output.close()


class OutputsHandler(logging.Handler):
    """Diagnostics (``logging`` records) to every target, each with its own severity."""

    def __init__(self, outputs: LogOutputs) -> None:
        super().__init__()
        self.outputs = outputs
        self.setFormatter(logging.Formatter(DIAGNOSTIC_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            for output in self.outputs.outputs:
                output.diagnostic(record, text)
        except Exception:
            self.handleError(record)
