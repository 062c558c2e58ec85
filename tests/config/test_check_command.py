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


def one_vs_file(tmp_path: Path, bind: str, extra: str = "") -> Path:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "virtual_servers:\n"
        "  - label: www\n"
        f"    bind: {bind}\n"
        f"{extra}"
        "    real_servers: [{label: a, address: 127.0.0.1:1}]\n"
    )
    return path


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = one_vs_file(tmp_path, "127.0.0.1:8080")
    assert main(["check", "-c", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("bind", "warnings"),
    [
        ("127.0.0.1:8080", ["4:5: virtual_servers[0].hsts: hsts has no effect: no TLS bind"]),
        ("{address: 127.0.0.1:8443, tls: true}", []),
    ],
)
def test_check_prints_warnings_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bind: str, warnings: list[str]
) -> None:
    path = one_vs_file(tmp_path, bind, "    hsts: 1y\n")
    assert main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"{path}:{warning}" for warning in warnings]
    assert out == (
        f"{path}: configuration is valid (1 virtual server(s), {len(warnings)} warning(s))\n"
    )
