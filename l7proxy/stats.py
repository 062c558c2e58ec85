"""The stats listener: one small h11 server for the stats page, its CSV and JSON, the
Prometheus ``/metrics``, and the page's server actions (with ``stats.auth`` configured).

It reads the clocks and the runtime once per request into a ``statsrows.Snapshot``; the
renderers (``statspage``, ``metrics``) and the action rules (``statsactions``) are pure.
"""

from __future__ import annotations

import datetime
import http
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote_plus

import h11
import trio
from cryptography import x509

from config.model import StatsAuth, StatsSettings

from . import metrics, statsactions, statspage, statsrows
from .runtime import Runtime
from .server import Handler
from .stream import SockStream

if TYPE_CHECKING:
    from tls.certificate import LoadedCertificate
    from tls.server_tls import TlsServer

log = logging.getLogger("lbproxy.stats")
STATS_TIMEOUT = 10.0  # a stats client gets this long per request, then is closed
PROCESS_STARTED = time.time()  # this module loads as the process starts
METRICS_PATH = "/metrics"  # where Prometheus' exporter serves, HAProxy's included
REALM = statsactions.REALM.encode()

# (virtual server label, bind address, its TLS server), for the certificates' expiry.
TlsBinds = Callable[[], Iterable[tuple[str, str, "TlsServer"]]]


class StatsAuthError(Exception):
    """The stats password file cannot be used; the message names the file and the cause."""


def version() -> str:
    try:
        return metadata.version("lbproxy")
    except metadata.PackageNotFoundError:
        return "unknown"


def read_password(auth: StatsAuth) -> bytes:
    """The first line of ``auth.password_file``. Raises StatsAuthError (never showing it)."""
    path = auth.password_file
    try:
        with open(path, "rb") as stream:
            first = stream.readline(4096)
    except OSError as error:
        raise StatsAuthError(f"stats password file {path}: {error.strerror or error}") from None
    password = first.rstrip(b"\r\n")
    if not password:
        raise StatsAuthError(f"stats password file {path}: the first line is empty")
    return password


def certificate_expiry(cert: LoadedCertificate) -> tuple[str, datetime.datetime]:
    """The leaf's subject and expiry: the one place stats read a certificate."""
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    return leaf.subject.rfc4514_string(), leaf.not_valid_after_utc


def certificate_rows(
    binds: Iterable[tuple[str, str, TlsServer]], wall: float
) -> tuple[statsrows.CertificateRow, ...]:
    rows = []
    for proxy, bind, server in binds:
        for cert in server.certificates:
            subject, not_after = certificate_expiry(cert)
            rows.append(
                statsrows.CertificateRow(
                    proxy=proxy,
                    bind=bind,
                    subject=subject,
                    source=cert.source,
                    not_after=not_after,
                    seconds_left=not_after.timestamp() - wall,
                )
            )
    return tuple(rows)


def snapshot(runtime: Runtime, tls_binds: TlsBinds | None = None) -> statsrows.Snapshot:
    """Everything the stats outputs show, read now. Runs in the trio thread."""
    wall = time.time()
    clocks = statsrows.Clocks(now=trio.current_time(), wall=wall, started=PROCESS_STARTED)
    return statsrows.Snapshot(
        rows=statsrows.build(runtime, clocks),
        certificates=certificate_rows(tls_binds(), wall) if tls_binds is not None else (),
        version=version(),
        pid=os.getpid(),
        uptime=wall - PROCESS_STARTED,
        started=PROCESS_STARTED,
    )


def csv_text(runtime: Runtime) -> bytes:
    """HAProxy's stats CSV of the running proxy (the page's ``?csv`` and ``show stat``)."""
    return statspage.render_csv(snapshot(runtime).rows)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _text(status: int, message: str, *headers: tuple[bytes, bytes]) -> Answer:
    return Answer(status, b"text/plain; charset=utf-8", (message + "\n").encode(), headers)


MESSAGES = {"done": "Done.", "none": "Nothing changed."}


