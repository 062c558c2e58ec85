"""Choosing among eligible servers: smooth weighted round robin, least connections, hash ring.

The algorithms know labels and numbers only, never server objects, so they stay independent of
``balancing.state`` and are easy to table-test. Callers pass the eligible servers in pool order;
cursors are keyed by label, so servers that leave and re-enter the candidate list (health, drain,
weight changes) keep their place without any reset.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

# Points on the ring per unit of weight. Ketama (and HAProxy's consistent hash, which uses
# weight * 16 points on a 32-bit ring) show that ~100+ points per server keep the load spread
# within a few percent; 160 is ketama's figure (40 hashes x 4 points).
VNODES_PER_WEIGHT = 160


@dataclass(frozen=True, slots=True)
class Candidate:
    """One eligible server as the algorithms see it."""

    label: str
    weight: int
    active: int = 0  # in-flight requests, for least connections


class SmoothRoundRobin:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer).

    Each pick adds every candidate's weight to its current value, takes the largest and subtracts
    the total from the winner. Weights 5,1,1 give ``a a b a c a a``: heavy servers are interleaved
    rather than served in bursts. A weight change applies from the next pick.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Candidate]) -> str:
        if not candidates:
            raise ValueError("no candidates")
        total = 0
        best: Candidate | None = None
        best_value = 0
        for cand in candidates:
            value = self._current.get(cand.label, 0) + cand.weight
            self._current[cand.label] = value
            total += cand.weight
            # Strictly greater: ties go to the earlier server, as in nginx.
            if best is None or value > best_value:
                best, best_value = cand, value
        assert best is not None
        self._current[best.label] = best_value - total
        return best.label


class LeastConnections:
    """Weighted least connections: lowest active/weight wins, ties broken round robin.

    Like HAProxy's leastconn, equal servers take turns instead of the first one taking all the
    short requests. The turn is kept as the label picked last among the tied.
    """

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, candidates: Sequence[Candidate]) -> str:
        if not candidates:
            raise ValueError("no candidates")
        tied: list[Candidate] = []
        for cand in candidates:
            if not tied:
                tied = [cand]
                continue
            ref = tied[0]
            # active/weight compared by cross-multiplication: exact, no floats.
            lhs = cand.active * max(ref.weight, 1)
            rhs = ref.active * max(cand.weight, 1)
            if lhs < rhs:
                tied = [cand]
            elif lhs == rhs:
                tied.append(cand)
        chosen = tied[0]
        if self._last is not None and len(tied) > 1:
            position = {c.label: i for i, c in enumerate(candidates)}
            last_index = position.get(self._last, -1)
            # The first tied server after the one picked last, wrapping around.
            chosen = next((c for c in tied if position[c.label] > last_index), tied[0])
        self._last = chosen.label
        return chosen.label


def stable_hash(data: str) -> int:
    """A 64-bit hash that is the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing over labels, weighted by points on the ring.

    A key maps to the first point clockwise of its hash whose server is eligible, so a server that
    goes away moves only the keys it held (about 1/N of them) and two processes with the same
    servers and weights agree without talking.
    """

    def __init__(self) -> None:
        self._built_for: tuple[tuple[str, int], ...] | None = None
        self._points: list[int] = []
        self._owners: list[str] = []

    def _build(self, servers: tuple[tuple[str, int], ...]) -> None:
        ring: list[tuple[int, str]] = []
        for label, weight in servers:
            for i in range(max(weight, 0) * VNODES_PER_WEIGHT):
                ring.append((stable_hash(f"{label}#{i}"), label))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [label for _, label in ring]
        self._built_for = servers

    def pick(self, key: str, servers: Sequence[tuple[str, int]], eligible: frozenset[str]) -> str:
        """``servers``: every (label, weight) of the pool; ``eligible``: labels that may be chosen.

        The ring is built from all servers, not only the eligible ones, so a server that is down
        for a moment does not reshuffle the others; it is rebuilt only when weights change.
        """
        if not eligible:
            raise ValueError("no candidates")
        wanted = tuple(servers)
        if wanted != self._built_for:
            self._build(wanted)
        if self._points:
            start = bisect.bisect_left(self._points, stable_hash(key))
            count = len(self._points)
            for step in range(count):
                owner = self._owners[(start + step) % count]
                if owner in eligible:
                    return owner
        # Eligible servers without points (weight 0 everywhere): fall back to a stable choice.
        ordered = sorted(eligible)
        return ordered[stable_hash(key) % len(ordered)]
