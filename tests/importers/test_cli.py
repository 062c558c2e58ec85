"""`lbproxy import`: files written, the report on stderr, exit 0 / 1 / 2, never a traceback."""

from __future__ import annotations

import pathlib

import pytest

from l7proxy.cli import main

CARRIED = """defaults
  mode http
frontend web
  bind 127.0.0.1:80
  default_backend web
backend web
  server w 127.0.0.1:8080
"""
DROPPED = CARRIED + "  balance uri\n"


def test_all_carried_exits_zero(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "haproxy.cfg").write_text(CARRIED)
    out = tmp_path / "lb.yaml"
    assert main(["import", "--haproxy", str(tmp_path / "haproxy.cfg"), "-o", str(out)]) == 0
    assert "label: web" in out.read_text()
    assert capsys.readouterr().err == ""


def test_dropped_directive_exits_one_with_yaml_and_report(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(DROPPED)
    out, report = tmp_path / "lb.yaml", tmp_path / "report.txt"
    assert main(["import", "--haproxy", str(cfg), "-o", str(out), "--report", str(report)]) == 1
    line = (
        f"{cfg}:8: balance: not carried: balance uri: lbproxy balances by roundrobin, leastconn or"
        " source / roundrobin was used"
    )
    assert capsys.readouterr().err.splitlines() == [line]
    assert report.read_text().splitlines() == [line]
    assert main(["check", "-c", str(out)]) == 0


def test_yaml_to_stdout(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "haproxy.cfg").write_text(CARRIED)
    assert main(["import", "--haproxy", str(tmp_path / "haproxy.cfg")]) == 0
    assert "virtual_servers:" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["--haproxy", "--pound"])
def test_unreadable_file_exits_two(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    assert main(["import", which, str(tmp_path / "missing.cfg")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"lbproxy import: {tmp_path / 'missing.cfg'}: cannot read: No such file or directory\n"
    )
    assert main(["import", which, str(tmp_path)]) == 2
    (tmp_path / "bin.cfg").write_bytes(b"\xff\xfe\x00")
    assert main(["import", which, str(tmp_path / "bin.cfg")]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_no_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import"]) == 2
    assert "--haproxy" in capsys.readouterr().err
