"""What a translator produces: virtual servers and pools in the YAML shape, with comments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .report import Where


@dataclass(slots=True)
class VirtualServerOut:
    data: dict[str, Any]  # the YAML mapping, without comments
    comment: str  # names the source lines
    rule_comments: list[str] = field(default_factory=list)  # one per entry of data["rules"]
    # Pound only: the addresses a pass-through listener forwards every request to (the
    # appliance's hop to HAProxy); None when it does anything more.
    forwards_to: list[str] | None = None
    xhttp_where: Where | None = None  # Pound only: the xHTTP line, or the listener's


@dataclass(slots=True)
class Translation:
    virtual_servers: list[VirtualServerOut] = field(default_factory=list)
    pools: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    global_: dict[str, Any] = field(default_factory=dict)


def put_nonempty(data: dict[str, Any], **items: Any) -> None:
    """Set the keys whose values are not empty: an empty list or mapping is the default."""
    data.update({key: value for key, value in items.items() if value})


def placeholder_pool() -> dict[str, Any]:
    """A pool for a virtual server whose requests HAProxy or Pound answered with 503 when no
    rule matched: its one server is in maintenance, so lbproxy answers 503 too."""
    return {
        "health_check": {"enabled": False},
        "real_servers": [{"label": "none", "address": "127.0.0.1:1", "state": "maint"}],
    }
