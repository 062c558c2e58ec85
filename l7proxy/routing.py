"""URL switching: pick the pool for a request (HAProxy use_backend rules, Pound Services)."""

from __future__ import annotations

from config.model import VirtualService

from .matching import RequestView, host_without_port, matches, path_of

__all__ = ["host_without_port", "path_of", "route"]


def route(vs: VirtualService, view: RequestView | None) -> str:
    """The name of the pool that serves this request: the first matching rule's, else the
    virtual server's own pool. ``view`` is None only when ``vs`` has no rules."""
    if view is None or not vs.rules:
        return vs.pool.name
    for rule in vs.rules:
        if matches(rule.condition, view):
            return rule.pool
    return vs.pool.name
