"""URL switching: pick the pool for a request (HAProxy use_backend rules, Pound Services)."""

from __future__ import annotations

from config.model import Rule, VirtualService

Headers = list[tuple[bytes, bytes]]


def host_without_port(host: bytes) -> str:
    """Lower-case host name of a Host header value, without port or trailing dot."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        return text[: end + 1] if end != -1 else text
    name, _, _ = text.partition(":")
    return name.rstrip(".")


def host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def path_of(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    if path.startswith((b"http://", b"https://")):  # absolute-form: keep only the path
        scheme_end = path.find(b"//") + 2
        slash = path.find(b"/", scheme_end)
        path = path[slash:] if slash != -1 else b"/"
    return path.decode("latin-1")


def rule_matches(rule: Rule, host: str, path: str, headers: Headers) -> bool:
    if rule.host is not None and not host_matches(rule.host, host):
        return False
    if rule.path_prefix is not None and not path.startswith(rule.path_prefix):
        return False
    if rule.path_regex is not None and rule.path_regex.search(path) is None:
        return False
    if rule.header is not None:
        name = rule.header.name.encode("latin-1")
        values = [v for n, v in headers if n == name]
        if not values:
            return False
        if rule.header.value is not None:
            wanted = rule.header.value.encode("latin-1")
            if not any(v.strip() == wanted for v in values):
                return False
    return True


def route(vs: VirtualService, target: bytes, headers: Headers) -> str:
    """The name of the pool that serves this request: the first matching rule's, else the
    virtual server's own pool."""
    if not vs.rules:
        return vs.pool.name
    host = b""
    for name, value in headers:
        if name == b"host":
            host = value
            break
    host_name = host_without_port(host)
    path = path_of(target)
    for rule in vs.rules:
        if rule_matches(rule, host_name, path, headers):
            return rule.pool
    return vs.pool.name
