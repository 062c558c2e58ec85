"""Server-name matching: which certificate answers a TLS ClientHello.

Pure lookup, called from the SNI callback on every handshake. Exact names win over wildcards and
wildcards over the default whatever the file order, which removes Pound's "order most specific
first" trap. A wildcard covers exactly one label (RFC 6125 section 6.4.3, as browsers do).
"""

from __future__ import annotations

from collections.abc import Sequence

from .certificate import LoadedCertificate


def normalize_name(name: str) -> str:
    """Lower-case, without the trailing dot of a fully qualified name."""
    return name.strip().rstrip(".").lower()


def _wildcard_key(name: str) -> str | None:
    """The ``*.parent`` key a name would match, or None for single-label names."""
    _, dot, parent = name.partition(".")
    if not dot or not parent:
        return None
    return "*." + parent


class SniIndex:
    """Certificates indexed by name, built once per (re)load, read on every handshake."""

    __slots__ = ("_default", "_exact", "_strict", "_wildcard", "certs")

    def __init__(self, certs: Sequence[LoadedCertificate], strict: bool = False) -> None:
        self.certs: tuple[LoadedCertificate, ...] = tuple(certs)
        self._strict = strict
        self._exact: dict[str, LoadedCertificate] = {}
        self._wildcard: dict[str, LoadedCertificate] = {}
        # The first certificate that claims a name keeps it: the operator's order breaks ties.
        for cert in self.certs:
            for raw in cert.names:
                name = normalize_name(raw)
                if name.startswith("*."):
                    self._wildcard.setdefault(name, cert)
                elif name:
                    self._exact.setdefault(name, cert)
        marked = [cert for cert in self.certs if cert.default]
        self._default: LoadedCertificate | None = (
            marked[0] if marked else (self.certs[0] if self.certs else None)
        )

    @property
    def default(self) -> LoadedCertificate | None:
        """The certificate served without (or with an unknown) server name."""
        return self._default

    def pick(self, server_name: str | None) -> LoadedCertificate | None:
        """The certificate for ``server_name``; None means: fail the handshake (strict)."""
        # "*" is no hostname character (RFC 952/1123): such a name only ever matches the default.
        if server_name and "*" not in server_name:
            name = normalize_name(server_name)
            exact = self._exact.get(name)
            if exact is not None:
                return exact
            key = _wildcard_key(name)
            if key is not None:
                wild = self._wildcard.get(key)
                if wild is not None:
                    return wild
        if self._strict:
            return None
        return self._default
