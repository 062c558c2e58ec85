"""No client input may produce a 500 or a traceback: generated and mutated request heads and
bodies thrown at a running proxy (hypothesis).

The proxy and a real server run in a trio loop on their own thread; each example is one client
connection that sends its bytes, half-closes, and reads until the proxy closes. Every answer must
be a well-formed HTTP/1.1 response other than 500: lbproxy's own 4xx/5xx or the server's.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.model import Timeouts
from l7proxy import app
from tests.helpers import Backend, server, simple_config

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/x HTTP/1.1\r\nHost: a\r\nCookie: SERVERID=web1; x=y\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]
# Bytes that matter to HTTP framing: what a smuggling attempt is made of.
SPECIAL = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b'"',
    b"\\",
    b"#",
    b"0",
    b"9",
    b"f",
    b"-",
    b"+",
    b"\x7f",
    b"\xff",
    b"chunked",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: b\r\n",
    b"HTTP/1.1",
    b"\r\n\r\n",
    b"%",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat", "upper"]))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "repeat":
            end = min(len(data), at + draw(st.integers(1, 40)))
            data[at:at] = data[at:end]
        elif op == "upper":
            data[at : at + 12] = bytes(data[at : at + 12]).swapcase()
    return bytes(data)


REQUESTS = st.one_of(mutated(), st.binary(max_size=300))
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")


class Errors(logging.Handler):
    """Every record at ERROR or with a traceback, from lbproxy's loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[int, Errors]]:
    errors = Errors()
    logger = logging.getLogger("lbproxy")
    logger.addHandler(errors)
    started = threading.Event()
    port: list[int] = []
    stop: list[tuple[trio.CancelScope, trio.lowlevel.TrioToken]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            stop.append((nursery.cancel_scope, trio.lowlevel.current_trio_token()))
            web = Backend("web1")
            await nursery.start(web.serve)
            config = simple_config(
                [server("web1", web)], timeouts=Timeouts(header=2.0, server=2.0, client_idle=2.0)
            )
            handle: app.ProxyHandle = await nursery.start(app.serve, config)
            port.append(handle.address("www")[1])
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port[0], errors
    finally:
        scope, token = stop[0]
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)
        logger.removeHandler(errors)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may close before all of it was taken
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass  # a reset: the proxy cut a response short, which is a valid ending
        return received


@settings(
    max_examples=int(os.environ.get("LBPROXY_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=REQUESTS)
def test_no_input_gets_a_500_or_a_traceback(proxy: tuple[int, Errors], data: bytes) -> None:
    port, errors = proxy
    received = exchange(port, data)
    position = 0
    while position < len(received):
        match = STATUS_LINE.match(received, position)
        assert match is not None, received[position : position + 200]
        assert match.group(1) != b"500", received
        end = received.find(b"\r\n\r\n", position)
        assert end > 0, received[position:]
        head = received[position:end].lower()
        length = re.search(rb"\r\ncontent-length: *([0-9]+)", head)
        if b"\r\ntransfer-encoding: chunked" in head or match.group(1) in (b"101",):
            break  # the rest is a chunked body or a tunnel: the head was well formed
        body = int(length.group(1)) if length else 0
        rest = received[end + 4 :]
        if data.startswith(b"HEAD") and (not rest or rest.startswith(b"HTTP/1.1 ")):
            body = 0  # the answer to a HEAD request that was understood as one
        position = end + 4 + body
        if match.group(1).startswith(b"1"):
            continue
    assert not errors.records, [record.getMessage() for record in errors.records]
