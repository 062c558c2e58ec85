"""What the master and its worker processes tell each other, as values (docs/operations.md,
"Worker processes"; docs/architecture.md, "Worker processes").

Frames on the link are a 4-byte big-endian length and a payload whose first byte says what it
is: ``P`` a pickled ``ProxyConfig`` (from the master, a trusted parent, only), ``J`` one JSON
object. The master sends the servers' health, admin state and weight (``server_states``); the
workers apply them (``apply_states``) and send their counters back (``snapshot``), which the
master adds up over every worker, living and gone (``CounterSums``).
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from balancing.state import Health, PoolState, RateCounter, ServerState
from config.model import AdminState, ProxyConfig

from .runtime import Runtime

HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # a config or a snapshot is KiBs; more means a broken link
CONFIG = b"P"
MESSAGE = b"J"

# Message types ("t" in a JSON frame).
READY = "ready"  # worker -> master: bound, serving
STATES = "states"  # master -> worker: [[pool, label, fallback, health, admin, weight], ...]
COUNTERS = "counters"  # worker -> master: a snapshot (below)

# Counter fields the master owns itself (the health checks run there): never summed.
MASTER_OWNED = frozenset(
    {
        "check_status",
        "check_desc",
        "check_duration",
        "last_change",
        "check_failures",
        "down_transitions",
        "health_transitions",
        "downtime",
        "down_since",
    }
)
GAUGES = frozenset({"active", "current"})  # what is open now: a dead worker's count ends
PEAKS = frozenset({"max_active", "max"})  # the most at once: workers' peaks added up (a bound)


class FrameError(Exception):
    """The link carried something that is not a frame: the peer is broken."""


def encode_config(config: ProxyConfig) -> bytes:
    payload = CONFIG + pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def encode_message(message: dict[str, Any]) -> bytes:
    payload = MESSAGE + json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


@dataclass
class FrameReader:
    """Bytes in, whole frames out: ``(CONFIG, ProxyConfig)`` or ``(MESSAGE, dict)``."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[bytes, Any]]:
        self.buffer += data
        frames: list[tuple[bytes, Any]] = []
        while len(self.buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.buffer)
            if not 0 < length <= MAX_FRAME:
                raise FrameError(f"frame of {length} bytes")
            if len(self.buffer) < HEADER.size + length:
                break
            payload = bytes(self.buffer[HEADER.size : HEADER.size + length])
            del self.buffer[: HEADER.size + length]
            kind, body = payload[:1], payload[1:]
            if kind == CONFIG:
                frames.append((CONFIG, pickle.loads(body)))
            elif kind == MESSAGE:
                frames.append((MESSAGE, json.loads(body)))
            else:
                raise FrameError(f"unknown frame kind {kind!r}")
        return frames


# ---- health, admin state and weight: master -> workers -----------------------------------------


def server_states(pools: dict[str, PoolState]) -> list[list[Any]]:
    """Every server's health, admin state and weight, as the master sees them."""
    return [
        [name, s.label, s.is_fallback, s.health.value, s.admin.value, s.weight]
        for name, pool in pools.items()
        for s in pool.all_states()
    ]


def _find(pools: dict[str, PoolState], name: str, label: str, fallback: bool) -> ServerState | None:
    pool = pools.get(name)
    if pool is None:
        return None
    return pool.fallback if fallback else pool.server(label)


def apply_states(
    pools: dict[str, PoolState], states: Iterable[list[Any]], now: float
) -> list[ServerState]:
    """Take the master's view into a worker's states; returns the servers that went DOWN here
    (their waiting requests are cut, as in one process). Unknown servers (a worker still on the
    previous configuration) are skipped."""
    went_down: list[ServerState] = []
    for name, label, fallback, health, admin, weight in states:
        state = _find(pools, name, label, fallback)
        if state is None:
            continue
        new_health = Health(health)
        if new_health is not state.health:
            state.health = new_health
            state.counters.last_change = now
            if new_health is Health.DOWN:
                went_down.append(state)
        new_admin = AdminState(admin)
        if new_admin is not state.admin:
            state.set_admin(new_admin, now)
        state.set_weight(int(weight))
    return went_down


# ---- counters: workers -> master -----------------------------------------------------------------


