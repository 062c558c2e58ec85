"""Server contexts over real loopback handshakes: versions, ALPN, groups, renegotiation."""

from __future__ import annotations

import datetime
import platform
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trustme

from config.model import TlsSettings
from tls.certificate import LoadedCertificate
from tls.context import (
    GROUPS,
    MOZILLA_INTERMEDIATE_CIPHERS,
    _LibSsl,
    _openssl,
    build_context,
    ctypes_refusal,
    private_files,
    restrict_groups,
    temporary_private_files,
)

IO_TIMEOUT = 10.0  # generous: a loopback handshake takes milliseconds even on a loaded CI box
OPENSSL = shutil.which("openssl")
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def loaded(
    ca: trustme.CA,
    *names: str,
    default: bool = False,
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
) -> LoadedCertificate:
    """A trustme leaf as the store would hand it over."""
    now = datetime.datetime.now(datetime.UTC)
    # Mozilla intermediate caps leaf lifetime at 366 days; trustme's default is longer.
    leaf = ca.issue_cert(*names, not_after=now + datetime.timedelta(days=90), key_type=key_type)
    return LoadedCertificate(
        source=f"trustme:{names[0]}",
        chain_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        key_pem=leaf.private_key_pem.bytes(),
        names=tuple(n.lower() for n in names),
        not_before=now - datetime.timedelta(hours=1),
        not_after=now + datetime.timedelta(days=90),
        default=default,
    )


