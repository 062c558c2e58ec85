"""The PROXY protocol through the running proxy: received on a bind from listed sources only
(plain and TLS), sent to real servers that read it; real sockets on loopback, clients bound to
distinct loopback sources (127.0.0.2, 127.0.0.3) so each address is told apart."""

from __future__ import annotations

import logging
import pathlib
import socket
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

import h11
import pytest
import trio
import trustme

from balancing.checker import check_once
from balancing.state import ServerState
from config.model import (
    Address,
    Balance,
    Bind,
    CertificateSpec,
    GlobalSettings,
    HealthCheck,
    HttpCheck,
    Network,
    Pool,
    ProxyConfig,
    ProxyVersion,
    RealServer,
    Timeouts,
    TlsSettings,
    VirtualService,
)
from config.scalars import parse_network
from l7proxy.proxy_protocol import ProxyHeader, encode, parse
from tests.helpers import Backend, serve_raw, start_proxy

V1, V2 = ProxyVersion.V1, ProxyVersion.V2
GET = b"GET /who HTTP/1.1\r\nHost: www\r\n\r\n"


def config(
    servers: tuple[RealServer, ...],
    accept_proxy: tuple[Network, ...] = (),
    tls: TlsSettings | None = None,
    header_timeout: float = 10.0,
) -> ProxyConfig:
    vs = VirtualService(
        label="www",
        binds=(Bind(Address("127.0.0.1", 0), tls, accept_proxy),),
        pool=Pool("www", servers, health_check=HealthCheck(enabled=False)),
        timeouts=Timeouts(header=header_timeout),
    )
    return ProxyConfig((vs,), global_=GlobalSettings(grace=1.0, access_log=False))


def networks(*texts: str) -> tuple[Network, ...]:
    return tuple(parse_network(text) for text in texts)


async def web_behind_proxy(
    nursery: trio.Nursery, accept: str, state_dir: pathlib.Path | None = None, **kwargs: Any
) -> tuple[Backend, int]:
    """A real server, and a proxy whose one bind trusts PROXY headers from ``accept``."""
    web = Backend("web1")
    await nursery.start(web.serve)
    cfg = config((RealServer("web1", web.address),), networks(accept), **kwargs)
    if state_dir is not None:
        cfg = replace(cfg, global_=replace(cfg.global_, state_dir=str(state_dir)))
    proxy = await start_proxy(nursery, cfg)
    return web, proxy.address("www")[1]


