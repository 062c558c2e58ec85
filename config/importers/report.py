"""What an import did not carry: one line per directive, ``FILE:LINE: directive: not carried``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Where:
    """A directive's source: file name as given and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Note:
    """One directive that was not carried (or carried only in part).

    ``traffic`` says whether leaving it out changes what clients or real servers see; only those
    make the import exit 1. Logging, process and tuning settings are reported with
    ``traffic=False``: the operator still learns they were left behind.
    """

    where: Where
    directive: str
    why: str
    traffic: bool = True

    def line(self) -> str:
        return f"{self.where}: {self.directive}: not carried: {self.why}"


@dataclass(slots=True)
class Report:
    notes: list[Note] = field(default_factory=list)
    _seen: set[tuple[str, int, str]] = field(default_factory=set)

    def add(self, where: Where, directive: str, why: str, *, traffic: bool = True) -> None:
        """Record a note once per source line and directive: a ``defaults`` line inherited by
        many proxies is reported once."""
        key = (where.file, where.line, directive)
        if key in self._seen:
            return
        self._seen.add(key)
        self.notes.append(Note(where, directive, why, traffic))

    @property
    def dropped_traffic(self) -> bool:
        return any(note.traffic for note in self.notes)

    def lines(self) -> list[str]:
        ordered = sorted(self.notes, key=lambda n: (n.where.file, n.where.line, n.directive))
        return [note.line() for note in ordered]