def client_context(ca: trustme.CA, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


@dataclass
class Handshake:
    """What the server side saw of one accepted connection."""

    version: str | None
    cipher: tuple[str, str, int] | None
    alpn: str | None
    peer_der: bytes | None


@dataclass
class Server:
    port: int
    done: list[Handshake] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """An echo server on 127.0.0.1 that terminates TLS with ``context`` (HTTP GET: a 200)."""
    server = Server(port=0)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            server.done.append(
                Handshake(
                    tls.version(),
                    tls.cipher(),
                    tls.selected_alpn_protocol(),
                    tls.getpeercert(binary_form=True),
                )
            )
            while data := await tls.receive_some(65536):
                if data.startswith((b"GET ", b"HEAD ")):  # curl: one canned answer, then close
                    await tls.send_all(HTTP_RESPONSE)
                    break
                await tls.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            server.failed.append(exc)
        finally:
            await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


async def connect(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    await tls.do_handshake()
    return tls


async def round_trip(tls: trio.SSLStream[trio.SocketStream], payload: bytes = b"ping") -> bytes:
    await tls.send_all(payload)
    return bytes(await tls.receive_some(65536))


async def openssl_client(port: int, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    """``openssl s_client`` against the port; its exit code and all it printed."""
    assert OPENSSL is not None
    result = await trio.run_process(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.mark.parametrize(
    ("version", "expected"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
async def test_handshake_both_versions(
    ca: trustme.CA, version: ssl.TLSVersion, expected: str
) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    client = client_context(ca)
    client.minimum_version = client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client)
            assert tls.version() == expected
            assert await round_trip(tls) == b"ping"
            await tls.aclose()
    assert server.done[0].version == expected


@pytest.mark.parametrize(
    ("key_type", "cipher"),
    [
        (trustme.KeyType.ECDSA, "ECDHE-ECDSA-AES128-GCM-SHA256"),
        (trustme.KeyType.RSA, "ECDHE-RSA-CHACHA20-POLY1305"),
        (trustme.KeyType.RSA, "DHE-RSA-AES256-GCM-SHA384"),
    ],
)
async def test_tls12_intermediate_ciphers_negotiate(
    ca: trustme.CA, key_type: trustme.KeyType, cipher: str
) -> None:
    ctx = build_context(loaded(ca, "localhost", key_type=key_type), TlsSettings())
    client = client_context(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(cipher)
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client)
            assert tls.cipher()[0] == cipher
            await tls.aclose()


async def test_client_cipher_preference_wins(ca: trustme.CA) -> None:
    # Mozilla intermediate: no server preference, so a client without AES-NI gets ChaCha20.
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    client = client_context(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client)
            assert tls.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
            await tls.aclose()


def test_only_intermediate_ciphers_are_enabled(ca: trustme.CA) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    names = {c["name"] for c in ctx.get_ciphers()}
    allowed = set(MOZILLA_INTERMEDIATE_CIPHERS.split(":")) | {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    assert names == allowed
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_tls13_only_refuses_tls12(ca: trustme.CA) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings(min_version="1.3"))
    client = client_context(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            with pytest.raises(trio.BrokenResourceError):
                await connect(server.port, client)
            tls = await connect(server.port, client_context(ca))
            assert tls.version() == "TLSv1.3"
            await tls.aclose()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls11_refused_python_client(ca: trustme.CA) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    client = client_context(ca)
    client.minimum_version = ssl.TLSVersion.TLSv1_1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT@SECLEVEL=0")  # let the client really offer TLS 1.1
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            with pytest.raises(trio.BrokenResourceError) as info:
                await connect(server.port, client)
    assert info.value is not None
    assert not server.done
    assert "UNSUPPORTED_PROTOCOL" in repr(server.failed[0].__cause__).upper()


@needs_openssl
async def test_tls11_refused_openssl_client(ca: trustme.CA) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            code, out = await openssl_client(
                server.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
            )
    assert code != 0, out
    assert not server.done
    assert "UNSUPPORTED_PROTOCOL" in repr(server.failed[0].__cause__).upper()


@pytest.mark.parametrize(
    ("offered", "expected"),
    [(["h2", "http/1.1"], "http/1.1"), (["http/1.1"], "http/1.1"), (["h2"], None)],
)
async def test_alpn_http11_only(ca: trustme.CA, offered: list[str], expected: str | None) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client_context(ca, alpn=offered))
            assert tls.selected_alpn_protocol() == expected
            await tls.aclose()
    assert server.done[0].alpn == expected


@needs_openssl
@pytest.mark.parametrize(
    ("groups", "version", "accepted"),
    [
        ("X25519", "-tls1_3", True),
        ("P-256", "-tls1_3", True),
        ("P-384", "-tls1_3", True),
        ("X448", "-tls1_3", False),
        ("P-521", "-tls1_3", False),
        ("ffdhe2048", "-tls1_3", False),
        ("X25519", "-tls1_2", True),
        ("P-384", "-tls1_2", True),
        ("X448", "-tls1_2", False),
        ("P-521", "-tls1_2", False),
    ],
)
async def test_key_exchange_groups(
    ca: trustme.CA, groups: str, version: str, accepted: bool
) -> None:
    # RSA: in TLS 1.2 an ECDSA P-256 leaf would itself need P-256 among the client's groups.
    ctx = build_context(loaded(ca, "localhost", key_type=trustme.KeyType.RSA), TlsSettings())
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            # ECDHE only: otherwise a TLS 1.2 client without a shared curve falls back to DHE.
            code, out = await openssl_client(
                server.port, version, "-groups", groups, "-cipher", "ECDHE"
            )
    assert (code == 0) is accepted, out
    assert bool(server.done) is accepted
    if accepted:
        shown = {"P-256": "prime256v1", "P-384": "secp384r1"}.get(groups, groups)
        assert re.search(rf"Server Temp Key: (ECDH, )?{shown},", out), out


def test_restrict_groups_reaches_openssl(ca: trustme.CA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert restrict_groups(ctx, GROUPS) is True
    with pytest.raises(ValueError, match="groups"):
        restrict_groups(ctx, "X25519:no-such-group")


@pytest.mark.parametrize(
    ("implementation", "version", "allowed"),
    [
        ("CPython", (3, 11), True),
        ("CPython", (3, 12), True),
        ("CPython", (3, 13), True),
        ("CPython", (3, 10), False),
        ("CPython", (3, 14), False),
        ("PyPy", (3, 11), False),
        ("GraalVM", (3, 11), False),
    ],
)
def test_ctypes_only_on_known_cpython_layouts(
    implementation: str, version: tuple[int, int], allowed: bool
) -> None:
    assert (ctypes_refusal(implementation, version) is None) is allowed


needs_known_layout = pytest.mark.skipif(
    ctypes_refusal(platform.python_implementation(), sys.version_info[:2]) is not None,
    reason="an interpreter whose ssl layout is unknown (the fallback is tested instead)",
)


class _GroupsContext(ssl.SSLContext):
    """A context as Python 3.15 makes it: with ``set_groups``."""

    groups: list[str]

    def set_groups(self, groups: str) -> None:
        if "no-such" in groups:
            raise ssl.SSLError("unknown group")
        self.groups.append(groups)


def test_set_groups_preferred_where_python_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import tls.context as context_module

    def no_ctypes() -> None:
        raise AssertionError("ctypes used although ssl can set the groups")

    monkeypatch.setattr(context_module, "_openssl", no_ctypes)
    ctx = _GroupsContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.groups = []
    assert restrict_groups(ctx, GROUPS) is True
    assert ctx.groups == [GROUPS]
    with pytest.raises(ValueError, match="groups"):
        restrict_groups(ctx, "X25519:no-such-group")


def test_other_interpreters_fall_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tls.context as context_module

    monkeypatch.setattr(context_module, "_libssl", None)
    monkeypatch.setattr(context_module, "_libssl_error", None)
    monkeypatch.setattr(platform, "python_implementation", lambda: "PyPy")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with caplog.at_level("WARNING", logger="lbproxy.tls"):
        assert restrict_groups(ctx, GROUPS) is False
    assert "P-256 only" in caplog.text
    assert "not CPython" in caplog.text


@needs_known_layout
def test_ssl_ctx_proof_leaves_the_context_as_it_was() -> None:
    lib = context_module_openssl()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    options = ctx.options
    assert lib.ssl_ctx(ctx) == lib.ssl_ctx(ctx) != 0
    assert ctx.sni_callback is None
    assert ctx.options == options

    def callback(*_args: object) -> None:
        return None

    ctx.sni_callback = callback
    lib.ssl_ctx(ctx)
    assert ctx.sni_callback is callback


@needs_known_layout
def test_a_wrong_layout_is_refused_before_any_pointer_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shifted by one pointer, the fields read are not the ones the proof expects: refused from
    # the object's own bytes, never by handing a stray value to libssl.
    lib = context_module_openssl()
    monkeypatch.setattr(lib, "_offset", lib._offset + 8)

    def never(_pointer: int) -> int:
        raise AssertionError("libssl called with an unproven pointer")

    monkeypatch.setattr(lib, "get_options", never)
    with pytest.raises(RuntimeError, match="layout"):
        lib.ssl_ctx(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def context_module_openssl() -> _LibSsl:
    lib = _openssl()
    assert lib is not None, "libssl unreachable on a Python whose layout is known"
    return lib


async def openssl_session(port: int, *args: str, line: bytes, until: bytes) -> bytes:
    """Drive an interactive ``openssl s_client``: after the handshake send ``line``, then read
    until ``until`` shows up or the client exits; everything it printed."""
    assert OPENSSL is not None
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args]
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    out = bytearray()

    async def read_until(marker: bytes) -> None:
        assert proc.stdout is not None
        while marker not in out:
            chunk = await proc.stdout.receive_some(65536)
            if not chunk:
                return
            out.extend(chunk)

    try:
        await read_until(b"Extended master secret")  # the end of the handshake summary
        await proc.stdin.send_all(line)
        await read_until(until)
    finally:
        proc.kill()
        await proc.wait()
    return bytes(out)


@needs_openssl
@pytest.mark.parametrize(
    ("line", "until"),
    [(b"hello\n", b"hello"), (b"R\n", b"no renegotiation")],
    ids=["echo-works", "renegotiate"],
)
async def test_client_renegotiation_refused(ca: trustme.CA, line: bytes, until: bytes) -> None:
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            # "R" alone on a line asks s_client to renegotiate (TLS 1.2 has renegotiation).
            out = await openssl_session(server.port, "-tls1_2", line=line, until=until)
    after = out.split(b"Extended master secret", 1)[1]
    assert until in after, out
    assert len(server.done) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (TlsSettings(ciphers="NOT-A-CIPHER"), "tls ciphers"),
        (TlsSettings(ciphersuites="TLS_AES_128_GCM_SHA256:TLS_BOGUS"), "TLS_BOGUS"),
        (TlsSettings(ciphersuites=""), "tls ciphersuites"),
        (TlsSettings(min_version="1.1"), "min_version"),
    ],
)
def test_bad_overrides_are_clear_errors(
    ca: trustme.CA, settings: TlsSettings, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_context(loaded(ca, "localhost"), settings)
    assert "\n" not in str(info.value)


async def test_overrides_apply(ca: trustme.CA) -> None:
    settings = TlsSettings(
        ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", ciphersuites="TLS_CHACHA20_POLY1305_SHA256"
    )
    ctx = build_context(loaded(ca, "localhost"), settings)
    assert {c["name"] for c in ctx.get_ciphers()} == {
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            tls = await connect(server.port, client_context(ca))
            assert tls.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
            await tls.aclose()


def test_mismatched_key_names_the_source(ca: trustme.CA) -> None:
    one, other = loaded(ca, "localhost"), loaded(ca, "other.example")
    broken = LoadedCertificate(
        source="www.pem",
        chain_pem=one.chain_pem,
        key_pem=other.key_pem,
        names=one.names,
        not_before=one.not_before,
        not_after=one.not_after,
    )
    with pytest.raises(ValueError, match=r"^www\.pem: ") as info:
        build_context(broken, TlsSettings())
    assert b"PRIVATE" not in str(info.value).encode()


@pytest.mark.parametrize("opener", [private_files, temporary_private_files])
def test_key_material_leaves_no_file(opener: Callable[..., object]) -> None:
    import os
    import stat

    seen: dict[str, int] = {}
    with opener({"key.pem": b"secret"}) as paths:  # type: ignore[attr-defined]
        path = paths["key.pem"]
        with open(path, "rb") as handle:
            assert handle.read() == b"secret"
        seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)
        seen["dir"] = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
    assert not os.path.exists(path)
    if opener is temporary_private_files:
        assert seen["mode"] == 0o600
        assert seen["dir"] == 0o700


def _blocking_session_pair(port: int, client: ssl.SSLContext) -> tuple[bool, bool]:
    """Connect twice, the second time offering the first session: (first, second) reused."""
    import socket

    reused: list[bool] = []
    session: ssl.SSLSession | None = None
    for _ in range(2):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            # A round trip first: TLS 1.3 tickets arrive after the handshake.
            tls.sendall(b"ping")
            assert tls.recv(16) == b"ping"
            reused.append(bool(tls.session_reused))
            session = tls.session
    return reused[0], reused[1]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("through_sni", [False, True], ids=["plain", "sni-dispatch"])
async def test_session_resumption(
    ca: trustme.CA, version: ssl.TLSVersion, through_sni: bool
) -> None:
    from tls.server_tls import TlsServer

    cert = loaded(ca, "localhost")
    if through_sni:
        context = TlsServer([loaded(ca, "other.example"), cert], TlsSettings()).context
    else:
        context = build_context(cert, TlsSettings())
    client = client_context(ca)
    client.minimum_version = client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(context) as server:
            first, second = await trio.to_thread.run_sync(
                _blocking_session_pair, server.port, client
            )
    assert (first, second) == (False, True)


@needs_openssl
@pytest.mark.parametrize(("groups", "accepted"), [("P-256", True), ("X25519", False)])
async def test_groups_fallback_without_libssl_access(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, groups: str, accepted: bool
) -> None:
    # Where libssl cannot be reached (another Python, another layout), key exchange is pinned
    # to P-256: still inside the profile, never OpenSSL's wider default list.
    import tls.context as context_module

    monkeypatch.setattr(context_module, "_libssl", None)
    monkeypatch.setattr(context_module, "_libssl_error", "simulated: no libssl access")
    ctx = build_context(loaded(ca, "localhost"), TlsSettings())
    with pytest.raises(ValueError, match="cannot be changed with this Python"):
        build_context(loaded(ca, "localhost"), TlsSettings(ciphersuites="TLS_AES_128_GCM_SHA256"))
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(ctx) as server:
            code, out = await openssl_client(server.port, "-tls1_3", "-groups", groups)
    assert (code == 0) is accepted, out


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_intermediates_are_served(ca: trustme.CA, version: ssl.TLSVersion) -> None:
    # The client trusts only the root: the handshake works only if the intermediate is sent.
    intermediate = ca.create_child_ca()
    cert = loaded(intermediate, "localhost")
    assert cert.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    client = client_context(ca)
    client.minimum_version = client.maximum_version = version
    with trio.fail_after(IO_TIMEOUT):
        async with tls_server(build_context(cert, TlsSettings())) as server:
            tls = await connect(server.port, client)
            assert await round_trip(tls) == b"ping"
            await tls.aclose()