def exchange(
    port: int,
    data: bytes,
    source: str = "127.0.0.2",
    *,
    tls: ssl.SSLContext | None = None,
    after: bytes = b"",
) -> bytes:
    """Connect from ``source``, send ``data`` (then TLS and ``after`` when given), and read
    until the proxy closes or a response arrived (run in a thread)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    with sock:
        sock.sendall(data)
        stream: socket.socket = sock
        if tls is not None:
            stream = tls.wrap_socket(sock, server_hostname="localhost")
            stream.sendall(after)
        received = b""
        while b"\r\n\r\n" not in received:
            try:
                chunk = stream.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += chunk
        return received


async def run_exchange(
    port: int, data: bytes, source: str = "127.0.0.2", **kwargs: object
) -> bytes:
    return await trio.to_thread.run_sync(lambda: exchange(port, data, source, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [V1, V2])
async def test_listed_source_is_known_by_the_header_address(version: ProxyVersion) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web, port = await web_behind_proxy(nursery, "127.0.0.2")
            header = encode(version, ("192.0.2.7", 51000), ("198.51.100.1", 443))
            # The header and the request in one write: the request is still there after it.
            answer = await run_exchange(port, header + GET)
            assert answer.startswith(b"HTTP/1.1 200")
            assert web.seen[-1].header(b"x-forwarded-for") == b"192.0.2.7"
            # Another source on the same bind owes no header and is served as it is.
            answer = await run_exchange(port, GET, "127.0.0.3")
            assert answer.startswith(b"HTTP/1.1 200")
            assert web.seen[-1].header(b"x-forwarded-for") == b"127.0.0.3"
            nursery.cancel_scope.cancel()


async def test_a_header_in_pieces_and_local_headers() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web, port = await web_behind_proxy(nursery, "127.0.0.0/8")
            header = encode(V1, ("2001:db8::7", 1), ("2001:db8::1", 80))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for piece in (header[:3], header[3:20], header[20:], GET):
                    await stream.send_all(piece)
                    await trio.sleep(0.05)  # separate segments; correctness does not depend on it
                answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            assert web.seen[-1].header(b"x-forwarded-for") == b"2001:db8::7"
            # LOCAL (v2) and UNKNOWN (v1): the connection's own address stands.
            for local in (encode(V2, None, None), encode(V1, None, None)):
                answer = await run_exchange(port, local + GET)
                assert answer.startswith(b"HTTP/1.1 200")
                assert web.seen[-1].header(b"x-forwarded-for") == b"127.0.0.2"
            nursery.cancel_scope.cancel()


async def test_source_balancing_hashes_the_header_address() -> None:
    """Every client comes from 127.0.0.2; only the header tells them apart, and it is the
    address `balance: source` hashes: each keeps its server, and they spread over both."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            webs = [Backend("web1"), Backend("web2")]
            for web in webs:
                await nursery.start(web.serve)
            servers = tuple(RealServer(web.label, web.address) for web in webs)
            cfg = config(servers, networks("127.0.0.2"))
            vs = cfg.virtual_servers[0]
            pool = replace(vs.pool, balance=Balance.SOURCE)
            cfg = replace(cfg, virtual_servers=(replace(vs, pool=pool),))
            port = (await start_proxy(nursery, cfg)).address("www")[1]
            chosen: dict[str, set[bytes]] = {}
            for i in range(16):
                source = f"10.{i}.0.1"
                for _ in range(2):
                    header = encode(V2, (source, 1000), ("10.0.0.1", 80))
                    answer = await run_exchange(port, header + GET)
                    chosen.setdefault(source, set()).add(answer.split(b"x-served-by: ")[1][:4])
            assert all(len(labels) == 1 for labels in chosen.values()), chosen
            assert set().union(*chosen.values()) == {b"web1", b"web2"}
            nursery.cancel_scope.cancel()


