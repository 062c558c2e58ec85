"""A certificate ready to serve: what the store hands to context building and SNI matching."""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """One leaf with its chain and key, checked and ordered.

    ``chain_pem`` holds the leaf first, then intermediates towards the root; ``key_pem`` is the
    unencrypted PKCS#8 key (never log it). ``names`` are the lower-cased DNS names the leaf
    covers (SAN, or the CN when there is no SAN), wildcards kept as ``*.example.com``.
    """

    source: str  # the file it came from, for messages and stats
    chain_pem: bytes
    key_pem: bytes
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    default: bool = False  # marked `default: true` in the config
    subject: str = ""  # the leaf's CN (else its first name), for messages and stats
