"""The stats page as values: rows of server state rendered to HTML, CSV and JSON. Pure."""

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
    "bytes_out",
    "check_status",
    "check_desc",
)

_COLOURS = {"UP": "#c1ffc1", "DOWN": "#ffaaaa", "DRAIN": "#a0c0ff", "MAINT": "#cccccc"}


def render_csv(rows: Sequence[dict[str, object]]) -> bytes:
    lines = ["# " + ",".join(COLUMNS)]
    for row in rows:
        lines.append(",".join(str(row.get(col, "")).replace(",", ";") for col in COLUMNS))
    return ("\n".join(lines) + "\n").encode()


def render_json(rows: Sequence[dict[str, object]]) -> bytes:
    return json.dumps(list(rows), default=str, indent=1).encode()


def render_html(rows: Sequence[dict[str, object]], title: str = "lbproxy statistics") -> bytes:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        colour = _COLOURS.get(str(row.get("status")), "#ffffff")
        if row.get("fallback"):
            colour = "#ffe8a0" if row.get("status") == "UP" else colour
        cells = "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in COLUMNS)
        body.append(f'<tr style="background:{colour}">{cells}</tr>')
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='5'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;font-size:13px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{head}</tr>{''.join(body)}</table>"
        "<p>Also as <a href='?csv'>CSV</a> and <a href='?json'>JSON</a>.</p></body></html>"
    )
    return page.encode()
