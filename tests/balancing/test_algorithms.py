"""Smooth weighted round robin, weighted least connections and the consistent hash ring."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from balancing.algorithms import (
    Candidate,
    HashRing,
    LeastConnections,
    SmoothRoundRobin,
    stable_hash,
)


def rr_sequence(weights: dict[str, int], picks: int) -> str:
    rr = SmoothRoundRobin()
    cands = [Candidate(label, w) for label, w in weights.items()]
    return "".join(rr.pick(cands) for _ in range(picks))


@pytest.mark.parametrize(
    ("weights", "picks", "expected"),
    [
        ({"a": 5, "b": 1, "c": 1}, 7, "aabacaa"),  # nginx's documented example
        ({"a": 5, "b": 1, "c": 1}, 14, "aabacaa" * 2),
        ({"a": 1, "b": 1, "c": 1}, 6, "abcabc"),
        ({"a": 2, "b": 1}, 6, "abaaba"),
        ({"a": 1}, 3, "aaa"),
    ],
)
def test_smooth_round_robin_sequences(weights: dict[str, int], picks: int, expected: str) -> None:
    assert rr_sequence(weights, picks) == expected


def test_round_robin_weight_change_applies_without_reset() -> None:
    rr = SmoothRoundRobin()
    first = [rr.pick([Candidate("a", 1), Candidate("b", 1)]) for _ in range(4)]
    assert first == ["a", "b", "a", "b"]
    heavy = [Candidate("a", 3), Candidate("b", 1)]
    counts = Counter(rr.pick(heavy) for _ in range(40))
    assert counts == {"a": 30, "b": 10}


def test_round_robin_candidate_leaving_and_returning() -> None:
    rr = SmoothRoundRobin()
    all3 = [Candidate("a", 1), Candidate("b", 1), Candidate("c", 1)]
    only_ac = [Candidate("a", 1), Candidate("c", 1)]
    assert [rr.pick(all3) for _ in range(3)] == ["a", "b", "c"]
    assert Counter(rr.pick(only_ac) for _ in range(10)) == {"a": 5, "c": 5}
    assert Counter(rr.pick(all3) for _ in range(30)) == {"a": 10, "b": 10, "c": 10}


def test_round_robin_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        SmoothRoundRobin().pick([])


@pytest.mark.parametrize(
    ("cands", "expected"),
    [
        ([("a", 1, 3), ("b", 1, 1), ("c", 1, 2)], "b"),
        ([("a", 1, 2), ("b", 3, 3)], "b"),  # 3/3 < 2/1
        ([("a", 2, 4), ("b", 1, 3)], "a"),  # 4/2 < 3/1
        ([("a", 1, 0), ("b", 1, 0)], "a"),  # tie: first turn goes to the first
    ],
)
def test_least_connections_lowest_ratio(cands: list[tuple[str, int, int]], expected: str) -> None:
    lc = LeastConnections()
    assert lc.pick([Candidate(label, w, active) for label, w, active in cands]) == expected


def test_least_connections_ties_round_robin() -> None:
    lc = LeastConnections()
    idle = [Candidate("a", 1, 0), Candidate("b", 1, 0), Candidate("c", 1, 0)]
    assert [lc.pick(idle) for _ in range(6)] == list("abcabc")
    # Only b and c tied lowest: they alternate, a (busy) is never picked.
    busy_a = [Candidate("a", 1, 5), Candidate("b", 1, 1), Candidate("c", 1, 1)]
    assert [lc.pick(busy_a) for _ in range(4)] == list("bcbc")


ROOT = Path(__file__).resolve().parents[2]


def test_stable_hash_is_process_independent() -> None:
    code = "from balancing.algorithms import stable_hash; print(stable_hash('10.0.0.1'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(stable_hash("10.0.0.1"))}


def ring_assign(
    ring: HashRing, servers: list[tuple[str, int]], eligible: set[str], keys: list[str]
) -> dict[str, str]:
    return {k: ring.pick(k, servers, frozenset(eligible)) for k in keys}


KEYS = [f"10.{i // 250}.{i % 250}.7" for i in range(5000)]


@pytest.mark.parametrize("n", [3, 5, 8])
def test_ring_removing_one_server_moves_about_one_nth(n: int) -> None:
    servers = [(f"s{i}", 1) for i in range(n)]
    labels = {label for label, _ in servers}
    ring = HashRing()
    before = ring_assign(ring, servers, labels, KEYS)
    after = ring_assign(ring, servers, labels - {"s0"}, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    # Only the removed server's clients move...
    assert all(before[k] == "s0" for k in moved)
    assert all(after[k] != "s0" for k in KEYS)
    # ...and they are about 1/N of all clients.
    assert abs(len(moved) / len(KEYS) - 1 / n) < 0.5 / n
    # Load stays spread: no server holds more than twice its share.
    assert max(Counter(before.values()).values()) < 2 * len(KEYS) / n


def test_ring_respects_weights_and_agrees_across_instances() -> None:
    servers = [("a", 3), ("b", 1)]
    first = ring_assign(HashRing(), servers, {"a", "b"}, KEYS)
    second = ring_assign(HashRing(), servers, {"a", "b"}, KEYS)
    assert first == second
    share_a = Counter(first.values())["a"] / len(KEYS)
    assert 0.65 < share_a < 0.85


def test_ring_rebuilds_on_weight_change() -> None:
    ring = HashRing()
    ring_assign(ring, [("a", 1), ("b", 1)], {"a", "b"}, KEYS)
    now_b_only = ring_assign(ring, [("a", 0), ("b", 1)], {"a", "b"}, KEYS)
    assert set(now_b_only.values()) == {"b"}


def test_ring_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        HashRing().pick("k", [("a", 1)], frozenset())