BAD = [
    (GET, "not a PROXY protocol header"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 443\r\n" + GET, "port"),
    (b"PROXY TCP4 192.0.2.7\n" + GET, "printable ASCII"),
    (
        encode(V2, ("192.0.2.7", 1), ("10.0.0.1", 2))[:13] + b"\x41" + b"\x00\x0c" + GET,
        "unknown family",
    ),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2", "connection closed before"),
]


@pytest.mark.parametrize(("data", "reason"), BAD)
async def test_listed_source_without_a_valid_header_is_closed_and_logged(
    data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "lbproxy")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web, port = await web_behind_proxy(nursery, "127.0.0.2")

            def send_and_half_close() -> bytes:
                sock = socket.create_connection(
                    ("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)
                )
                with sock:
                    sock.sendall(data)
                    if not data.endswith(b"\r\n\r\n"):
                        sock.shutdown(socket.SHUT_WR)
                    received = b""
                    try:
                        while chunk := sock.recv(65536):
                            received += chunk
                    except ConnectionResetError:
                        pass  # closed with the client's bytes unread: a reset
                    return received

            assert await trio.to_thread.run_sync(send_and_half_close) == b""
            assert web.seen == []
            nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if "PROXY protocol from 127.0.0.2" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert reason in lines[0].getMessage()
    assert f"to www port {port}" in lines[0].getMessage()
    assert lines[0].exc_info is None
    assert "Traceback" not in caplog.text


async def test_no_header_in_time_is_closed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "lbproxy")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, port = await web_behind_proxy(nursery, "127.0.0.2", header_timeout=0.3)
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            async with stream:
                await stream.send_all(b"PROXY TCP4 ")
                assert await stream.receive_some(100) == b""
            nursery.cancel_scope.cancel()
    assert "no PROXY header within 0.3s; connection closed" in caplog.text


async def test_unlisted_source_sending_a_header_gets_400() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web, port = await web_behind_proxy(nursery, "10.0.0.0/8")
            for version in (V1, V2):
                header = encode(version, ("192.0.2.7", 51000), ("10.0.0.1", 443))
                answer = await run_exchange(port, header + GET)
                assert answer.startswith(b"HTTP/1.1 400"), answer
            assert web.seen == []
            nursery.cancel_scope.cancel()


async def test_header_is_read_before_the_tls_handshake(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    cert = ca.issue_cert("localhost")
    path = tmp_path / "localhost.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    tls = TlsSettings(certificates=(CertificateSpec(str(path)),))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            web, port = await web_behind_proxy(nursery, "127.0.0.2", tmp_path / "state", tls=tls)
            for version in (V1, V2):
                header = encode(version, ("2001:db8::9", 4444), ("2001:db8::1", 443))
                answer = await run_exchange(port, header, tls=client, after=GET)
                assert answer.startswith(b"HTTP/1.1 200")
                seen = web.seen[-1]
                assert seen.header(b"x-forwarded-for") == b"2001:db8::9"
                assert seen.header(b"x-forwarded-proto") == b"https"
            nursery.cancel_scope.cancel()


@dataclass
class ProxyReadingServer:
    """A real server that requires the PROXY header, and answers with the address it got."""

    headers: list[ProxyHeader] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    port: int = 0
    closing: trio.Event = field(default_factory=trio.Event)  # set when a connection closes

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        data = b""
        try:
            header = None
            while header is None:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
                header = parse(data)
            self.headers.append(header)
            who = f"{header.version} {header.source} {header.destination}".encode()
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(data[header.length :])
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(chunk)
                    if not chunk:
                        return
                    continue
                if isinstance(event, h11.Request):
                    out = conn.send(
                        h11.Response(status_code=200, headers=[("content-length", str(len(who)))])
                    )
                    out = (out or b"") + (conn.send(h11.Data(data=who)) or b"")
                    await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                else:
                    return
        finally:
            self.closed += 1
            self.closing.set()
            await stream.aclose()


async def proxy_reader_behind_proxy(
    nursery: trio.Nursery, version: ProxyVersion
) -> tuple[ProxyReadingServer, int]:
    """A real server that reads PROXY headers, behind a proxy that sends ``version``."""
    real = ProxyReadingServer()
    real.port = await nursery.start(serve_raw, real.handle)
    server = RealServer("web1", Address("127.0.0.1", real.port), send_proxy=version)
    proxy = await start_proxy(nursery, config((server,)))
    return real, proxy.address("www")[1]


@pytest.mark.parametrize("version", [V1, V2])
async def test_send_proxy_tells_the_server_the_client_address(version: ProxyVersion) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            real, port = await proxy_reader_behind_proxy(nursery, version)
            number = 2 if version is V2 else 1

            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            client_port = stream.socket.getsockname()[1]
            async with stream:
                for _ in range(3):  # keep-alive: one server connection, one header
                    await stream.send_all(GET)
                    answer = await stream.receive_some(65536)
                    expected = f"{number} ('127.0.0.2', {client_port}) ('127.0.0.1', {port})"
                    assert answer.endswith(expected.encode()), answer
            assert real.connections == 1
            # The client left: the connection kept for it is closed, not pooled for another.
            with trio.fail_after(5):
                await real.closing.wait()
            answer = await run_exchange(port, GET, "127.0.0.3")
            assert b"('127.0.0.3'," in answer
            assert real.connections == 2
            assert [h.source[0] for h in real.headers if h.source] == ["127.0.0.2", "127.0.0.3"]
            nursery.cancel_scope.cancel()


async def test_two_clients_never_share_a_server_connection() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            real, port = await proxy_reader_behind_proxy(nursery, V1)
            a = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            b = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3")
            async with a, b:
                for stream, source in ((a, b"127.0.0.2"), (b, b"127.0.0.3"), (a, b"127.0.0.2")):
                    await stream.send_all(GET)
                    assert source in await stream.receive_some(65536)
            assert real.connections == 2
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("version", "expected"), [(V1, ProxyHeader(1, 15)), (V2, ProxyHeader(2, 16))]
)
async def test_health_checks_send_a_local_header(
    version: ProxyVersion, expected: ProxyHeader
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            real = ProxyReadingServer()
            real.port = await nursery.start(serve_raw, real.handle)
            server = RealServer("web1", Address("127.0.0.1", real.port), send_proxy=version)
            check = HealthCheck(http=HttpCheck(path="/health"))
            result = await check_once(ServerState(server, "www", check), check)
            assert result.ok, result
            assert real.headers == [expected]
            nursery.cancel_scope.cancel()
