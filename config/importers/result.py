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