def _fields(counters: object) -> dict[str, Any]:
    """The summable fields of one counters object: ints, dicts of ints, rates as
    ``[rate, peak]``. Fields added to the counters later are carried without a change here."""
    out: dict[str, Any] = {}
    for f in fields(counters):  # type: ignore[arg-type]
        if f.name in MASTER_OWNED:
            continue
        value = getattr(counters, f.name)
        if type(value) is int:
            out[f.name] = value
        elif isinstance(value, dict) and all(type(v) is int for v in value.values()):
            out[f.name] = dict(value)
        elif isinstance(value, RateCounter):
            out[f.name] = [value.rate(), value.peak()]
    return out


def server_key(state: ServerState) -> str:
    return f"{state.pool_name}/{state.label}/{'f' if state.is_fallback else 's'}"


def snapshot(runtime: Runtime) -> dict[str, Any]:
    """One worker's counters, keyed by virtual server, server and pool."""
    return {
        "frontends": {label: _fields(c) for label, c in runtime.frontends.items()},
        "servers": {
            server_key(s): _fields(s.counters)
            for pool in runtime.pools.values()
            for s in pool.all_states()
        },
        "pools": {
            name: {"active": p.active, "max_active": p.max_active}
            for name, p in runtime.pools.items()
        },
        "connections": {"current": runtime.connections},
    }


def _add(total: dict[str, Any], part: dict[str, Any], *, finished: bool) -> None:
    """Add one snapshot section into ``total``. A ``finished`` worker's gauges, peaks and rates
    are left out: it has nothing open and no rate any more."""
    for name, value in part.items():
        if finished and (name in GAUGES or name in PEAKS or isinstance(value, list)):
            continue
        if isinstance(value, dict):
            _add(total.setdefault(name, {}), value, finished=finished)
        elif isinstance(value, list):
            old = total.get(name, [0, 0])
            total[name] = [old[0] + value[0], old[1] + value[1]]
        else:
            total[name] = total.get(name, 0) + value


@dataclass(slots=True)
class SummedRate(RateCounter):
    """A rate the workers measured, added up by the master: stats read it like any rate."""

    summed: int = 0
    summed_peak: int = 0

    def rate(self, now: float | None = None) -> int:
        return self.summed

    def peak(self, now: float | None = None) -> int:
        self.max = max(self.max, self.summed_peak, self.summed)
        return self.max


def _store(target: object, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if not hasattr(target, name):
            continue
        if isinstance(value, list):
            current = getattr(target, name)
            if not isinstance(current, SummedRate):
                current = SummedRate()
                setattr(target, name, current)
            current.summed, current.summed_peak = value
        elif isinstance(value, dict):
            getattr(target, name).update(value)
        elif name in PEAKS:
            setattr(target, name, max(getattr(target, name), value))
        else:
            setattr(target, name, value)


@dataclass
class CounterSums:
    """The master's sums: the last snapshot of each living worker plus everything counted by
    workers that are gone (so totals never go back when a worker is replaced or retired)."""

    finished: dict[str, Any] = field(default_factory=dict)
    living: dict[int, dict[str, Any]] = field(default_factory=dict)  # by worker pid

    def update(self, pid: int, snap: dict[str, Any]) -> None:
        self.living[pid] = snap

    def gone(self, pid: int) -> None:
        """The worker exited: its counts so far stay in the totals (a killed worker loses what
        it counted since its last snapshot, at most one push interval)."""
        snap = self.living.pop(pid, None)
        if snap is not None:
            _add(self.finished, snap, finished=True)

    def totals(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        _add(total, self.finished, finished=False)
        for snap in self.living.values():
            _add(total, snap, finished=False)
        return total

    def apply(self, runtime: Runtime) -> None:
        """Write the totals into the master's runtime, which the stats, the CSV, ``/metrics``
        and the runtime API read."""
        total = self.totals()
        for label, values in total.get("frontends", {}).items():
            _store(runtime.frontend(label), values)
        states = {server_key(s): s for p in runtime.pools.values() for s in p.all_states()}
        for key, values in total.get("servers", {}).items():
            state = states.get(key)
            if state is not None:
                _store(state.counters, values)
        for name, values in total.get("pools", {}).items():
            pool = runtime.pools.get(name)
            if pool is not None:
                _store(pool, values)
        runtime.connections = int(total.get("connections", {}).get("current", 0))
