"""Conditions over one request, and value templates: frozen values the loader builds once.

A condition is a tree of primitives (path, host, header, source, method, query) under
``AllOf``/``AnyOf``/``Not``; names from a virtual server's ``acls:`` are resolved by the loader, so
nothing here refers to a name. Regexes are compiled at load. Matching is
``l7proxy/matching.matches``: a pure function of the request.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PathIs:
    value: str


@dataclass(frozen=True, slots=True)
class PathPrefix:
    value: str


@dataclass(frozen=True, slots=True)
class PathSuffix:
    value: str


@dataclass(frozen=True, slots=True)
class PathRegex:
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class HostIs:
    value: str  # lower case, no port, no trailing dot


@dataclass(frozen=True, slots=True)
class HostPrefix:
    value: str


@dataclass(frozen=True, slots=True)
class HostSuffix:
    value: str


@dataclass(frozen=True, slots=True)
class HostRegex:
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Header:
    """Present (no value, no regex), a value equal after trimming, or a regex search."""

    name: bytes  # lower case
    value: bytes | None = None
    regex: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class Source:
    networks: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class Method:
    methods: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    value: str | None = None  # None: the parameter is present


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


Condition = (
    PathIs
    | PathPrefix
    | PathSuffix
    | PathRegex
    | HostIs
    | HostPrefix
    | HostSuffix
    | HostRegex
    | Header
    | Source
    | Method
    | Query
    | AllOf
    | AnyOf
    | Not
)


class Var(enum.Enum):
    """What a ``%[...]`` in a value stands for (HAProxy's sample-fetch spelling)."""

    SRC = "src"
    SRC_PORT = "src_port"
    DST = "dst"
    DST_PORT = "dst_port"
    SSL_FC = "ssl_fc"  # 1 over TLS, else 0
    SRV_NAME = "srv_name"  # the chosen server's label; empty before one is chosen
    HOST = "host"  # the Host header as sent (Pound's %[host]; HAProxy hdr(host))
    PATH = "path"
    URL = "url"  # the request target: path and query
    QUERY = "query"
    METHOD = "method"


# Other spellings the importers meet.
VAR_ALIASES = {"hdr(host)": Var.HOST, "req.hdr(host)": Var.HOST, "base": Var.URL}


@dataclass(frozen=True, slots=True)
class Template:
    """A value with ``%[...]`` fetches; ``parts`` alternate literal text and variables."""

    parts: tuple[str | Var, ...]

    @property
    def literal(self) -> str | None:
        """The text when the template has no variable."""
        if all(isinstance(part, str) for part in self.parts):
            return "".join(part for part in self.parts if isinstance(part, str))
        return None
