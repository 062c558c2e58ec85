"""Persistence: the HAProxy-compatible server cookie and the source-address table.

Cookie persistence is HAProxy's ``cookie NAME insert indirect nocache``: the value is the real
server's label, inserted on responses and stripped from requests. Anything odd in a client's
cookie (quotes, separators, control bytes, great length) means "no cookie", never an error.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from config.model import CookiePersistence

# Longest label accepted from a client. Labels are short operator-chosen names; HAProxy bounds
# server cookie values by its buffer size, we bound them far lower so a forged value costs nothing.
MAX_LABEL_BYTES = 256

# The expiry HAProxy writes to clear the cookie (src/http_ana.c, servers without a cookie).
EXPIRED = "Thu, 01-Jan-1970 00:00:01 GMT"

# RFC 6265 section 4.1.1 cookie-octet: printable US-ASCII except space, DQUOTE, comma,
# semicolon and backslash.
_COOKIE_OCTETS = frozenset(
    [0x21, *range(0x23, 0x2C), *range(0x2D, 0x3B), *range(0x3C, 0x5C), *range(0x5D, 0x7F)]
)


def valid_label(value: bytes | str) -> bool:
    """True when ``value`` can be a cookie value as is: 1..256 RFC 6265 cookie-octets."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    return 0 < len(raw) <= MAX_LABEL_BYTES and all(b in _COOKIE_OCTETS for b in raw)


def read_cookie(
    headers: list[tuple[bytes, bytes]], name: str
) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """Return the label in our cookie (first occurrence) and the headers without our cookie.

    Our cookie is removed from every ``Cookie`` header (``indirect``: the application never sees
    it); other cookies keep their bytes and order; a header left empty is dropped. An invalid value
    of ours is still removed, and reported as None.
    """
    wanted = name.encode("latin-1", "replace")
    label: str | None = None
    found = False
    out: list[tuple[bytes, bytes]] = []
    for hname, hvalue in headers:
        if hname.lower() != b"cookie":
            out.append((hname, hvalue))
            continue
        kept: list[bytes] = []
        removed = False
        for part in hvalue.split(b";"):
            pair = part.strip(b" \t")
            if not pair:
                continue
            cname, sep, cvalue = pair.partition(b"=")
            if sep and cname.strip(b" \t") == wanted:
                removed = True
                if not found:
                    found = True
                    value = cvalue.strip(b" \t")
                    label = value.decode("ascii") if valid_label(value) else None
                continue
            kept.append(pair)
        if not removed:
            out.append((hname, hvalue))
        elif kept:
            out.append((hname, b"; ".join(kept)))
    return label, out


def _attributes(cfg: CookiePersistence, tls: bool) -> str:
    # Order as HAProxy emits them: path, domain, HttpOnly, Secure, then the `attr` values.
    text = f"; path={cfg.path}"
    if cfg.domain:
        text += f"; domain={cfg.domain}"
    if cfg.httponly:
        text += "; HttpOnly"
    if cfg.secure if cfg.secure is not None else tls:
        text += "; Secure"
    if cfg.samesite:
        text += f"; SameSite={cfg.samesite}"
    return text


def set_cookie_value(cfg: CookiePersistence, label: str, tls: bool) -> bytes:
    """The ``Set-Cookie`` value that sends the client to ``label``, byte for byte HAProxy's.

    Raises ValueError for a label that is not a plain cookie value (the loader never lets one
    through; this keeps a bug from turning into header injection).
    """
    if not valid_label(label):
        raise ValueError(f"label {label!r} cannot be a cookie value")
    return f"{cfg.name}={label}{_attributes(cfg, tls)}".encode("latin-1")


def clear_cookie_value(cfg: CookiePersistence, tls: bool) -> bytes:
    """The ``Set-Cookie`` value that expires our cookie (responses from the fallback server)."""
    return f"{cfg.name}=; Expires={EXPIRED}{_attributes(cfg, tls)}".encode("latin-1")


def source_key(client_ip: str, mask4: int, mask6: int) -> str:
    """The client's network as text (``192.0.2.0/24``); IPv4-mapped IPv6 counts as IPv4.

    An address that does not parse (it always comes from the socket, so this is defensive) is
    its own key.
    """
    text = client_ip.split("%", 1)[0]  # a scope id says nothing about the client
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return client_ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    mask = mask4 if isinstance(addr, ipaddress.IPv4Address) else mask6
    mask = min(max(mask, 0), addr.max_prefixlen)
    return str(ipaddress.ip_network(f"{addr}/{mask}", strict=False))


class SourceTable:
    """Source-address persistence: key -> label with idle expiry and LRU eviction.

    Bounded like an HAProxy stick-table (``size``); an entry lives while its client keeps coming
    back within ``timeout`` seconds (``expire``). Entries are ordered by last use, so the oldest
    is always first: expiry and eviction are both pops from the front.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.size = max(size, 1)
        self.timeout = timeout
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            _, (_, seen) = next(iter(self._entries.items()))
            if now - seen <= self.timeout:
                break
            self._entries.popitem(last=False)

    def lookup(self, key: str, now: float) -> str | None:
        """The label for ``key`` if it was used within the timeout; a hit refreshes the entry."""
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries[key] = (entry[0], now)
        self._entries.move_to_end(key)
        return entry[0]

    def record(self, key: str, label: str, now: float) -> None:
        self._expire(now)
        self._entries[key] = (label, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def items(self) -> list[tuple[str, str, float]]:
        """(key, label, last seen) oldest first, for inspection."""
        return [(key, label, seen) for key, (label, seen) in self._entries.items()]
