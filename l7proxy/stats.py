"""The stats listener: one small h11 server that renders the pools' current state."""

from __future__ import annotations

import logging
import socket
from typing import Any

import h11
import trio

from config.model import StatsSettings

from . import statspage
from .runtime import Runtime
from .server import Handler
from .stream import SockStream

log = logging.getLogger("lbproxy.stats")
STATS_TIMEOUT = 10.0  # a stats client gets this long per request, then is closed


def make_handler(runtime: Runtime, settings: StatsSettings | None) -> Handler:
    base = settings.path if settings is not None else "/"

    async def handle(sock: socket.socket, peer: Any) -> None:
        stream = SockStream(sock)
        conn = h11.Connection(h11.SERVER)
        try:
            with trio.move_on_after(STATS_TIMEOUT):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some())
                        continue
                    if not isinstance(event, h11.Request):
                        return
                    status, ctype, body = _page(runtime, base, event.target)
                    headers = [
                        (b"content-type", ctype),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-cache"),
                    ]
                    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                    if event.method != b"HEAD":
                        data += conn.send(h11.Data(data=body)) or b""
                    data += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(data)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.close()

    return handle


def _page(runtime: Runtime, base: str, target: bytes) -> tuple[int, bytes, bytes]:
    path, _, query = target.decode("latin-1").partition("?")
    if path.rstrip("/") != base.rstrip("/"):
        return 404, b"text/plain", b"not found\n"
    rows: list[dict[str, object]] = []
    for pool in runtime.pools.values():
        rows.extend(pool.statistics())
    if query in ("csv", ";csv"):
        return 200, b"text/csv", statspage.render_csv(rows)
    if query == "json":
        return 200, b"application/json", statspage.render_json(rows)
    page = statspage.render_html(rows, now=trio.current_time())
    return 200, b"text/html; charset=utf-8", page


def csv_text(runtime: Runtime) -> bytes:
    """The stats CSV of every pool, as ``show stat`` on the admin socket answers it."""
    rows: list[dict[str, object]] = []
    for pool in runtime.pools.values():
        rows.extend(pool.statistics())
    return statspage.render_csv(rows)
