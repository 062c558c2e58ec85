"""HAProxy's server-state text (``show servers state``, ``server-state-file``), version 1. Pure.

The same text is the answer to ``show servers state`` and the content of ``global.state_file``;
loading it back applies what an operator changed at run time (admin state and weight) to the
servers that still exist, by pool name and label, like HAProxy's
``load-server-state-from-file global``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from balancing.state import Health, PoolState, ServerState
from config.model import AdminState

VERSION = "1"
COLUMNS = (
    "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port"
)

# srv_op_state (HAProxy enum srv_state) and srv_admin_state bits (enum srv_admin).
OP_STOPPED, OP_RUNNING = 0, 2
ADMIN_FORCED_MAINT, ADMIN_FORCED_DRAIN = 0x01, 0x08
# HAProxy enum healthcheck_status for the check results lbproxy records.
CHECK_STATUS = {"": 1, "L4OK": 6, "L4TOUT": 7, "L4CON": 8, "L7TOUT": 12, "L7RSP": 13}
CHECK_STATUS |= {"L6OK": 9, "L6TOUT": 10, "L6RSP": 11, "L7OK": 15, "L7STS": 17}
MAX_WEIGHT = 256  # HAProxy SRV_UWGHT_MAX


def admin_bits(admin: AdminState) -> int:
    if admin is AdminState.MAINT:
        return ADMIN_FORCED_MAINT
    if admin is AdminState.DRAIN:
        return ADMIN_FORCED_DRAIN
    return 0


def _line(
    pool_id: int, pool: str, server_id: int, state: ServerState, now: float, uptime: int
) -> str:
    c = state.counters
    # Never changed: as long as the process runs (last_change 0.0 is "never" on the trio clock).
    since = max(int(now - c.last_change), 0) if c.last_change else uptime
    op = OP_RUNNING if state.health is Health.UP else OP_STOPPED
    check = CHECK_STATUS.get(c.check_status, 0)
    check_state = 1 if state.check.enabled else 0
    health = state.consecutive_ok if op == OP_RUNNING else 0
    values = (
        pool_id,
        pool,
        server_id,
        state.label,
        state.address.host,
        op,
        admin_bits(state.admin),
        state.weight,
        state.server.weight,
        since,
        check,
        0,
        health,
        check_state,
        0,
        0,
        0,
        "-",
        state.address.port,
        "-",
        1 if state.server.tls is not None else 0,  # srv_use_ssl
        0,
        "-",
        "-",
        0,
    )
    return " ".join(str(v) for v in values)


def render(pools: Mapping[str, PoolState], now: float, uptime: int, only: str | None = None) -> str:
    """The version line, the ``# columns`` line, then one line per real server. ``now`` is
    the trio clock of the counters' last changes; ``uptime`` the process's, in seconds."""
    lines = [VERSION, "# " + COLUMNS]
    for pool_id, (name, pool) in enumerate(pools.items(), start=1):
        if only is not None and name != only:
            continue
        for server_id, state in enumerate(pool.servers, start=1):
            lines.append(_line(pool_id, name, server_id, state, now, uptime))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Saved:
    """One server's runtime changes as read from the file."""

    pool: str
    label: str
    admin: AdminState
    weight: int


def parse(text: str) -> tuple[list[Saved], list[str]]:
    """The entries of a state file, and one note per line that could not be read."""
    saved: list[Saved] = []
    notes: list[str] = []
    lines = text.splitlines()
    if not lines or lines[0].strip() != VERSION:
        return [], [f"not a version {VERSION} server-state file; ignored"]
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        try:
            admin_value = int(fields[6])
            weight = int(fields[7])
            pool, label = fields[1], fields[3]
        except (IndexError, ValueError):
            notes.append(f"line {number}: not a server-state line; ignored")
            continue
        if admin_value & ADMIN_FORCED_MAINT:
            admin = AdminState.MAINT
        elif admin_value & ADMIN_FORCED_DRAIN:
            admin = AdminState.DRAIN
        else:
            admin = AdminState.READY
        saved.append(Saved(pool, label, admin, min(max(weight, 0), MAX_WEIGHT)))
    return saved, notes


def apply(saved: list[Saved], pools: Mapping[str, PoolState], now: float) -> list[str]:
    """Apply saved admin states and weights; one log note per server changed or ignored."""
    notes: list[str] = []
    for entry in saved:
        pool = pools.get(entry.pool)
        state = pool.server(entry.label) if pool is not None else None
        if state is None:
            notes.append(
                f"server {entry.pool}/{entry.label} is not in the configuration any more; "
                "its saved state is ignored"
            )
            continue
        if state.admin is entry.admin and state.weight == entry.weight:
            continue
        state.set_admin(entry.admin, now)
        state.set_weight(entry.weight)
        notes.append(
            f"server {entry.pool}/{entry.label}: state {entry.admin.value}, "
            f"weight {entry.weight} restored"
        )
    return notes
