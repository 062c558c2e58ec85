"""Re-encryption to real servers through real sockets: TLS real servers with trustme
certificates, verification (CA, name), SNI, client certificates, pooled TLS connections."""

from __future__ import annotations

import logging
import pathlib
import ssl
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from balancing.checker import check_once, run_checks
from balancing.state import Health, new_states
from config.model import Address, HealthCheck, HttpCheck, Pool, RealServer, ServerTls, Verify
from l7proxy import admin_state, app, upstream
from l7proxy.response_reader import END, ResponseReader
from l7proxy.upstream import UpstreamConnection, UpstreamPool
from tests.helpers import Backend, Response, request, server, simple_config, start_proxy
from tls.client_context import TlsTarget

# A hang guard, not a speed assertion.
TEST_DEADLINE = 15.0


@dataclass
class TlsBackend(Backend):
    """The h11 test real server behind a TLS handshake: records each handshake, the SNI name
    and the client certificate it saw."""

    context: ssl.SSLContext | None = None
    handshakes: int = 0
    failed_handshakes: int = 0
    server_names: list[str | None] = field(default_factory=list)
    client_certs: list[Any] = field(default_factory=list)

    async def _handle(self, stream: Any) -> None:
        assert self.context is not None
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            self.failed_handshakes += 1
            await trio.aclose_forcefully(stream)
            return
        self.handshakes += 1
        self.client_certs.append(tls.getpeercert())
        await super()._handle(tls)


def tls_backend(
    label: str, ca: trustme.CA, *names: str, client_ca: trustme.CA | None = None
) -> TlsBackend:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    backend = TlsBackend(label, context=context)

    def on_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        backend.server_names.append(name)

    context.sni_callback = on_sni
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return backend


def ca_file(ca: trustme.CA, tmp_path: pathlib.Path) -> str:
    path = tmp_path / "backend-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def fetch(
    backend: Backend, tls: ServerTls, *requests: dict[str, Any], **config: Any
) -> list[Response]:
    """Start ``backend`` behind a proxy that reaches it with ``tls``; send ``requests`` (one
    plain GET by default) one after the other on new client connections."""
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            servers = [server("web1", backend, tls=tls)]
            proxy = await start_proxy(nursery, simple_config(servers, **config))
            port = proxy.address("www")[1]
            responses = [await request(port, **kwargs) for kwargs in requests or ({},)]
            nursery.cancel_scope.cancel()
    return responses