@dataclass
class StatsSite:
    """The stats listener's answers; one per listener generation (a reload builds anew)."""

    runtime: Runtime
    base: str
    user: str | None = None
    password: bytes | None = None
    tls_binds: TlsBinds | None = None
    # Embedded in the page and required in every POST: a page elsewhere cannot know it.
    token: str = ""

    def __post_init__(self) -> None:
        self.token = self.token or secrets.token_urlsafe(32)

    def answer(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> Answer:
        path, _, query = target.decode("latin-1").partition("?")
        # HAProxy's forms: /stats;csv, /stats?stats;csv, ?csv; options after ';' ignored.
        path, _, path_options = path.partition(";")
        options = {*path_options.split(";"), *query.split(";")}
        on_page = path.rstrip("/") == self.base.rstrip("/")
        if not on_page and path != METRICS_PATH:
            return _text(404, "not found")
        user: str | None = None
        if self.user is not None and self.password is not None:
            user = statsactions.authorized_user(
                headers.get(b"authorization"), self.user, self.password
            )
            if user is None:
                return _text(401, "authentication required", (b"www-authenticate", REALM))
        if method == b"POST" and on_page:
            return self._post(user, headers, body)
        if method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed", (b"allow", b"GET, HEAD"))
        snap = snapshot(self.runtime, self.tls_binds)
        if not on_page:
            return Answer(200, metrics.CONTENT_TYPE, metrics.render(snap))
        if "csv" in options:
            return Answer(200, b"text/csv", statspage.render_csv(snap.rows))
        if query == "json":
            return Answer(200, b"application/json", statspage.render_json(snap.rows))
        message = MESSAGES.get(query.removeprefix("st=")) if query.startswith("st=") else None
        if query.startswith("st=error:"):
            message = "Refused: " + unquote_plus(query.removeprefix("st=error:"))
        page = statspage.PageOptions(
            base=self.base,
            token=self.token if user is not None else None,
            user=user,
            message=message,
        )
        return Answer(200, b"text/html; charset=utf-8", statspage.render_html(snap, page))

    def _post(self, user: str | None, headers: dict[bytes, bytes], body: bytes) -> Answer:
        if user is None:
            return _text(403, "the stats page is read-only: configure global.stats.auth")
        if not statsactions.same_origin(headers.get(b"origin"), headers.get(b"host")):
            log.warning("stats page: refused a POST from origin %r", headers.get(b"origin"))
            return _text(403, "cross-site request refused")
        form = statsactions.parse_form(body)
        if not statsactions.token_ok(form, self.token):
            return _text(403, "missing or stale form token: reload the page")
        try:
            changes = statsactions.plan(form, self.runtime.pools)
        except statsactions.ActionError as error:
            return self._back("error:" + quote_plus(str(error)))
        sessions = [info.connection for info in self.runtime.sessions.values()]
        for line in statsactions.apply(changes, trio.current_time(), user, sessions):
            log.warning("%s", line)
        return self._back("done" if changes else "none")

    def _back(self, outcome: str) -> Answer:
        # 303: the browser reloads the page with GET, so a refresh does not post again.
        location = f"{self.base}?st={outcome}".encode("ascii")
        return Answer(303, b"text/plain", b"", ((b"location", location),))


def make_site(
    runtime: Runtime, settings: StatsSettings | None, tls_binds: TlsBinds | None = None
) -> StatsSite:
    """Raises StatsAuthError when the password file cannot be read."""
    base = settings.path if settings is not None else "/"
    auth = settings.auth if settings is not None else None
    password = read_password(auth) if auth is not None else None
    return StatsSite(runtime, base, auth.user if auth else None, password, tls_binds=tls_binds)


async def _read_body(conn: h11.Connection, stream: SockStream) -> bytes | None:
    """The request body, or None when it is larger than a form can be."""
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > statsactions.MAX_FORM_BYTES:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            return None


def make_handler(
    runtime: Runtime, settings: StatsSettings | None, tls_binds: TlsBinds | None = None
) -> Handler:
    """Raises StatsAuthError when the password file cannot be read."""
    site = make_site(runtime, settings, tls_binds)

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
                    headers = {k.lower(): v for k, v in event.headers}
                    body = await _read_body(conn, stream)
                    if body is None:
                        answer = _text(413, "request body too large")
                    else:
                        answer = site.answer(event.method, event.target, headers, body)
                    await _send(conn, stream, answer, head_only=event.method == b"HEAD")
                    if body is None or conn.our_state is not h11.DONE:
                        return
                    if conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.close()

    return handle


async def _send(
    conn: h11.Connection, stream: SockStream, answer: Answer, *, head_only: bool
) -> None:
    headers = [
        (b"content-type", answer.content_type),
        (b"content-length", str(len(answer.body)).encode()),
        (b"cache-control", b"no-cache"),
        *answer.headers,
    ]
    reason = http.HTTPStatus(answer.status).phrase.encode()
    data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
    out = data or b""
    if not head_only:
        out += conn.send(h11.Data(data=answer.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
