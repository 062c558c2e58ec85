"""Prometheus text exposition (format 0.0.4) from a stats ``Snapshot``. Pure.

Names and labels are those of HAProxy's built-in exporter where a counter maps
(``haproxy_frontend_*``, ``haproxy_backend_*``, ``haproxy_server_*`` with ``proxy`` and
``server`` labels; one ``haproxy_server_status`` series per state), so dashboards and alerts
written for HAProxy keep working. lbproxy's own counters are ``lbproxy_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from balancing.state import RESPONSE_CLASSES

from .statsrows import BACKEND, FRONTEND, SERVER, Row, Snapshot

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

SERVER_STATES = ("DOWN", "UP", "MAINT", "DRAIN", "NOLB")  # HAProxy's exporter, 2.4+
PROXY_STATES = ("DOWN", "UP")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]


def escape_label(value: str) -> str:
    """Backslash, double quote and newline escaped, as the text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: tuple[Sample, ...]

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
            series = f"{self.name}{{{inner}}}" if inner else self.name
            lines.append(f"{series} {_number(value)}")
        return "\n".join(lines) + "\n"


RowValue = Callable[[Row], "float | None"]

# (name suffix, kind, help, value); names as HAProxy's exporter spells them (its "alt names").
_PROXY_METRICS: tuple[tuple[str, str, str, RowValue], ...] = (
    ("current_queue", "gauge", "Number of current queued requests.", lambda r: r.qcur),
    ("max_queue", "gauge", "Highest value of queued requests.", lambda r: r.qmax),
    ("current_sessions", "gauge", "Number of current sessions.", lambda r: r.scur),
    ("max_sessions", "gauge", "Highest value of current sessions.", lambda r: r.smax),
    ("limit_sessions", "gauge", "Configured session limit.", lambda r: r.slim),
    ("sessions_total", "counter", "Total number of sessions.", lambda r: r.stot),
    ("bytes_in_total", "counter", "Total number of request bytes.", lambda r: r.bin),
    ("bytes_out_total", "counter", "Total number of response bytes.", lambda r: r.bout),
    ("current_session_rate", "gauge", "Sessions over the last second.", lambda r: r.rate),
    ("max_session_rate", "gauge", "Highest sessions per second seen.", lambda r: r.rate_max),
    ("requests_denied_total", "counter", "Total number of denied requests.", lambda r: r.dreq),
    ("request_errors_total", "counter", "Total number of invalid requests.", lambda r: r.ereq),
    ("connection_errors_total", "counter", "Failed connections to servers.", lambda r: r.econ),
    ("response_errors_total", "counter", "Invalid responses from servers.", lambda r: r.eresp),
    ("retry_warnings_total", "counter", "Server connection retries.", lambda r: r.wretr),
    ("redispatch_warnings_total", "counter", "Server redispatches.", lambda r: r.wredis),
    ("http_requests_total", "counter", "Total number of HTTP requests.", lambda r: r.req_tot),
    ("http_requests_rate_max", "gauge", "Highest HTTP request rate.", lambda r: r.req_rate_max),
    ("weight", "gauge", "Effective weight.", lambda r: r.weight),
    ("active_servers", "gauge", "Active UP servers with a non-zero weight.", lambda r: r.act),
    ("backup_servers", "gauge", "Backup (fallback) servers UP.", lambda r: r.bck),
    ("check_failures_total", "counter", "Failed health checks while UP.", lambda r: r.chkfail),
    ("check_up_down_total", "counter", "UP to DOWN transitions.", lambda r: r.chkdown),
    ("check_last_change_seconds", "gauge", "Seconds since last change.", lambda r: r.lastchg),
    ("downtime_seconds_total", "counter", "Total time spent DOWN.", lambda r: r.downtime),
    ("loadbalanced_total", "counter", "Times a server was selected.", lambda r: r.lbtot),
    ("check_duration_seconds", "gauge", "Duration of the last health check.",
     lambda r: None if r.check_duration is None else r.check_duration / 1000),
)  # fmt: skip

_PREFIX = {FRONTEND: "haproxy_frontend_", BACKEND: "haproxy_backend_", SERVER: "haproxy_server_"}


def _labels(row: Row) -> Labels:
    if row.kind == SERVER:
        return (("proxy", row.pxname), ("server", row.svname))
    return (("proxy", row.pxname),)


def _families(rows: Sequence[Row]) -> Iterable[Family]:
    for kind in (FRONTEND, BACKEND, SERVER):
        mine = [r for r in rows if r.kind == kind]
        prefix = _PREFIX[kind]
        states = SERVER_STATES if kind == SERVER else PROXY_STATES
        yield Family(
            prefix + "status",
            "gauge",
            "Current status: 1 for the series whose state label it is in, else 0.",
            tuple(
                ((*_labels(r), ("state", state)), 1.0 if _state(r) == state else 0.0)
                for r in mine
                for state in states
            ),
        )
        for suffix, metric_kind, text, value in _PROXY_METRICS:
            samples = []
            for r in mine:
                v = value(r)
                if v is not None:
                    samples.append((_labels(r), float(v)))
            if samples:
                yield Family(prefix + suffix, metric_kind, text, tuple(samples))
        yield Family(
            prefix + "http_responses_total",
            "counter",
            "Total number of HTTP responses, by status class.",
            tuple(
                ((*_labels(r), ("code", code)), float(r.hrsp.get(code, 0)))
                for r in mine
                for code in RESPONSE_CLASSES
            ),
        )


def _state(row: Row) -> str:
    if row.kind != SERVER:
        return "UP" if row.status in ("UP", "OPEN") else "DOWN"
    return row.status


def _own_families(snapshot: Snapshot) -> Iterable[Family]:
    servers = [r for r in snapshot.rows if r.kind == SERVER]
    yield Family(
        "lbproxy_server_redispatches_total",
        "counter",
        "Requests taken from this server to another one because it could not serve them.",
        tuple((_labels(r), float(r.wredis or 0)) for r in servers),
    )
    yield Family(
        "lbproxy_server_health_transitions_total",
        "counter",
        "Health state changes of this server (UP to DOWN and DOWN to UP).",
        tuple((_labels(r), float(r.health_transitions or 0)) for r in servers),
    )
    if snapshot.certificates:
        yield Family(
            "lbproxy_certificate_expiry_seconds",
            "gauge",
            "Seconds until the certificate expires; negative once it has.",
            tuple(
                (
                    (("proxy", c.proxy), ("bind", c.bind), ("subject", c.subject)),
                    round(c.seconds_left),
                )
                for c in snapshot.certificates
            ),
        )
    yield Family(
        "haproxy_process_start_time_seconds",
        "gauge",
        "Start time of the process, in seconds since the epoch.",
        (((), float(int(snapshot.started))),),
    )
    yield Family(
        "lbproxy_build_info",
        "gauge",
        "The running version.",
        (((("version", snapshot.version),), 1.0),),
    )


def render(snapshot: Snapshot) -> bytes:
    families = [*_families(snapshot.rows), *_own_families(snapshot)]
    return "".join(f.render() for f in families if f.samples).encode()
