"""What a reload changed, in words for its log line: binds, virtual servers, real servers,
certificates. Pure: two configurations and what each TLS bind served, in; lines out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from config.model import ProxyConfig
from tls.status import CertificateStatus

# Per bind address: what it served, (path, subject, expiry) of each certificate.
Served = Mapping[str, Sequence[CertificateStatus]]


def _binds(config: ProxyConfig) -> set[str]:
    found = {f"{vs.label} {bind.address}" for vs in config.virtual_servers for bind in vs.binds}
    if config.global_.stats is not None:
        found.add(f"stats {config.global_.stats.bind}")
    return found


def _servers(config: ProxyConfig) -> set[str]:
    found: set[str] = set()
    for pool in config.all_pools():
        found.update(f"{pool.name}/{server.label}" for server in pool.real_servers)
        found.update(f"{pool.name}/{f.server.label}" for f in pool.fallbacks())
    return found


def _changed(what: str, old: set[str], new: set[str]) -> str | None:
    added, removed = sorted(new - old), sorted(old - new)
    if not added and not removed:
        return None
    parts = [f"+{name}" for name in added] + [f"-{name}" for name in removed]
    return f"{what}: {' '.join(parts)}"


def _certificates(old: Served, new: Served) -> str | None:
    changed: list[str] = []
    for bind, statuses in sorted(new.items()):
        before = {(s.path, s.subject, s.not_after) for s in old.get(bind, ())}
        for status in statuses:
            if (status.path, status.subject, status.not_after) not in before:
                changed.append(f"{bind} {status.subject} until {status.not_after:%Y-%m-%d}")
    return f"certificates: {', '.join(changed)}" if changed else None


def describe(old: ProxyConfig, new: ProxyConfig, old_served: Served, new_served: Served) -> str:
    """One line: what the reload changed, or that it changed nothing that is served."""
    parts = [
        _changed("binds", _binds(old), _binds(new)),
        _changed(
            "virtual servers",
            {vs.label for vs in old.virtual_servers},
            {vs.label for vs in new.virtual_servers},
        ),
        _changed("servers", _servers(old), _servers(new)),
        _certificates(old_served, new_served),
    ]
    said = [part for part in parts if part is not None]
    if not said:
        return "configuration reloaded: no bind, server or certificate changed"
    return "configuration reloaded: " + "; ".join(said)
