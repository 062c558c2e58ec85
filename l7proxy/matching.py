"""Does a request match a condition (config/conditions)? A pure function of the request: its
method, target, headers, the client's address and TLS. ``RequestView`` works out the parts
conditions look at (path, query, host) once, and only when one asks."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from config.conditions import (
    AllOf,
    AnyOf,
    Condition,
    Header,
    HostIs,
    HostPrefix,
    HostRegex,
    HostSuffix,
    Method,
    Not,
    PathIs,
    PathPrefix,
    PathRegex,
    PathSuffix,
    Query,
    Source,
)

from .runtime import ClientInfo

Headers = list[tuple[bytes, bytes]]


def host_without_port(host: bytes) -> str:
    """Lower-case host name of a Host header value, without port or trailing dot."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        return text[: end + 1] if end != -1 else text
    name, _, _ = text.partition(":")
    return name.rstrip(".")


def path_of(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    if path.startswith((b"http://", b"https://")):  # absolute-form: keep only the path
        scheme_end = path.find(b"//") + 2
        slash = path.find(b"/", scheme_end)
        path = path[slash:] if slash != -1 else b"/"
    return path.decode("latin-1")


class RequestView:
    """One request as conditions and value templates see it."""

    __slots__ = ("_address", "_host", "_path", "_query", "client", "headers", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: Headers, client: ClientInfo) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.client = client
        self._path: str | None = None
        self._host: str | None = None
        self._query: list[tuple[str, str]] | None = None
        self._address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = path_of(self.target)
        return self._path

    @property
    def host_header(self) -> bytes:
        for name, value in self.headers:
            if name == b"host":
                return value
        return b""

    @property
    def host(self) -> str:
        """Lower case, without port or trailing dot."""
        if self._host is None:
            self._host = host_without_port(self.host_header)
        return self._host

    @property
    def query_string(self) -> bytes:
        _, sep, query = self.target.partition(b"?")
        return query if sep else b""

    @property
    def query(self) -> list[tuple[str, str]]:
        if self._query is None:
            text = self.query_string.decode("latin-1")
            self._query = parse_qsl(text, keep_blank_values=True, encoding="latin-1")
        return self._query

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self._address is None:
            try:
                self._address = ipaddress.ip_address(self.client.ip)
            except ValueError:
                return None
        return self._address


def matches(condition: Condition, view: RequestView) -> bool:
    return _MATCHERS[type(condition)](condition, view)


def _header(cond: Header, view: RequestView) -> bool:
    for name, value in view.headers:
        if name != cond.name:
            continue
        if cond.regex is not None:
            if cond.regex.search(value) is not None:
                return True
        elif cond.value is None or value.strip(b" \t") == cond.value:
            return True
    return False


def _source(cond: Source, view: RequestView) -> bool:
    address = view.address
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in cond.networks)


def _query(cond: Query, view: RequestView) -> bool:
    return any(
        name == cond.name and (cond.value is None or value == cond.value)
        for name, value in view.query
    )


_MATCHERS: dict[type, Callable[[Any, RequestView], bool]] = {
    PathIs: lambda c, v: v.path == c.value,
    PathPrefix: lambda c, v: v.path.startswith(c.value),
    PathSuffix: lambda c, v: v.path.endswith(c.value),
    PathRegex: lambda c, v: c.pattern.search(v.path) is not None,
    HostIs: lambda c, v: v.host == c.value,
    HostPrefix: lambda c, v: v.host.startswith(c.value),
    HostSuffix: lambda c, v: v.host.endswith(c.value),
    HostRegex: lambda c, v: c.pattern.search(v.host) is not None,
    Header: _header,
    Source: _source,
    Method: lambda c, v: v.method in c.methods,
    Query: _query,
    AllOf: lambda c, v: all(matches(item, v) for item in c.items),
    AnyOf: lambda c, v: any(matches(item, v) for item in c.items),
    Not: lambda c, v: not matches(c.item, v),
}
