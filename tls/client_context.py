"""Client ``ssl.SSLContext``s for re-encryption to real servers, and the TLS target of one
connection.

Pure apart from reading the CA and certificate files it is asked to read. Every file problem is a
``CertificateError`` naming the file and the cause, so ``lbproxy check`` and start-up print it as
it is. One context per distinct ``ServerTls`` setting, built at start and on reload; the
connections themselves are made in ``l7proxy/stream.connect_tls``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from config.model import Address, Pool, RealServer, ServerTls, Verify

# The file loading (tls.store, tls.context, tls.keys) is imported only when a server re-encrypts:
# a configuration without it starts with the modules it started with before re-encryption existed
# (fewer long-lived objects for every full garbage collection to walk).

ClientContexts = dict[ServerTls, ssl.SSLContext]


@dataclass(frozen=True, slots=True)
class TlsTarget:
    """How one connection to a real server speaks TLS. Kept-alive connections are pooled per
    (address, target): a connection made for one SNI name never serves another."""

    context: ssl.SSLContext
    # Sent as SNI (unless it is an IP address: RFC 6066) and matched against the certificate.
    server_name: str


def build_client_context(settings: ServerTls) -> ssl.SSLContext:
    """A client context for ``settings``; CertificateError names a bad CA or certificate file."""
    from .context import ALPN_PROTOCOLS

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and hostname checks on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    if settings.verify is Verify.NONE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca is not None:
        _load_ca(context, settings.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.certificate is not None:
        _load_client_certificate(context, settings.certificate)
    return context


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    from .store import CertificateError, chain_pem, parse_pem_bundle, read_certificate_file

    _, certs = parse_pem_bundle(read_certificate_file(path), path)
    if not certs:
        raise CertificateError(path, "no CA certificate in the file (PEM expected)")
    try:
        context.load_verify_locations(cadata=chain_pem(certs).decode("ascii"))
    except ssl.SSLError as error:
        cause = f"OpenSSL refuses the CA certificates ({error.reason})"
        raise CertificateError(path, cause) from None


def _load_client_certificate(context: ssl.SSLContext, path: str) -> None:
    from .context import private_files
    from .keys import key_pem
    from .store import CertificateError, chain_pem, load_key_and_chain

    key, chain = load_key_and_chain(path)
    with private_files({"chain.pem": chain_pem(chain), "key.pem": key_pem(key)}) as paths:
        try:
            context.load_cert_chain(paths["chain.pem"], paths["key.pem"])
        except ssl.SSLError as error:
            raise CertificateError(
                path, f"OpenSSL cannot use this client certificate ({error.reason})"
            ) from None


def server_tls_settings(pools: Iterable[Pool]) -> list[tuple[str, RealServer]]:
    """Every real server and fallback that re-encrypts, with where it is configured."""
    found: list[tuple[str, RealServer]] = []
    for pool in pools:
        servers = (*pool.real_servers, *((pool.fallback,) if pool.fallback else ()))
        for server in servers:
            if server.tls is not None:
                found.append((f"pool {pool.name}, server {server.label}", server))
    return found


def build_client_contexts(pools: Iterable[Pool]) -> tuple[ClientContexts, list[str]]:
    """One context per distinct setting, and the problems (``pool P, server S: FILE: cause``)."""
    contexts: ClientContexts = {}
    problems: list[str] = []
    found = server_tls_settings(pools)
    if not found:
        return contexts, problems
    from .store import CertificateError

    failed: set[ServerTls] = set()
    for where, server in found:
        settings = server.tls
        assert settings is not None
        if settings in contexts or settings in failed:
            continue
        try:
            contexts[settings] = build_client_context(settings)
        except CertificateError as error:
            failed.add(settings)
            which = "ca" if error.source == settings.ca else "certificate"
            problems.append(f"{where}: tls {which}: {error}")
    return contexts, problems


def request_host_name(host: bytes) -> str | None:
    """The name in a Host header value, without port or IPv6 brackets; None when unusable."""
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] or None if end > 0 else None
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name or None


def target_for(
    settings: ServerTls, context: ssl.SSLContext, address: Address, host: bytes = b""
) -> TlsTarget:
    """The name a connection sends and verifies: the request's Host with ``sni: host``, else
    the configured ``sni``, else the server's address (a name, or an IP address the certificate
    must list)."""
    name: str | None = None
    if settings.sni_from_host and host:
        name = request_host_name(host)
    if name is None:
        name = settings.sni or address.host
    return TlsTarget(context, name)
