"""Log targets with real sockets and files: syslog over UDP and a unix socket, a file reopened
after rotation; a syslog server that is gone or full costs log lines, never requests."""

from __future__ import annotations

import datetime
import logging
import os
import pathlib
import re
import socket
from dataclasses import replace

import pytest
import trio

from config.model import Address, LogKind, LogTarget, SyslogFormat
from l7proxy.log_targets import (
    FileOutput,
    LogOutputError,
    LogOutputs,
    OutputsHandler,
    open_output,
)
from tests.helpers import Backend, request, server, simple_config, start_proxy

RFC3164_RE = re.compile(
    rb"<(?P<pri>\d+)>(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    rb"lbproxy\[(?P<pid>\d+)\]: (?P<msg>.*)"
)
RFC5424_RE = re.compile(
    rb"<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) lbproxy (?P<pid>\d+) - - (?P<msg>.*)"
)
REQUESTS = 20  # per phase; every one must get its 200


def udp_receiver() -> tuple[trio.socket.SocketType, int]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock, 0


async def bound_udp() -> tuple[trio.socket.SocketType, int]:
    sock, _ = udp_receiver()
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def logged_config(backend: Backend, *targets: LogTarget):  # type: ignore[no-untyped-def]
    config = simple_config([server("a", backend)])
    settings = replace(config.global_, access_log=True, log=targets)
    return replace(config, global_=settings)


async def receive(sock: trio.socket.SocketType, count: int) -> list[bytes]:
    datagrams: list[bytes] = []
    with trio.fail_after(10):
        while len(datagrams) < count:
            datagrams.append(await sock.recv(65536))
    return datagrams


