"""Conditions in the YAML shape (docs/configuration.md, Conditions), built and simplified.

``ALWAYS`` and ``NEVER`` stand for conditions known when importing (HAProxy's ``TRUE``, or
``ssl_fc`` on a virtual server whose binds are all plain), and fold away.
"""

from __future__ import annotations

from typing import Any, Final

Condition = Any  # a mapping or a name, as in the YAML; or ALWAYS / NEVER


class _Constant:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ALWAYS: Final = _Constant("ALWAYS")
NEVER: Final = _Constant("NEVER")


def negate(cond: Condition) -> Condition:
    if cond is ALWAYS:
        return NEVER
    if cond is NEVER:
        return ALWAYS
    if isinstance(cond, str):
        return cond[1:] if cond.startswith("!") else "!" + cond
    if isinstance(cond, dict) and list(cond) == ["not"]:
        return cond["not"]
    return {"not": cond}


def all_of(conds: list[Condition]) -> Condition:
    kept: list[Condition] = []
    for cond in conds:
        if cond is NEVER:
            return NEVER
        if cond is ALWAYS:
            continue
        if isinstance(cond, dict) and list(cond) == ["and"]:
            kept += cond["and"]
        else:
            kept.append(cond)
    if not kept:
        return ALWAYS
    return kept[0] if len(kept) == 1 else {"and": kept}


def any_of(conds: list[Condition]) -> Condition:
    kept: list[Condition] = []
    for cond in conds:
        if cond is ALWAYS:
            return ALWAYS
        if cond is NEVER:
            continue
        if isinstance(cond, dict) and list(cond) == ["or"]:
            kept += cond["or"]
        else:
            kept.append(cond)
    if not kept:
        return NEVER
    return kept[0] if len(kept) == 1 else {"or": kept}


def with_if(entry: dict[str, Any], cond: Condition) -> dict[str, Any]:
    """``entry`` with ``if: cond`` first (left out when the condition always holds)."""
    if cond is ALWAYS:
        return entry
    return {"if": cond, **entry}
