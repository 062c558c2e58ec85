"""The stats page as values: rows of server state rendered to HTML, CSV and JSON. Pure.

Rows come from ``PoolState.statistics()``; ``now`` (the trio clock, the same clock as
``last_change``) turns the time of the last state change into "for how long".
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

COLUMNS = (
    "pool",
    "label",
    "address",
    "status",
    "weight",
    "active",
    "max_active",
    "total",
    "failures_connect",
    "failures_response",
    "retries",
    "redispatches",
    "bytes_out",
    "check_status",
    "check_desc",
)
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

_COLOURS = {"UP": "#c1ffc1", "DOWN": "#ffaaaa", "DRAIN": "#a0c0ff", "MAINT": "#cccccc"}


def _responses(row: dict[str, object]) -> dict[str, object]:
    value = row.get("responses")
    return value if isinstance(value, dict) else {}


def render_csv(rows: Sequence[dict[str, object]]) -> bytes:
    """One line per server, like HAProxy's ``show stat``: a ``# `` header line, then values."""
    names = [*COLUMNS, *(f"hrsp_{c}" for c in RESPONSE_CLASSES)]
    lines = ["# " + ",".join(names)]
    for row in rows:
        values = [str(row.get(col, "")) for col in COLUMNS]
        values += [str(_responses(row).get(c, 0)) for c in RESPONSE_CLASSES]
        lines.append(",".join(v.replace(",", ";").replace("\n", " ") for v in values))
    return ("\n".join(lines) + "\n").encode()


def render_json(rows: Sequence[dict[str, object]]) -> bytes:
    return json.dumps(list(rows), default=str, indent=1).encode()


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def render_html(
    rows: Sequence[dict[str, object]], *, now: float, title: str = "lbproxy statistics"
) -> bytes:
    heads = (
        "pool",
        "server",
        "address",
        "status",
        "since",
        "weight",
        "active / max",
        "requests",
        *RESPONSE_CLASSES[1:5],
        "connect errors",
        "response errors",
        "retries",
        "redispatches",
        "bytes out",
        "last check",
    )
    body = []
    for row in rows:
        status = str(row.get("status"))
        colour = _COLOURS.get(status, "#ffffff")
        label = str(row.get("label"))
        if row.get("fallback"):
            label += " (fallback)"
            colour = "#ffe8a0" if status == "UP" else colour
        last_change = row.get("last_change")
        since = _duration(now - last_change) if isinstance(last_change, int | float) else "-"
        duration = row.get("check_duration")
        check = f"{row.get('check_status') or '-'} {row.get('check_desc') or ''}".strip()
        if isinstance(duration, int | float):
            check += f" ({duration * 1000:.0f} ms)"
        responses = _responses(row)
        cells = [
            row.get("pool"),
            label,
            row.get("address"),
            status,
            since,
            row.get("weight"),
            f"{row.get('active')} / {row.get('max_active')}",
            row.get("total"),
            *(responses.get(c, 0) for c in RESPONSE_CLASSES[1:5]),
            row.get("failures_connect"),
            row.get("failures_response"),
            row.get("retries"),
            row.get("redispatches"),
            row.get("bytes_out"),
            check,
        ]
        body.append(f'<tr style="background:{colour}">{"".join(map(_cell, cells))}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='5'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;font-size:13px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{head}</tr>{''.join(body)}</table>"
        "<p>Refreshes every 5 s. Also as <a href='?csv'>CSV</a> and <a href='?json'>JSON</a>."
        "</p></body></html>"
    )
    return page.encode()
