"""Tables and ratios from the measurements (pure: values in, text out)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen import Result

# Issue 4: new TLS handshakes per second at least three quarters of HAProxy's.
HANDSHAKE_TARGET = 0.75
# Busy time on the server's core beyond the server's own CPU time: kernel softirq work for
# loopback traffic accounts for a few percent; above this, another process shared the core.
SHARED_CORE_THRESHOLD = 0.25
SERVER_CORE = 0

CASE_TITLES = {
    "plain": "plain HTTP, keep-alive",
    "tls": "HTTPS, keep-alive (RSA-2048 certificate)",
    "handshake": "new connection and full TLS handshake per request (Connection: close)",
    "resumed": "new connection per request, TLS session resumed (Connection: close)",
}


@dataclass(frozen=True)
class Row:
    case: str  # plain | tls | handshake | resumed
    variant: str  # the file size, or for handshakes the key type
    target: str  # direct | lbproxy | lbproxy-log | haproxy | pound | nginx
    result: Result | None = None
    cpu_seconds: float = 0.0  # of the measured server process and its children
    note: str = ""  # why there is no result, or what went wrong
    # Busy fraction of every CPU during the run: with the server's own share it tells which
    # core was the limit, and whether something else ran on the server's core.
    cores: tuple[float, ...] = ()

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.result is None or self.result.requests == 0:
            return None
        return self.cpu_seconds * 1e6 / self.result.requests

    @property
    def cpu_share(self) -> float | None:
        """CPU seconds per wall second: near 1.0 means the server's core was the bottleneck."""
        if self.result is None or self.result.seconds <= 0:
            return None
        return self.cpu_seconds / self.result.seconds

    @property
    def other_on_server_core(self) -> float | None:
        """Share of the server's core used by something else (other processes, softirq)."""
        share = self.cpu_share
        if share is None or len(self.cores) <= SERVER_CORE:
            return None
        return max(0.0, self.cores[SERVER_CORE] - share)

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "case": self.case,
            "variant": self.variant,
            "target": self.target,
            "note": self.note,
        }
        if self.result is not None:
            data.update(
                requests_per_second=round(self.result.rps, 1),
                requests=self.result.requests,
                p50_us=self.result.p50_us,
                p99_us=self.result.p99_us,
                socket_errors=self.result.socket_errors,
                bad_status=self.result.bad_status,
                error_detail=self.result.error_detail,
                cpu_us_per_request=self.cpu_us_per_request,
                cpu_share=self.cpu_share,
                cores_busy=list(self.cores),
            )
        return data


def latency(us: float) -> str:
    """wrk-style units: microseconds below 1 ms, milliseconds below 1 s, else seconds."""
    if us < 1000:
        return f"{us:.0f}us"
    if us < 1_000_000:
        return f"{us / 1000:.2f}ms"
    return f"{us / 1_000_000:.2f}s"


def _cell(row: Row) -> list[str]:
    if row.result is None:
        return [row.variant, row.target, "-", "-", "-", "-", "-", "-", "-", row.note]
    res = row.result
    per_req = row.cpu_us_per_request
    share = row.cpu_share
    return [
        row.variant,
        row.target,
        f"{res.rps:,.0f}",
        latency(res.p50_us),
        latency(res.p99_us),
        str(res.errors),
        "-" if per_req is None else f"{per_req:.1f}",
        "-" if share is None else f"{share * 100:.0f}%",
        "/".join(f"{c * 100:.0f}" for c in row.cores) + "%" if row.cores else "-",
        "; ".join(filter(None, [row.note, _error_note(res), _shared_note(row)])),
    ]


def _error_note(result: Result) -> str:
    return f"errors: {result.error_detail}" if result.error_detail else ""


def _shared_note(row: Row) -> str:
    other = row.other_on_server_core
    if other is None or other <= SHARED_CORE_THRESHOLD:
        return ""
    return f"core {SERVER_CORE} shared: {other * 100:.0f}% other work"


HEADER = [
    "size/key",
    "server",
    "req/s",
    "p50",
    "p99",
    "errors",
    "CPU us/req",
    "CPU",
    "cores busy",
    "note",
]
RIGHT = {2, 3, 4, 5, 6, 7, 8}


