"""Every corpus file imports without a traceback, and every YAML written passes `lbproxy check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.importers.pipeline import EXIT_CARRIED, EXIT_DROPPED, import_configs
from l7proxy.cli import main

from .corpus import CORPUS, corpus_files, is_pound

FILES = corpus_files()


def test_corpus_is_big_enough() -> None:
    assert len(list((CORPUS / "haproxy").glob("*.cfg"))) >= 20
    assert len(list((CORPUS / "pound").glob("*.cfg"))) >= 10
    sources = (CORPUS / "SOURCES.md").read_text()
    for path in FILES:
        assert str(path.relative_to(CORPUS)) in sources or path.parent.name == "appliance"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_imports_and_passes_check(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pound = is_pound(path)
    result = import_configs(None if pound else str(path), str(path) if pound else None, env={})
    assert result.status in (EXIT_CARRIED, EXIT_DROPPED), result.error
    for line in result.report:
        assert ": not carried: " in line, line
        assert line.startswith(str(path)), line
    if result.yaml_text is None:
        assert any("no HTTP proxy" in line for line in result.report)
        return
    out = tmp_path / "lb.yaml"
    out.write_text(result.yaml_text)
    status = main(["check", "-c", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err + "\n" + result.yaml_text
