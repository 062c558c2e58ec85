"""``lbproxy demo``: two built-in real servers behind one virtual server, HTTP and HTTPS.

Nothing to configure: the real servers answer with their label (so balancing and persistence
are visible in a browser), the HTTPS bind uses a self-signed certificate made on first start,
and the stats page shows the pool.
"""

from __future__ import annotations

import html
import socket
import sys
from typing import Any

import h11
import trio

from config.model import (
    Address,
    Bind,
    CookiePersistence,
    GlobalSettings,
    Pool,
    ProxyConfig,
    RealServer,
    StatsSettings,
    TlsSettings,
    VirtualService,
)

from . import app
from .server import accept_loop, open_listening_socket
from .stream import SockStream

DEMO_STATE_DIR = "./lbproxy-state"


def demo_config(
    http_port: int, https_port: int, stats_port: int, backends: list[int]
) -> ProxyConfig:
    servers = tuple(
        RealServer(label=f"web{i + 1}", address=Address("127.0.0.1", port))
        for i, port in enumerate(backends)
    )
    vs = VirtualService(
        label="demo",
        binds=(
            Bind(Address("127.0.0.1", http_port)),
            Bind(Address("127.0.0.1", https_port), TlsSettings()),
        ),
        pool=Pool(name="demo", real_servers=servers, persistence=CookiePersistence("SERVERID")),
    )
    return ProxyConfig(
        virtual_servers=(vs,),
        global_=GlobalSettings(
            state_dir=DEMO_STATE_DIR, stats=StatsSettings(Address("127.0.0.1", stats_port))
        ),
    )


def _page(label: str, request: h11.Request) -> bytes:
    rows = "".join(
        f"<tr><td>{html.escape(n.decode('latin-1'))}</td><td>{html.escape(v.decode('latin-1'))}</td></tr>"
        for n, v in request.headers
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{label}</title></head><body>"
        f"<h1>Served by real server <code>{html.escape(label)}</code></h1>"
        "<p>Reload: the SERVERID cookie keeps you on this server. Delete the cookie to be "
        "balanced again.</p><h2>Request headers as the real server saw them</h2>"
        f"<table border=1>{rows}</table></body></html>\n"
    ).encode()


def backend_handler(label: str) -> Any:
    """A tiny real server that answers every request with a page naming ``label``."""

    async def handle(sock: socket.socket, peer: Any) -> None:
        stream = SockStream(sock)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some())
                    continue
                if isinstance(event, h11.Request):
                    body = _page(label, event)
                    headers = [
                        (b"content-type", b"text/html; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-served-by", label.encode()),
                    ]
                    data = (
                        conn.send(h11.Response(status_code=200, reason=b"OK", headers=headers))
                        or b""
                    )
                    if event.method != b"HEAD":
                        data += conn.send(h11.Data(data=body)) or b""
                    await stream.send_all(data)
                    continue
                if isinstance(event, h11.EndOfMessage):
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.close()

    return handle


def run_demo(http_port: int, https_port: int, stats_port: int) -> int:
    sockets = [open_listening_socket(Address("127.0.0.1", 0)) for _ in range(2)]
    ports = [s.getsockname()[1] for s in sockets]
    config = demo_config(http_port, https_port, stats_port, ports)

    def started(handle: app.ProxyHandle) -> None:
        print(
            "lbproxy demo is running:\n"
            f"  http://127.0.0.1:{http_port}/    (two real servers, cookie persistence)\n"
            f"  https://127.0.0.1:{https_port}/   (self-signed certificate in {DEMO_STATE_DIR})\n"
            f"  http://127.0.0.1:{stats_port}/    (stats page)\n"
            "Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )

    async def backends(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for i, sock in enumerate(sockets):
                nursery.start_soon(accept_loop, sock, backend_handler(f"web{i + 1}"), nursery)
            task_status.started()

    try:
        return app.run(config, on_started=started, companions=[backends])
    finally:
        for sock in sockets:
            sock.close()
