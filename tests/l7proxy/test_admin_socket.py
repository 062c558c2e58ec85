"""The admin socket in process: real unix and TCP sockets, real backends (l7proxy/admin_socket.py).

``show sess`` and ``shutdown sessions server`` against a request held by its real server; the
socket file's life (stale, foreign, in use); a bug-free close of a client that sends too much.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket

import pytest
import trio

from config.model import AdminSocketSettings
from l7proxy import admin, admin_socket
from tests.helpers import Backend, Reply, Seen, server, simple_config, start_proxy

LIMIT = 10.0


async def ask(path: pathlib.Path, line: str) -> str:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(line.encode() + b"\n")
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received.decode()


async def test_show_sess_and_shutdown_sessions_of_a_held_request(tmp_path: pathlib.Path) -> None:
    release = trio.Event()

    async def held(seen: Seen) -> Reply:
        await release.wait()
        return 200, [], b"late"

    web1, web2 = Backend("web1", held), Backend("web2")
    path = tmp_path / "admin.sock"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(web1.serve)
            await nursery.start(web2.serve)
            config = simple_config([server("web1", web1), server("web2", web2)])
            settings = dataclasses.replace(
                config.global_, admin_socket=AdminSocketSettings(str(path))
            )
            handle = await start_proxy(nursery, dataclasses.replace(config, global_=settings))
            assert os.stat(path).st_mode & 0o777 == 0o600
            assert await ask(path, "disable server www/web2") == "\n"
            port = handle.address("www")[1]
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await web1.wait_until(lambda: bool(web1.seen))
            sess = await ask(path, "show sess")
            assert " fe=www be=www srv=web1 " in sess
            assert sess.count("\n") == 2  # one session, then the empty line
            assert await ask(path, "shutdown sessions server www/web1") == "\n"
            assert await client.receive_some(65536) == b""  # closed, nothing answered
            assert await ask(path, "show sess") == "\n"
            release.set()
            await client.aclose()
            handle.stop()
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def send_lines_without_end(stream: trio.SocketStream) -> None:
    """Send line-long chunks with no newline until the proxy's close breaks the stream.

    Bounded in count; the short sleep lets the proxy read and close between chunks, since
    a send into a socket buffer that still has room succeeds whether or not the peer closed.
    """
    for _ in range(10):
        await stream.send_all(b"x" * admin.MAX_LINE)
        await trio.sleep(0.01)


async def test_a_line_too_long_closes_the_client(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "admin.sock"
    web1 = Backend("web1")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(web1.serve)
            config = simple_config([server("web1", web1)])
            settings = dataclasses.replace(
                config.global_, admin_socket=AdminSocketSettings(str(path), 0o660)
            )
            handle = await start_proxy(nursery, dataclasses.replace(config, global_=settings))
            assert os.stat(path).st_mode & 0o777 == 0o660
            stream = await trio.open_unix_socket(str(path))
            with pytest.raises(trio.BrokenResourceError):
                await send_lines_without_end(stream)
            await stream.aclose()
            assert (await ask(path, "show health")).startswith("ok: 1 bind(s) open")
            handle.stop()
            nursery.cancel_scope.cancel()


def test_a_stale_socket_file_is_replaced(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed proxy leaves
    sock = admin_socket.open_admin_socket(AdminSocketSettings(str(path)))
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        sock.close()


def test_a_live_socket_or_a_plain_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "admin.sock"
    live = admin_socket.open_admin_socket(AdminSocketSettings(str(path)))
    try:
        with pytest.raises(admin_socket.AdminSocketError, match="another process is listening"):
            admin_socket.open_admin_socket(AdminSocketSettings(str(path)))
    finally:
        live.close()
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    with pytest.raises(admin_socket.AdminSocketError, match="exists and is not a socket"):
        admin_socket.open_admin_socket(AdminSocketSettings(str(plain)))
    assert plain.read_text() == "keep me"
    with pytest.raises(admin_socket.AdminSocketError, match="No such file or directory"):
        admin_socket.open_admin_socket(AdminSocketSettings(str(tmp_path / "no" / "a.sock")))