def table(rows: list[Row]) -> str:
    cells = [HEADER] + [_cell(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = []
    for line in cells:
        parts = [
            text.rjust(widths[i]) if i in RIGHT else text.ljust(widths[i])
            for i, text in enumerate(line)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _find(rows: list[Row], variant: str, target: str) -> Row | None:
    for row in rows:
        if row.variant == variant and row.target == target and row.result is not None:
            return row
    return None


def ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    """req/s of numerator over denominator, when both ran and the denominator did work."""
    if numerator is None or denominator is None:
        return None
    assert numerator.result is not None
    assert denominator.result is not None
    if denominator.result.rps == 0:
        return None
    return numerator.result.rps / denominator.result.rps


def capacity_ratio(ours: Row | None, theirs: Row | None) -> float | None:
    """Requests per CPU second of ours over theirs: the req/s ratio if both had a whole core
    to themselves, so it holds even when the client or another process was the limit."""
    if ours is None or theirs is None:
        return None
    mine, other = ours.cpu_us_per_request, theirs.cpu_us_per_request
    if mine is None or other is None or mine == 0:
        return None
    return other / mine


def _two(value: float) -> str:
    """Two decimals, rounded down: a printed 0.75 never hides a 0.747 that misses the target."""
    return f"{math.floor(value * 100 + 1e-9) / 100:.2f}"  # 1e-9: 0.29 * 100 is 28.999...


def _verdict(value: float) -> str:
    return "meets" if value >= HANDSHAKE_TARGET else "below"


# Every lbproxy line is compared with these, when they ran; lbproxy-log also with lbproxy (the
# cost of the access log).
OURS = {
    "lbproxy": ("direct", "haproxy", "pound", "nginx"),
    "lbproxy-log": ("lbproxy", "direct", "haproxy", "pound", "nginx"),
}


def _ratio_text(case: str, ours: Row, theirs: Row) -> str | None:
    value = ratio(ours, theirs)
    if value is None:
        return None
    flawed = ours.result is not None and ours.result.errors > 0
    flawed = flawed or (theirs.result is not None and theirs.result.errors > 0)
    mark = "*" if flawed else ""
    disturbed = bool(_shared_note(ours) or _shared_note(theirs))
    text = f"{ours.target}/{theirs.target} {_two(value)}{mark}{'~' if disturbed else ''}"
    per_cpu = capacity_ratio(ours, theirs)
    if per_cpu is not None:
        text += f" (per CPU {_two(per_cpu)}{mark})"
    if case == "handshake" and theirs.target == "haproxy":
        verdicts = [] if disturbed else [f"req/s {_verdict(value)}"]
        if per_cpu is not None:
            verdicts.append(f"per CPU {_verdict(per_cpu)}")
        text += f" [target {HANDSHAKE_TARGET}: {', '.join(verdicts) or 'no verdict'}]"
    return text


def ratio_lines(case: str, rows: list[Row]) -> list[str]:
    """``lbproxy/X`` for every other server, per size or key type and per lbproxy line (access
    log off, and on), by req/s and by CPU time per request; only figures of ``rows``, which
    come from one run. A '*' marks a ratio built from a run with errors."""
    lines = []
    variants = list(dict.fromkeys(row.variant for row in rows))
    for variant in variants:
        present = [t for t in OURS if any(r.variant == variant and r.target == t for r in rows)]
        for target in present or ["lbproxy"]:
            ours = _find(rows, variant, target)
            if ours is None:
                lines.append(f"  {variant}: no {target} figure")
                continue
            parts = [_ratio_text(case, ours, theirs) for theirs in _others(rows, variant, target)]
            texts = [text for text in parts if text is not None]
            if texts:
                lines.append(f"  {variant}: " + ", ".join(texts))
    return lines


def _others(rows: list[Row], variant: str, target: str) -> list[Row]:
    found = (_find(rows, variant, other) for other in OURS[target])
    return [row for row in found if row is not None]


def render(rows: list[Row], *, seconds: float, connections: int) -> str:
    out = []
    for case, title in CASE_TITLES.items():
        selected = [row for row in rows if row.case == case]
        if not selected:
            continue
        out.append(f"== {title}: wrk -t1 -c{connections} -d{seconds:g}s ==")
        out.append(table(selected))
        out.append("ratios (req/s; in brackets requests per CPU second):")
        out.extend(ratio_lines(case, selected) or ["  none (lbproxy or the others missing)"])
        out.append("")
    if any(row.target == "lbproxy-log" for row in rows):
        out.append(
            "lbproxy-log: lbproxy with its access log on (its default), to a file; "
            "lbproxy: access log off"
        )
    if any(_shared_note(row) for row in rows):
        out.append(
            f"core {SERVER_CORE} shared: the server's core was busy beyond the server's own CPU "
            "time (other processes, or kernel network work not charged to it): that req/s is "
            "understated, CPU us/req still holds"
        )
        out.append("~ a req/s ratio from a run whose server core was shared: read the per CPU one")
    if any(row.result is not None and row.result.errors for row in rows):
        out.append("* a run had errors (socket errors or non-2xx answers): its req/s is suspect")
    return "\n".join(out)


def _key(entry: dict[str, object]) -> tuple[str, str, str]:
    return (str(entry.get("case")), str(entry.get("variant")), str(entry.get("target")))


def _number(entry: dict[str, object] | None, name: str) -> float | None:
    value = None if entry is None else entry.get(name)
    return float(value) if isinstance(value, int | float) else None


def _change(old: float | None, new: float | None, digits: int) -> str:
    if old is None or new is None:
        return "-"
    percent = f" ({(new - old) / old * 100:+.0f}%)" if old else ""
    return f"{old:,.{digits}f} -> {new:,.{digits}f}{percent}"


def compare(old: list[dict[str, object]], new: list[dict[str, object]]) -> str:
    """Two BENCH_JSON files side by side: req/s and CPU us/req of every line in either."""
    before = {_key(entry): entry for entry in old}
    after = {_key(entry): entry for entry in new}
    keys = list(dict.fromkeys([*before, *after]))
    cells = [["case", "size/key", "server", "req/s", "CPU us/req"]]
    for key in keys:
        was, now = before.get(key), after.get(key)
        cells.append(
            [
                *key,
                _change(
                    _number(was, "requests_per_second"), _number(now, "requests_per_second"), 0
                ),
                _change(_number(was, "cpu_us_per_request"), _number(now, "cpu_us_per_request"), 1),
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(text.ljust(widths[i]) for i, text in enumerate(line)).rstrip() for line in cells
    )
