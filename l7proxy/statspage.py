"""The stats page as values: a ``Snapshot`` rendered to HTML, CSV and JSON. Pure.

The CSV has HAProxy's column names in HAProxy's order (management guide, "CSV format"), with a
FRONTEND and a BACKEND row per proxy, so scrapers written for HAProxy keep working.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from balancing.state import RESPONSE_CLASSES

from .statsrows import BACKEND, FRONTEND, SERVER, TYPE_CODES, CertificateRow, Row, Snapshot

# HAProxy's static stats fields 0..79, in order; a scraper may rely on positions.
CSV_COLUMNS = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout",
    "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act",
    "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid",
    "throttle", "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status",
    "check_code", "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
    "hrsp_5xx", "hrsp_other", "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt",
    "srv_abrt", "comp_in", "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk",
    "last_agt", "qtime", "ctime", "rtime", "ttime", "agent_status", "agent_code",
    "agent_duration", "check_desc", "agent_desc", "check_rise", "check_fall", "check_health",
    "agent_rise", "agent_fall", "agent_health", "addr", "cookie", "mode", "algo", "conn_rate",
    "conn_rate_max", "conn_tot",
)  # fmt: skip
PID = 1  # HAProxy's "relative process number": one process serves the page

_COLOURS = {"UP": "#c1ffc1", "DOWN": "#ffaaaa", "DRAIN": "#a0c0ff", "MAINT": "#cccccc"}
_KIND_COLOURS = {FRONTEND: "#d0e0ff", BACKEND: "#d0e0ff"}
# HAProxy's stats admin choices; "kill" is its "Kill Sessions": the connections being served by
# the server are closed now.
ACTIONS = ("ready", "drain", "maint", "weight", "kill")


def csv_cell(row: Row, column: str) -> object:
    if column == "type":
        return TYPE_CODES[row.kind]
    if column == "pid":
        return PID
    if column.startswith("hrsp_"):
        return row.hrsp.get(column.removeprefix("hrsp_"), 0)
    return getattr(row, column, None)


def render_csv(rows: Sequence[Row]) -> bytes:
    """HAProxy's ``show stat``: a ``# `` header line, then one line per row; each line ends
    with a comma, as HAProxy's do."""
    out = io.StringIO()
    out.write("# " + ",".join(CSV_COLUMNS) + ",\n")
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        values = [csv_cell(row, column) for column in CSV_COLUMNS]
        writer.writerow(["" if v is None else str(v).replace("\n", " ") for v in values] + [""])
    return out.getvalue().encode()


def json_row(row: Row) -> dict[str, object]:
    """A row with HAProxy's names, plus ``type``, ``pool`` and ``label`` (server rows also
    keep the names the JSON had before: ``total``, ``active``... and ``last_change`` in epoch
    seconds)."""
    data: dict[str, object] = dataclasses.asdict(row)
    data.update(type=row.kind, pool=row.pxname, label=row.svname, responses=dict(row.hrsp))
    if row.kind == SERVER:
        data.update(
            address=row.addr,
            total=row.stot,
            active=row.scur,
            max_active=row.smax,
            failures_connect=row.econ,
            failures_response=row.eresp,
            retries=row.wretr,
            redispatches=row.wredis,
            bytes_in=row.bin,
            bytes_out=row.bout,
            check_duration=None if row.check_duration is None else row.check_duration / 1000,
            check_status=row.check_status or "",
            check_desc=row.check_desc or "",
        )
    return data


def render_json(rows: Sequence[Row]) -> bytes:
    return json.dumps([json_row(r) for r in rows], default=str, indent=1).encode()


def duration(seconds: float) -> str:
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


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _cell(value: object) -> str:
    return f"<td>{_esc(value)}</td>"


@dataclass(frozen=True, slots=True)
class PageOptions:
    """What the page shows besides the counters."""

    base: str = "/"  # the page's path, where the forms post
    token: str | None = None  # the anti-forgery token; None: read-only, no action controls
    user: str | None = None  # who is logged in
    message: str | None = None  # the outcome of the last action


HEADS = (
    "name",
    "status",
    "since",
    "weight",
    "queue now/max",
    "sessions now/max/limit/total",
    "rate now/max",
    "bytes in",
    "bytes out",
    "denied",
    "errors req/conn/resp",
    "retries/redisp",
    *RESPONSE_CLASSES[1:5],
    "last check",
    "chkfail/chkdown",
    "downtime",
)


def _pair(*values: object) -> str:
    return " / ".join("-" if v is None else str(v) for v in values)


