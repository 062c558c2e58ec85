"""Health transitions: rise/fall hysteresis over check results, and passive failure reports.

A server that is UP goes DOWN after ``fall`` consecutive failed checks; a DOWN server comes back
after ``rise`` consecutive good ones (HAProxy ``rise``/``fall``). A refused or reset connect seen
by live traffic counts as one failed check at once, so a dead server leaves the rotation without
waiting for the checker (haproxy/haproxy#830).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from config.model import HealthCheck

from .state import Health, ServerState

# check_status codes, as in HAProxy's stats (check_status column).
L4OK = "L4OK"  # TCP connection established
L4TOUT = "L4TOUT"  # connect timed out
L4CON = "L4CON"  # connect failed (refused, reset, unreachable)
L6OK = "L6OK"  # TLS handshake completed (a TCP check of a server reached over TLS)
L6TOUT = "L6TOUT"  # connected, the TLS handshake did not finish in time
L6RSP = "L6RSP"  # the TLS handshake failed (certificate refused, or the server speaks no TLS)
L7OK = "L7OK"  # HTTP check passed
L7STS = "L7STS"  # HTTP status not the expected one
L7RSP = "L7RSP"  # invalid or unexpected response (body expectation, protocol error)
L7TOUT = "L7TOUT"  # connected, no response in time
PASSIVE = "PASSIVE"  # reported by live traffic, not by the checker


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    status: str  # one of the codes above
    desc: str  # the human cause: "connection refused", "timeout", "status 500 (expected 200)"
    duration: float | None  # seconds, None when not measured


def in_transition(state: ServerState) -> bool:
    """Some results already point the other way, but not yet ``rise``/``fall`` of them."""
    if state.health is Health.UP:
        return state.consecutive_fail > 0
    return state.consecutive_ok > 0


def next_check_delay(state: ServerState, check: HealthCheck) -> float:
    """Seconds from the start of one check to the start of the next.

    ``interval`` normally. While the server is in transition the pace quickens to
    ``interval - timeout`` (HAProxy's ``fastinter`` idea), so even checks that each run into the
    timeout (a pulled cable) reach ``fall`` results within ``fall * interval`` seconds of the
    server's death: the appliance's "gone within 6 seconds" with the 2 s / 3 defaults.
    """
    if in_transition(state) and check.timeout < check.interval:
        return check.interval - check.timeout
    return check.interval


def _message(state: ServerState, result: CheckResult) -> str:
    pool = state.pool
    left = pool.usable_count() if pool is not None else 0
    role = "fallback server" if state.is_fallback else "server"
    verb = "left" if state.health is Health.DOWN else "up"
    return (
        f"{role} {state.pool_name}/{state.label} is {state.health.value.upper()}: "
        f"{result.desc} ({result.status}), {left} active {verb}"
    )


def _transition(state: ServerState, health: Health, now: float) -> None:
    state.health = health
    state.counters.health_changed(health, now)


def apply_check(
    state: ServerState, result: CheckResult, check: HealthCheck, now: float
) -> str | None:
    """Record one check result; return the log line when the server changes health."""
    counters = state.counters
    counters.check_status = result.status
    counters.check_desc = result.desc
    counters.check_duration = result.duration
    if result.ok:
        state.consecutive_fail = 0
        state.consecutive_ok += 1
        if state.health is Health.DOWN and state.consecutive_ok >= max(check.rise, 1):
            _transition(state, Health.UP, now)
            return _message(state, result)
        return None
    state.consecutive_ok = 0
    state.consecutive_fail += 1
    counters.check_failures += state.health is Health.UP
    if state.health is Health.UP and state.consecutive_fail >= max(check.fall, 1):
        _transition(state, Health.DOWN, now)
        return _message(state, result)
    return None


def report_passive_failure(state: ServerState, now: float, cause: str) -> str | None:
    """A connect to ``state`` failed on live traffic (refused, reset, timed out).

    Counts like a failed check, so ``fall`` of them in a row take the server down. Without active
    checks nothing would ever bring it back, so then nothing changes. The caller counts the
    failed connect itself (``counters.failures_connect``); this function does not.
    """
    if not state.check.enabled:
        return None
    result = CheckResult(ok=False, status=PASSIVE, desc=cause, duration=None)
    state.consecutive_ok = 0
    state.consecutive_fail += 1
    if state.health is Health.UP and state.consecutive_fail >= max(state.check.fall, 1):
        _transition(state, Health.DOWN, now)
        return _message(state, result)
    return None


def describe_tls_error(error: BaseException | None) -> str:
    """The cause of a failed client handshake, for logs: OpenSSL's verify message when the
    server's certificate was refused."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {error.verify_message or error.reason}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    return f"TLS handshake failed: {error or 'connection closed'}"