@pytest.mark.parametrize("fmt", list(SyslogFormat))
async def test_access_lines_reach_a_udp_syslog_listener(fmt: SyslogFormat) -> None:
    receiver, port = await bound_udp()
    backend = Backend("a")
    target = LogTarget(
        LogKind.UDP, address=Address("127.0.0.1", port), format=fmt, facility="local3"
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            handle = await start_proxy(nursery, logged_config(backend, target))
            proxy_port = handle.address("www")[1]
            for index in range(3):
                assert (await request(proxy_port, path=f"/p{index}")).status == 200
            handle.sink.flush()
            datagrams = await receive(receiver, 3)
            nursery.cancel_scope.cancel()
    pattern = RFC5424_RE if fmt is SyslogFormat.RFC5424 else RFC3164_RE
    for index, datagram in enumerate(datagrams):
        match = pattern.fullmatch(datagram)
        assert match is not None, datagram
        assert int(match["pri"]) == 19 * 8 + 6  # local3.info
        assert match["host"].decode() == socket.gethostname()
        assert int(match["pid"]) == os.getpid()
        if fmt is SyslogFormat.RFC5424:
            stamp = datetime.datetime.fromisoformat(match["ts"].decode().replace("Z", "+00:00"))
            assert stamp.tzinfo is not None
        else:
            datetime.datetime.strptime(match["ts"].decode(), "%b %d %H:%M:%S")
        message = match["msg"].decode()
        assert " www www/a " in message
        assert f'"GET /p{index} HTTP/1.1"' in message
        assert " 200 " in message
    receiver.close()


async def test_a_closed_syslog_listener_drops_lines_not_requests() -> None:
    receiver, port = await bound_udp()
    backend = Backend("a")
    target = LogTarget(LogKind.UDP, address=Address("127.0.0.1", port))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            handle = await start_proxy(nursery, logged_config(backend, target))
            proxy_port = handle.address("www")[1]
            assert (await request(proxy_port)).status == 200
            handle.sink.flush()
            assert len(await receive(receiver, 1)) == 1
            assert handle.sink.dropped == 0
            receiver.close()  # the syslog server goes away mid-run
            statuses = []
            for _ in range(REQUESTS):
                statuses.append((await request(proxy_port)).status)
                handle.sink.flush()  # one send per request: each may meet the refusal
            nursery.cancel_scope.cancel()
    assert statuses == [200] * REQUESTS
    assert len(backend.seen) == REQUESTS + 1
    assert handle.sink.dropped > 0


async def test_a_full_unix_syslog_socket_drops_lines_not_requests(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)  # never read: its queue fills, sends would block
    backend = Backend("a")
    target = LogTarget(LogKind.UNIX, path=path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            handle = await start_proxy(nursery, logged_config(backend, target))
            proxy_port = handle.address("www")[1]
            statuses = [(await request(proxy_port)).status for _ in range(REQUESTS)]
            nursery.cancel_scope.cancel()
    assert statuses == [200] * REQUESTS
    received = []
    receiver.setblocking(False)
    while True:
        try:
            received.append(receiver.recv(65536))
        except BlockingIOError:
            break
    receiver.close()
    # Nothing read while the proxy ran: the queue took what it could, the rest was dropped.
    assert received
    assert len(received) + handle.sink.dropped == REQUESTS
    assert handle.sink.dropped > 0
    # On the local socket RFC 3164 leaves the host out, as glibc's syslog() does.
    assert re.fullmatch(
        rb"<134>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d lbproxy\[\d+\]: .*", received[0]
    )


async def test_a_missing_unix_socket_counts_drops() -> None:
    output = open_output(LogTarget(LogKind.UNIX, path="/nonexistent/log.sock"), "h", 1)
    output.access_lines(["a", "b"], datetime.datetime.now(datetime.UTC))
    assert output.dropped == 2
    output.close()


def test_diagnostics_keep_their_severity() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    target = LogTarget(
        LogKind.UDP,
        address=Address("127.0.0.1", receiver.getsockname()[1]),
        format=SyslogFormat.RFC5424,
        facility="daemon",
        access=False,
    )
    outputs = LogOutputs.open([target])
    logger = logging.getLogger("lbproxy.test-targets")
    handler = OutputsHandler(outputs)
    logger.addHandler(handler)
    try:
        logger.warning("server %s is DOWN", "www/a")
        logger.error("boom")
        first, second = receiver.recv(4096), receiver.recv(4096)
    finally:
        logger.removeHandler(handler)
        outputs.close()
        receiver.close()
    assert first.startswith(b"<28>1 ")  # daemon.warning
    assert first.endswith(b" lbproxy.test-targets: server www/a is DOWN")
    assert second.startswith(b"<27>1 ")  # daemon.err
    outputs.access_lines(["not sent: access is off"])  # no access outputs, nothing happens


def test_a_file_is_reopened_after_rotation(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "access.log"
    output = FileOutput(LogTarget(LogKind.FILE, path=str(path)))
    now = datetime.datetime.now(datetime.UTC)
    output.access_lines(["one", "two"], now)
    path.rename(tmp_path / "access.log.1")
    output.access_lines(["three"], now)  # still the old file, as logrotate expects
    output.reopen()
    output.access_lines(["four"], now)
    output.close()
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\nthree\n"
    assert path.read_text() == "four\n"
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_failed_reopen_keeps_the_old_file_and_says_so_once(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "access.log"
    output = FileOutput(LogTarget(LogKind.FILE, path=str(path)))
    kept = tmp_path / "kept.log"
    path.rename(kept)
    folder.rmdir()  # the reopen cannot create the file again
    now = datetime.datetime.now(datetime.UTC)
    with caplog.at_level(logging.ERROR, logger="lbproxy.log"):
        output.reopen()
        output.reopen()
    output.access_lines(["still here"], now)
    assert kept.read_text() == "still here\n"
    assert [r.getMessage() for r in caplog.records].count(
        f"log file {path}: cannot reopen (No such file or directory); still writing to the old file"
    ) == 1
    folder.mkdir()
    output.reopen()
    output.access_lines(["new"], now)
    output.close()
    assert path.read_text() == "new\n"


def test_a_target_that_cannot_open_is_named(tmp_path: pathlib.Path) -> None:
    bad = LogTarget(LogKind.FILE, path=str(tmp_path / "missing" / "x.log"))
    with pytest.raises(LogOutputError, match=r"log target .*missing/x.log: No such file"):
        LogOutputs.open([LogTarget(LogKind.STDOUT), bad])


async def test_stdout_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    backend = Backend("a")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            config = simple_config([server("a", backend)])
            config = replace(config, global_=replace(config.global_, access_log=True))
            handle = await start_proxy(nursery, config)
            assert (await request(handle.address("www")[1], path="/std")).status == 200
            nursery.cancel_scope.cancel()
    assert '"GET /std HTTP/1.1"' in capsys.readouterr().out
