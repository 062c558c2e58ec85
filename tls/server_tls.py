"""One TLS bind: a context per certificate and the SNI dispatch between them.

``TlsServer.context`` is the context the proxy hands to ``trio.SSLStream``. It stays the same
object for the life of the bind; its SNI callback looks the server name up in the current index
and moves the connection onto the picked certificate's context. ``reload`` swaps index and
contexts in one assignment, so new handshakes see the new certificates while connections
already running keep the context they were given.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Sequence

from config.model import TlsSettings

from .certificate import LoadedCertificate
from .context import build_context, rotate_ticket_keys
from .default_cert import ensure_default_certificate
from .sni import SniIndex
from .status import CertificateStatus, certificate_status, expiry_warnings


class _Snapshot:
    """Index and contexts of one load; never changed after it is built."""

    __slots__ = ("contexts", "index")

    def __init__(self, certs: Sequence[LoadedCertificate], settings: TlsSettings) -> None:
        if not certs:
            raise ValueError("a TLS bind needs at least one certificate")
        self.index = SniIndex(certs, strict=settings.strict_sni)
        # Keyed by identity: the index hands back the very objects it was built from.
        self.contexts = {id(cert): build_context(cert, settings) for cert in self.index.certs}

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        cert = self.index.pick(server_name)
        return None if cert is None else self.contexts[id(cert)]


class TlsServer:
    """All certificates of one TLS bind, with SNI dispatch; built once, reloaded in place."""

    def __init__(
        self,
        certs: Sequence[LoadedCertificate],
        settings: TlsSettings,
        *,
        log: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self._log = log
        self.handshake_timeout = settings.handshake_timeout
        self._snapshot = _Snapshot(certs, settings)
        default = self._snapshot.index.default
        assert default is not None  # _Snapshot refuses an empty list
        # Built with the same settings as the per-certificate contexts: OpenSSL keeps options,
        # verify mode, groups and the session cache of the context a handshake starts on.
        self.context = build_context(default, settings)
        self.context.sni_callback = self._on_server_name

    @property
    def certificates(self) -> tuple[LoadedCertificate, ...]:
        return self._snapshot.index.certs

    def certificate_statuses(self) -> list[CertificateStatus]:
        """What new handshakes are served now, for the stats page, metrics and warnings."""
        return [certificate_status(cert) for cert in self._snapshot.index.certs]

    def reload(
        self, certs: Sequence[LoadedCertificate], *, now: datetime.datetime | None = None
    ) -> None:
        """Serve ``certs`` to new handshakes; ValueError leaves the current ones in place.

        Session tickets issued before are refused from now on (new ticket keys), so a client
        comes back through a full handshake and sees the new certificate. Expired or expiring
        certificates are served and logged as warnings through the logger given at start.
        """
        self._snapshot = _Snapshot(certs, self.settings)
        rotate_ticket_keys(self.context)
        if self._log is not None:
            log_expiry_warnings(self._log, self.certificate_statuses(), now)

    def _on_server_name(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
    ) -> int | None:
        # Runs inside OpenSSL's ClientHello processing: pure lookup, nothing that can block.
        context = self._snapshot.context_for(server_name)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = context
        return None


def load_tls_server(
    settings: TlsSettings,
    *,
    state_dir: str,
    now: datetime.datetime,
    log: logging.Logger,
) -> TlsServer:
    """Load the bind's certificates (or the self-signed default) and build its TlsServer.

    Expired and soon expiring certificates are served and logged as warnings on ``log``, which
    the TlsServer keeps for its reloads. Raises ``tls.store.CertificateError`` for a bad
    certificate file, ValueError for settings OpenSSL refuses and OSError when the state
    directory cannot be written.
    """
    if settings.certificates:
        from .store import load_certificates

        certs = load_certificates(settings.certificates)
    else:
        certs = [ensure_default_certificate(state_dir, now=now, log=log)]
    server = TlsServer(certs, settings, log=log)
    log_expiry_warnings(log, server.certificate_statuses(), now)
    return server


def log_expiry_warnings(
    log: logging.Logger,
    statuses: Sequence[CertificateStatus],
    now: datetime.datetime | None = None,
) -> None:
    """Each expired, not yet valid or soon expiring certificate as one warning line."""
    now = now or datetime.datetime.now(datetime.UTC)
    for warning in expiry_warnings(statuses, now):
        log.warning("%s", warning)
