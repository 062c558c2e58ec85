"""The import corpus (tests/data/import/) and how each file is imported."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "data" / "import"


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*.cfg"))


def is_pound(path: Path) -> bool:
    return path.parent.name == "pound" or path.name.startswith("pound")
