"""`lbproxy check -c FILE` shows the loader's problems as they are: one line each, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from l7proxy.cli import main


def test_check_reports_every_problem_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:80800\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1, wieght: 2}]\n"
    )
    assert main(["check", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:3:11: virtual_servers[0].bind: invalid address '127.0.0.1:80800': "
        "port 80800 is not in 1..65535",
        f"{path}:4:53: virtual_servers[0].real_servers[0].wieght: "
        "unknown key (did you mean 'weight'?)",
    ]


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
    )
    assert main(["check", "-c", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_prints_warnings_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: 127.0.0.1:8080\n"
        "    hsts: 1y\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
    )
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{path}:4:5: virtual_servers[0].hsts: hsts has no effect: no TLS bind"
    ]
    assert out == f"{path}: configuration is valid (1 virtual server(s), 1 warning(s))\n"


def test_check_without_warnings_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        "    bind: {address: 127.0.0.1:8443, tls: true}\n"
        "    hsts: 1y\n"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
    )
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == f"{path}: configuration is valid (1 virtual server(s), 0 warning(s))\n"
