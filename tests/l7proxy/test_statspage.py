"""The stats page rendering: pure, from rows like PoolState.statistics() gives."""

from __future__ import annotations

from balancing.state import PoolState
from config.model import Address, Pool, RealServer
from l7proxy import statspage


def rows() -> list[dict[str, object]]:
    pool = Pool(
        "www",
        (RealServer("web1", Address("10.0.0.1", 80)), RealServer("web<2>", Address("::1", 80))),
        fallback=RealServer("fallback", Address("10.0.0.9", 80), backup=True),
    )
    state = PoolState(pool)
    state.servers[0].counters.record_response(200)
    state.servers[0].counters.record_response(503)
    state.servers[0].counters.check_status = "L7OK"
    state.servers[0].counters.check_duration = 0.012
    return state.statistics()


def test_html_escapes_and_shows_state() -> None:
    page = statspage.render_html(rows(), now=125.0).decode()
    assert "web&lt;2&gt;" in page and "web<2>" not in page
    assert "fallback (fallback)" in page
    assert "L7OK" in page and "(12 ms)" in page
    assert "2m5s" in page  # since the last change at t=0


def test_csv_has_one_line_per_server_and_response_classes() -> None:
    lines = statspage.render_csv(rows()).decode().splitlines()
    header = lines[0].removeprefix("# ").split(",")
    assert header[:3] == ["pool", "label", "address"]
    assert len(lines) == 4  # header, two servers, the fallback
    first = dict(zip(header, lines[1].split(","), strict=True))
    assert first["label"] == "web1" and first["hrsp_2xx"] == "1" and first["hrsp_5xx"] == "1"
    assert first["address"] == "10.0.0.1:80"