async def test_a_tls_real_server_is_reached_with_verification(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    backend = tls_backend("web1", ca, "127.0.0.1")
    [response] = await fetch(backend, ServerTls(ca=ca_file(ca, tmp_path)), {"path": "/secure"})
    assert response.status == 200
    assert response.body == b"web1 GET /secure 0"
    assert backend.handshakes == 1
    # Verified against the address: an IP address is never sent as SNI (RFC 6066).
    assert backend.server_names == [None]


async def test_sni_is_sent_as_configured(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    backend = tls_backend("web1", ca, "backend.example")
    tls = ServerTls(ca=ca_file(ca, tmp_path), sni="backend.example")
    [response] = await fetch(backend, tls)
    assert response.status == 200
    assert backend.server_names == ["backend.example"]


async def test_sni_from_the_request_host(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    backend = tls_backend("web1", ca, "shop.example", "blog.example")
    tls = ServerTls(ca=ca_file(ca, tmp_path), sni_from_host=True)
    shop, blog = await fetch(
        backend,
        tls,
        {"headers": {"Host": "shop.example:8080"}},
        {"headers": {"Host": "BLOG.example"}},
    )
    assert (shop.status, blog.status) == (200, 200)
    assert backend.server_names == ["shop.example", "blog.example"]


@pytest.mark.parametrize(
    ("names", "sni", "cause"),
    [
        (("127.0.0.1",), None, "unable to get local issuer certificate"),  # another CA
        (("other.example",), "backend.example", "Hostname mismatch"),
    ],
    ids=["wrong-ca", "wrong-name"],
)
async def test_a_certificate_that_fails_verification_is_a_logged_502(
    ca: trustme.CA,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    names: tuple[str, ...],
    sni: str | None,
    cause: str,
) -> None:
    issuer = trustme.CA() if sni is None else ca
    backend = tls_backend("web1", issuer, *names)
    tls = ServerTls(ca=ca_file(ca, tmp_path), sni=sni)
    caplog.set_level(logging.WARNING, logger="lbproxy")
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            config = simple_config([server("web1", backend, tls=tls)], retries=0)
            proxy = await start_proxy(nursery, config)
            response = await request(proxy.address("www")[1])
            nursery.cancel_scope.cancel()
    assert response.status == 502
    assert backend.seen == []  # nothing of the request reached the server
    assert backend.handshakes == 0
    logged = [
        r.getMessage() for r in caplog.records if "certificate verify failed" in r.getMessage()
    ]
    assert logged
    assert cause in logged[0]
    assert logged[0].startswith("www/web1: ")
    counters = proxy.runtime.pools["www"].server("web1")
    assert counters is not None
    assert counters.counters.failures_connect == 1


async def test_a_refused_certificate_moves_on_to_the_next_server(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    bad = tls_backend("bad", trustme.CA(), "127.0.0.1")
    good = tls_backend("good", ca, "127.0.0.1")
    tls = ServerTls(ca=ca_file(ca, tmp_path))
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(bad.serve)
            await nursery.start(good.serve)
            servers = [server("bad", bad, tls=tls), server("good", good, tls=tls)]
            proxy = await start_proxy(nursery, simple_config(servers))
            port = proxy.address("www")[1]
            responses = [await request(port) for _ in range(2)]
            nursery.cancel_scope.cancel()
    assert [r.status for r in responses] == [200, 200]
    assert {r.header("x-served-by") for r in responses} == {"good"}
    assert bad.seen == []


async def test_verify_none_accepts_any_certificate(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    backend = tls_backend("web1", trustme.CA(), "other.example")
    [response] = await fetch(backend, ServerTls(verify=Verify.NONE))
    assert response.status == 200
    assert backend.handshakes == 1


async def test_a_client_certificate_is_presented(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    client_ca = trustme.CA()
    backend = tls_backend("web1", ca, "127.0.0.1", client_ca=client_ca)
    client = tmp_path / "client.pem"
    client_ca.issue_cert("lbproxy.example").private_key_and_cert_chain_pem.write_to_path(
        str(client)
    )
    tls = ServerTls(ca=ca_file(ca, tmp_path), certificate=str(client))
    [response] = await fetch(backend, tls)
    assert response.status == 200
    peer = backend.client_certs[0]
    assert ("DNS", "lbproxy.example") in peer["subjectAltName"]


async def test_tls_connections_are_pooled(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    backend = tls_backend("web1", ca, "127.0.0.1")
    responses = await fetch(
        backend, ServerTls(ca=ca_file(ca, tmp_path)), *({"path": f"/{i}"} for i in range(5))
    )
    assert [r.status for r in responses] == [200] * 5
    assert len(backend.seen) == 5
    assert backend.handshakes == 1  # one TLS connection carried all five requests
    assert {seen.connection for seen in backend.seen} == {1}


async def test_a_plain_http_server_behind_tls_settings_is_a_502(ca: trustme.CA) -> None:
    plain = Backend("web1")
    [response] = await fetch(plain, ServerTls(verify=Verify.NONE), retries=0)
    assert response.status == 502
    assert plain.seen == []


@pytest.mark.parametrize("http", [None, HttpCheck(path="/health")], ids=["tcp", "http"])
async def test_health_checks_go_over_tls(
    ca: trustme.CA, tmp_path: pathlib.Path, http: HttpCheck | None
) -> None:
    """A TCP check is the TLS handshake; an HTTP check goes over TLS. A server that speaks only
    plain HTTP fails both and goes DOWN; the TLS one stays UP."""
    secure = tls_backend("secure", ca, "127.0.0.1")
    plain = Backend("plain")
    tls = ServerTls(ca=ca_file(ca, tmp_path))
    check = HealthCheck(interval=1.0, timeout=1.0, rise=1, fall=1, http=http)
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(secure.serve)
            await nursery.start(plain.serve)
            pool = Pool(
                "www",
                (server("secure", secure, tls=tls), server("plain", plain, tls=tls)),
                health_check=check,
            )
            states = new_states([pool])
            upstream = UpstreamPool()
            await nursery.start(
                partial(run_checks, states, log=logging.getLogger("test"), tls=upstream.tls_target)
            )
            state = states["www"]
            up, down = state.server("secure"), state.server("plain")
            assert up is not None
            assert down is not None
            # Health states are inside the checker: nothing announces them (bounded by fail_after).
            while down.health is not Health.DOWN or not up.counters.check_status:  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert up.health is Health.UP
    assert up.counters.check_status == ("L6OK" if http is None else "L7OK")
    assert down.counters.check_status == "L6RSP"
    assert "TLS handshake failed" in down.counters.check_desc
    assert plain.seen == []
    if http is not None:
        assert secure.seen[0].target == b"/health"


async def test_a_missing_ca_file_stops_start_up(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing-ca.pem")
    backend = Backend("web1")
    config = simple_config([server("web1", backend, tls=ServerTls(ca=missing))])
    errors: list[str] = []
    with trio.fail_after(TEST_DEADLINE):
        try:
            async with trio.open_nursery() as nursery:
                await start_proxy(nursery, config)
        except* app.StartupError as group:
            errors = [str(error) for error in group.exceptions]
    assert errors == [
        f"pool www, server web1: tls ca: {missing}: cannot read: No such file or directory"
    ]


async def test_sni_host_checks_send_the_http_check_host(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    backend = tls_backend("web1", ca, "shop.example")
    tls = ServerTls(ca=ca_file(ca, tmp_path), sni_from_host=True)
    check = HealthCheck(http=HttpCheck(path="/health", host="shop.example"))
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            pool = Pool("www", (server("web1", backend, tls=tls),), health_check=check)
            state = new_states([pool])["www"].server("web1")
            assert state is not None
            result = await check_once(state, check, UpstreamPool().tls_target)
            nursery.cancel_scope.cancel()
    assert (result.ok, result.status) == (True, "L7OK")
    assert backend.server_names == ["shop.example"]


async def test_a_client_host_that_fails_verification_does_not_take_the_server_down(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    """With ``sni: host`` the client chooses the name verified: its bad Host gets a 502, and
    the server stays in rotation for everyone else."""
    backend = tls_backend("web1", ca, "shop.example")
    tls = ServerTls(ca=ca_file(ca, tmp_path), sni_from_host=True)
    check = HealthCheck(interval=60.0, fall=1, http=HttpCheck(host="shop.example"))
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            config = simple_config([server("web1", backend, tls=tls)], retries=0)
            vs = config.virtual_servers[0]
            pool = replace(vs.pool, health_check=check)
            config = replace(config, virtual_servers=(replace(vs, pool=pool),))
            proxy = await start_proxy(nursery, config)
            port = proxy.address("www")[1]
            evil = await request(port, headers={"Host": "evil.example"})
            shop = await request(port, headers={"Host": "shop.example"})
            nursery.cancel_scope.cancel()
    assert (evil.status, shop.status) == (502, 200)
    state = proxy.runtime.pools["www"].server("web1")
    assert state is not None
    assert state.health is Health.UP
    assert state.counters.failures_connect == 1


async def test_a_reload_reads_the_files_again_and_a_bad_one_changes_nothing(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    backend = tls_backend("web1", ca, "127.0.0.1")
    missing = str(tmp_path / "gone.pem")
    with trio.fail_after(TEST_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            tls = ServerTls(ca=ca_file(ca, tmp_path))
            config = simple_config([server("web1", backend, tls=tls)])
            broken = simple_config([server("web1", backend, tls=ServerTls(ca=missing))])
            proxy = await start_proxy(nursery, config)
            port = proxy.address("www")[1]
            first = await request(port)
            proxy.reload(config)  # new contexts: the idle connection of the old one is closed
            second = await request(port)
            with pytest.raises(app.StartupError, match=r"gone\.pem: cannot read"):
                proxy.reload(broken)
            third = await request(port)  # the running configuration and its pooled connection
            nursery.cancel_scope.cancel()
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    assert backend.handshakes == 2


class _Stream:
    """An idle server connection's stream: only what the pool's bookkeeping asks of it."""

    closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_idle_and_open(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def finished(address: Address, tls: TlsTarget) -> UpstreamConnection:
    """A connection whose exchange ended cleanly on both sides, ready to be released."""
    conn = UpstreamConnection(address, _Stream(), tls=tls)
    conn.reader = ResponseReader(b"GET")
    conn.request_done = True
    conn.reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    while conn.reader.next_event() is not END:
        pass
    return conn


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_names_chosen_by_clients_cannot_grow_the_pool_without_bound(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``sni: host`` every Host is its own pool key: past MAX_IDLE_KEYS a connection is not
    kept, until the idle ones have timed out and are swept."""
    monkeypatch.setattr(upstream, "MAX_IDLE_KEYS", 2)
    pool = UpstreamPool()
    context = ssl.create_default_context()
    address = Address("127.0.0.1", 8443)
    conns = [finished(address, TlsTarget(context, f"h{i}.example")) for i in range(4)]
    pool.set_tls_contexts({ServerTls(): context})
    for conn in conns[:3]:
        pool.release(conn)
    assert [c.stream.is_idle_and_open() for c in conns[:3]] == [True, True, False]
    await trio.sleep(upstream.IDLE_TIMEOUT)
    pool.release(conns[3])
    assert [c.stream.is_idle_and_open() for c in conns] == [False, False, False, True]
    assert pool.take_idle(address, TlsTarget(context, "h3.example")) is conns[3]


def test_the_server_state_shows_which_servers_use_tls() -> None:
    """HAProxy's ``show servers state`` column srv_use_ssl."""
    pool = Pool(
        "www",
        (
            RealServer("secure", Address("127.0.0.1", 8443), tls=ServerTls()),
            RealServer("plain", Address("127.0.0.1", 8080)),
        ),
    )
    lines = admin_state.render(new_states([pool]), now=0.0, uptime=0).splitlines()
    column = admin_state.COLUMNS.split().index("srv_use_ssl")
    assert [line.split()[column] for line in lines[2:]] == ["1", "0"]