def _row_cells(row: Row) -> list[object]:
    check = f"{row.check_status or ''} {row.check_desc or ''}".strip() or None
    if check and row.check_duration is not None:
        check += f" ({row.check_duration} ms)"
    name = row.svname + (" (fallback)" if row.fallback else "")
    return [
        name,
        row.status,
        None if row.lastchg is None else duration(row.lastchg),
        row.weight,
        _pair(row.qcur, row.qmax),
        _pair(row.scur, row.smax, row.slim, row.stot),
        _pair(row.rate, row.rate_max),
        row.bin,
        row.bout,
        row.dreq,
        _pair(row.ereq, row.econ, row.eresp),
        _pair(row.wretr, row.wredis),
        *(row.hrsp.get(c, 0) for c in RESPONSE_CLASSES[1:5]),
        check,
        _pair(row.chkfail, row.chkdown) if row.kind == SERVER else None,
        None if row.downtime is None else duration(row.downtime),
    ]


def _row_html(row: Row, options: PageOptions) -> str:
    if row.kind == SERVER:
        colour = _COLOURS.get(row.status, "#ffffff")
        if row.fallback and row.status == "UP":
            colour = "#ffe8a0"
    else:
        colour = _KIND_COLOURS[row.kind]
    cells = "".join(map(_cell, _row_cells(row)))
    select = ""
    if options.token is not None:
        select = "<td></td>"
        if row.kind == SERVER:
            name = _esc(row.svname)
            buttons = "".join(
                f'<button type="submit" name="one" value="{name}|{a}">{a}</button>'
                for a in ACTIONS[:3]
            )
            select = (
                f'<td class="act"><input type="checkbox" name="s" value="{name}" '
                f'id="{_esc(row.pxname)}/{name}">{buttons}</td>'
            )
    ident = f"{row.pxname}/{row.svname}"
    return f'<tr style="background:{colour}" data-row="{_esc(ident)}">{select}{cells}</tr>'


def _pool_form(pxname: str, rows: list[Row], options: PageOptions) -> str:
    """One table per proxy; with actions, a form posting the selection (HAProxy's
    ``stats admin``)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in HEADS)
    body = "".join(_row_html(r, options) for r in rows)
    table_head = f"<tr>{'<th>action</th>' if options.token else ''}{head}</tr>"
    table = f"<table>{table_head}{body}</table>"
    title = f"<h2>{_esc(pxname)}</h2>"
    if options.token is None or not any(r.kind == SERVER for r in rows):
        return title + table
    choices = "".join(f'<option value="{a}">{a}</option>' for a in ACTIONS)
    return (
        f'{title}<form method="post" action="{_esc(options.base)}" '
        f'id="form-{_esc(pxname)}">'
        f'<input type="hidden" name="token" value="{_esc(options.token)}">'
        f'<input type="hidden" name="b" value="{_esc(pxname)}">{table}'
        f'<p>Selected servers: <select name="action">{choices}</select> '
        '<input type="number" name="weight" min="0" max="256" placeholder="weight" size="5"> '
        '<button type="submit" name="apply" value="1">Apply</button></p></form>'
    )


def _certificates_html(certs: Sequence[CertificateRow]) -> str:
    if not certs:
        return ""
    lines = []
    for cert in certs:
        left = "EXPIRED" if cert.expired else f"{cert.days_left} days"
        colour = "#ffaaaa" if cert.expired else "#ffe8a0" if cert.days_left < 30 else "#c1ffc1"
        cells = "".join(
            map(
                _cell,
                [
                    cert.proxy,
                    cert.bind,
                    cert.subject,
                    cert.source,
                    cert.not_after.strftime("%Y-%m-%d %H:%M UTC"),
                    left,
                ],
            )
        )
        lines.append(f'<tr style="background:{colour}">{cells}</tr>')
    heads = ("virtual server", "bind", "subject", "file", "expires", "left")
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<h2>Certificates</h2><table><tr>{head}</tr>{''.join(lines)}</table>"


def render_html(
    snapshot: Snapshot, options: PageOptions | None = None, *, title: str = "lbproxy statistics"
) -> bytes:
    options = options or PageOptions()
    groups: dict[str, list[Row]] = {}
    for row in snapshot.rows:
        groups.setdefault(row.pxname, []).append(row)
    started = datetime.datetime.fromtimestamp(snapshot.started, datetime.UTC)
    facts = (
        f"lbproxy {_esc(snapshot.version)}, pid {snapshot.pid}, "
        f"up {duration(snapshot.uptime)} (since {started:%Y-%m-%d %H:%M:%S} UTC)"
    )
    if options.user:
        facts += f"; logged in as {_esc(options.user)}"
    message = f'<p class="msg">{_esc(options.message)}</p>' if options.message else ""
    refresh = "" if options.token else "<meta http-equiv='refresh' content='5'>"
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"{refresh}<title>{_esc(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;font-size:13px}"
        ".msg{background:#ffe8a0;padding:4px}.act{white-space:nowrap}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>{facts}</p>{message}"
        + "".join(_pool_form(name, rows, options) for name, rows in groups.items())
        + _certificates_html(snapshot.certificates)
        + "<p>Also as <a href='?csv'>CSV</a>, <a href='?json'>JSON</a> and "
        "<a href='metrics'>Prometheus metrics</a>.</p></body></html>"
    )
    return page.encode()
