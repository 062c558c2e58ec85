"""The runtime API's parser and answers, as tables: no sockets, no trio (l7proxy/admin.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from balancing.state import DrainEnd, Health, drain_end, new_states
from config.loader import load_text
from config.model import AdminState
from l7proxy import admin, admin_state
from l7proxy.runtime import ClientInfo, Runtime, SessionInfo
from l7proxy.upstream import UpstreamPool

CONFIG = """
virtual_servers:
  - label: www
    bind: 127.0.0.1:8080
    persistence: {cookie: SERVERID}
    real_servers:
      - {label: web1, address: 10.0.0.1:80, weight: 10}
      - {label: web2, address: 10.0.0.2:80}
  - label: api
    bind: 127.0.0.1:8081
    persistence: {source: {timeout: 100s}}
    real_servers:
      - {label: a1, address: 10.0.1.1:80}
      - {label: a2, address: 10.0.1.2:80}
"""
NOW = 1000.0


def make_runtime() -> Runtime:
    config = load_text(CONFIG, "/tmp/lb.yaml")
    runtime = Runtime(config, new_states(config.all_pools()), UpstreamPool())
    runtime.started_at = 5000.0
    return runtime


def context(runtime: Runtime, now: float = NOW, **kw: object) -> admin.Context:
    defaults: dict[str, object] = {
        "wall": 5065.0,
        "pid": 42,
        "version": "1.2.3",
        "binds": (admin.BindFact("www 127.0.0.1:8080", True),),
        "stat_csv": lambda: b"# pool,label\nwww,web1\n",
    }
    defaults.update(kw)
    return admin.Context(runtime, now, **defaults)  # type: ignore[arg-type]


def run(line: str, runtime: Runtime | None = None, now: float = NOW) -> admin.Output:
    runtime = runtime or make_runtime()
    return admin.CliSession().feed(line, context(runtime, now))


@pytest.mark.parametrize(
    ("line", "commands"),
    [
        ("show info", [["show", "info"]]),
        ("  show   stat  \n", [["show", "stat"]]),
        ("show info;show stat", [["show", "info"], ["show", "stat"]]),
        ("show info ; ; show stat;", [["show", "info"], ["show", "stat"]]),
        (r"clear table www key a\;b", [["clear", "table", "www", "key", "a;b"]]),
        (r"set server a\ b/c", [["set", "server", "a b/c"]]),
        ("", []),
        (" ; ", []),
    ],
)
def test_split_line(line: str, commands: list[list[str]]) -> None:
    assert admin.split_line(line) == commands


# HAProxy's texts, byte for byte (src/server.c, src/stick_table.c).
@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("set server www state drain", "Require 'backend/server'.\n\n"),
        ("set server", "Require 'backend/server'.\n\n"),
        ("set server nope/web1 state drain", "No such backend.\n\n"),
        ("set server www/nope state drain", "No such server.\n\n"),
        ("disable server www/nope", "No such server.\n\n"),
        ("enable server nope/x", "No such backend.\n\n"),
        ("shutdown sessions server www", "Require 'backend/server'.\n\n"),
        ("set server www/web1 state up", admin.STATE_USAGE + "\n"),
        ("set server www/web1 state", admin.STATE_USAGE + "\n"),
        ("set server www/web1 state ready 10m", admin.STATE_USAGE + "\n"),
        ("set server www/web1 health maybe", admin.HEALTH_USAGE + "\n"),
        ("set server www/web1 colour red", admin.SET_SERVER_USAGE + "\n"),
        ("set server www/web1 weight", "Require <weight> or <weight%>.\n\n"),
        ("set server www/web1 weight x", "Empty weight string empty or preceded by garbage\n\n"),
        (
            "set server www/web1 weight 300",
            "Absolute weight can only be between 0 and 256 inclusive.\n\n",
        ),
        ("set server www/web1 weight 5x", "Trailing garbage in weight string\n\n"),
        ("set server www/web1 weight -5%", "Relative weight must be positive.\n\n"),
        ("show table nope", "No such table\n\n"),
        ("show table www", "No such table\n\n"),  # cookie persistence has no table
        ("clear table nope", "No such table\n\n"),
        ("show servers state nope", "Can't find backend.\n\n"),
    ],
)
def test_error_texts(line: str, answer: str) -> None:
    out = run(line)
    assert out.text == answer
    assert out.errors == 1
    assert out.close
    assert not out.changed


def test_unknown_command_lists_every_command() -> None:
    out = run("frobnicate now")
    first, *rest = out.text.rstrip("\n").splitlines()
    assert (
        first == "Unknown command: 'frobnicate'. Please enter one of the following commands only:"
    )
    assert (
        "  show info                               : report information about the running process"
        in rest
    )
    assert rest[-3:] == [
        "  help [<command>]                        : list matching or all commands",
        "  prompt                                  : toggle interactive mode with prompt",
        "  quit                                    : disconnect",
    ]
    assert out.errors == 1


def test_partial_match_lists_the_better_matches() -> None:
    out = run("show foo")
    lines = out.text.rstrip("\n").splitlines()
    assert (
        lines[0]
        == "Unknown command: 'show', but maybe one of the following ones is a better match:"
    )
    listed = [line for line in lines[1:-3] if line]
    assert listed
    assert all(line.startswith("  show ") for line in listed)
    assert admin.is_error(out.text)


def test_help() -> None:
    out = run("help")
    assert out.text.startswith("The following commands are valid at this level:\n")
    assert "  set server <bk>/<srv> [opts]            : " in out.text
    assert out.errors == 0
    assert "show" not in run("help set").text.split("valid at this level:\n")[1].split("help [")[0]


@pytest.mark.parametrize(
    ("value", "configured", "expected"),
    [
        ("0", 10, 0),
        ("256", 10, 256),
        ("50%", 10, 5),
        ("100%", 10, 10),
        ("0%", 10, 0),
        ("50%", 1, 0),  # integer arithmetic, as HAProxy
        ("5000%", 10, 256),  # capped
        ("99999999%", 10, 256),
    ],
)
def test_parse_weight(value: str, configured: int, expected: int) -> None:
    assert admin.parse_weight(value, configured) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600.0), ("30s", 30.0), ("500ms", 0.5), ("2h", 7200.0), ("1d", 86400.0), ("7", 7.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert admin.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "-5s", "nan", "inf", "1e999"])
def test_parse_duration_refuses(text: str) -> None:
    assert admin.parse_duration(text) is None


@pytest.mark.parametrize(
    ("line", "admin_value", "weight"),
    [
        ("set server www/web1 state drain", AdminState.DRAIN, 10),
        ("set server www/web1 state maint", AdminState.MAINT, 10),
        ("disable server www/web1", AdminState.MAINT, 10),
        ("set server www/web1 state maint; enable server www/web1", AdminState.READY, 10),
        ("set server www/web1 weight 3", AdminState.READY, 3),
        ("set server www/web1 weight 50%", AdminState.READY, 5),
    ],
)
def test_changes_apply_at_once_and_are_logged(
    line: str, admin_value: AdminState, weight: int
) -> None:
    runtime = make_runtime()
    out = run(line, runtime)
    web1 = runtime.pools["www"].server("web1")
    assert web1 is not None
    assert (web1.admin, web1.weight) == (admin_value, weight)
    assert out.text == "\n" * len(admin.split_line(line))
    assert out.changed
    assert out.errors == 0
    assert out.log
    assert all(entry.startswith("admin socket: server www/web1 ") for entry in out.log)
    # A drained or weight-0 server takes no new client; a drained one keeps its cookie holders.
    assert web1.accepts_new() is (admin_value is AdminState.READY and weight > 0)
    assert web1.accepts_sticky() is (admin_value is not AdminState.MAINT)


def test_forced_health() -> None:
    runtime = make_runtime()
    out = run("set server www/web2 health down", runtime)
    web2 = runtime.pools["www"].server("web2")
    assert web2 is not None
    # Compared as a pair, not narrowed: the next command changes the same attribute.
    assert (web2.health, web2.status_text()) == (Health.DOWN, "DOWN")
    assert out.log == ["admin socket: server www/web2 health forced up -> down"]
    run("set server www/web2 health up", runtime)
    assert web2.health is Health.UP


def test_show_info() -> None:
    runtime = make_runtime()
    runtime.connections = 3
    runtime.frontend("www").opened()
    runtime.frontend("www").record(200, 10, 10)
    info = dict(line.split(": ", 1) for line in run("show info", runtime).text.splitlines() if line)
    assert info["Name"] == "lbproxy"
    assert info["Version"] == "1.2.3"
    assert info["Pid"] == "42"
    assert (info["Uptime"], info["Uptime_sec"]) == ("0d 0h01m05s", "65")
    assert (info["CurrConns"], info["CumConns"], info["CumReq"]) == ("3", "1", "1")


def test_show_stat_is_the_stats_csv() -> None:
    assert run("show stat").text == "# pool,label\nwww,web1\n\n"


def test_show_servers_state() -> None:
    runtime = make_runtime()
    run("set server www/web1 state drain; set server www/web2 weight 0", runtime)
    lines = run("show servers state", runtime).text.splitlines()
    assert lines[0] == "1"
    assert lines[1] == "# " + admin_state.COLUMNS
    rows = [line.split() for line in lines[2:] if line]
    assert [(r[0], r[1], r[2], r[3], r[4], r[18]) for r in rows] == [
        ("1", "www", "1", "web1", "10.0.0.1", "80"),
        ("1", "www", "2", "web2", "10.0.0.2", "80"),
        ("2", "api", "1", "a1", "10.0.1.1", "80"),
        ("2", "api", "2", "a2", "10.0.1.2", "80"),
    ]
    assert [(r[5], r[6], r[7], r[8]) for r in rows[:2]] == [
        ("2", "8", "10", "10"),
        ("2", "0", "0", "1"),
    ]
    assert len(rows[0]) == len(admin_state.COLUMNS.split())
    only = run("show servers state api", runtime).text.splitlines()
    assert [line.split()[1] for line in only[2:] if line] == ["api", "api"]


def test_state_file_round_trip_ignores_servers_gone() -> None:
    runtime = make_runtime()
    run(
        "set server www/web1 state maint; set server api/a2 state drain; "
        "set server www/web2 weight 7",
        runtime,
    )
    text = admin_state.render(runtime.pools, NOW, 60)
    text += "3 old 1 gone 10.9.9.9 2 1 1 1 0 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\nbroken\n"
    saved, notes = admin_state.parse(text)
    assert notes == [f"line {len(text.splitlines())}: not a server-state line; ignored"]
    fresh = make_runtime()
    notes = admin_state.apply(saved, fresh.pools, NOW)
    states = {
        (p, s.label): (s.admin, s.weight) for p, pool in fresh.pools.items() for s in pool.servers
    }
    assert states == {
        ("www", "web1"): (AdminState.MAINT, 10),
        ("www", "web2"): (AdminState.READY, 7),
        ("api", "a1"): (AdminState.READY, 1),
        ("api", "a2"): (AdminState.DRAIN, 1),
    }
    assert (
        "server old/gone is not in the configuration any more; its saved state is ignored" in notes
    )
    assert admin_state.parse("2\n# other\n") == ([], ["not a version 1 server-state file; ignored"])


def test_show_and_clear_table() -> None:
    runtime = make_runtime()
    table = runtime.pools["api"].source_table
    assert table is not None
    table.record("192.0.2.0/24", "a1", NOW - 10)
    table.record("198.51.100.0/24", "a2", NOW - 200)  # expired: not shown, not counted
    table.record("203.0.113.0/24", "a2", NOW - 1)
    assert run("show table", runtime).text == "# table: api, type: ip, size:100000, used:2\n\n"
    lines = run("show table api", runtime).text.splitlines()
    assert lines[0] == "# table: api, type: ip, size:100000, used:2"
    assert lines[1].endswith(": key=192.0.2.0/24 use=0 exp=90000 server_id=1 server_key=a1")
    assert lines[2].endswith(": key=203.0.113.0/24 use=0 exp=99000 server_id=2 server_key=a2")
    assert lines[1].startswith("0x")
    out = run("clear table api key 192.0.2.0/24", runtime)
    assert out.text == "\n"
    assert out.log == ["admin socket: table api: cleared entry 192.0.2.0/24"]
    assert [key for key, _, _ in table.items()] == ["198.51.100.0/24", "203.0.113.0/24"]
    run("clear table api", runtime)
    assert len(table) == 0


def test_show_health() -> None:
    runtime = make_runtime()
    assert run("show health", runtime).text == "ok: 1 bind(s) open\n\n"
    down = (admin.BindFact("www 127.0.0.1:8080", True), admin.BindFact("api 127.0.0.1:8081", False))
    out = admin.CliSession().feed("show health", context(runtime, binds=down))
    assert out.text == "not ok: not listening on api 127.0.0.1:8081\n\n"
    runtime.shutting_down = True
    assert run("show health", runtime).text == "not ok: stopping\n\n"


@dataclass
class FakeExchange:
    pool: str = "-"
    server: str = "-"


@dataclass
class FakeScope:
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeConnection:
    """Stands in for a ClientConnection (runtime.ClientSession): which server it is on, and
    the shut that ends it."""

    phase: str = "idle"
    current: FakeExchange | None = None
    scope: FakeScope = field(default_factory=FakeScope)
    stopping: bool = False

    def served_by(self) -> tuple[str, str] | None:
        if self.phase != "server" or self.current is None:
            return None
        return self.current.pool, self.current.server

    def shut(self) -> None:
        self.stopping = True
        self.scope.cancel()


def test_show_sess_and_shutdown_sessions() -> None:
    runtime = make_runtime()
    on_web1 = FakeConnection("server", FakeExchange("www", "web1"))
    on_web2 = FakeConnection("server", FakeExchange("www", "web2"))
    idle = FakeConnection("idle", FakeExchange("www", "web1"))  # between requests: on no server
    for n, conn in enumerate((on_web1, on_web2, idle)):
        client = ClientInfo(f"192.0.2.{n}", 40000 + n, "127.0.0.1", 8080)
        runtime.sessions[0x100 + n] = SessionInfo(client, "www", NOW - 5, conn)
    lines = run("show sess", runtime).text.splitlines()
    assert lines[:3] == [
        "0x100: proto=tcpv4 src=192.0.2.0:40000 fe=www be=www srv=web1 age=5s",
        "0x101: proto=tcpv4 src=192.0.2.1:40001 fe=www be=www srv=web2 age=5s",
        "0x102: proto=tcpv4 src=192.0.2.2:40002 fe=www be=<NONE> srv=<none> age=5s",
    ]
    out = run("shutdown sessions server www/web1", runtime)
    assert out.text == "\n"
    assert out.log == ["admin socket: server www/web1: shut 1 session(s)"]
    assert on_web1.stopping
    assert on_web1.scope.cancelled
    assert not on_web2.scope.cancelled
    assert not idle.scope.cancelled


def test_prompt_mode() -> None:
    runtime = make_runtime()
    session = admin.CliSession()
    out = session.feed("prompt", context(runtime))
    assert (out.text, out.close) == ("\n> ", False)
    out = session.feed("show health", context(runtime))
    assert (out.text, out.close) == ("ok: 1 bind(s) open\n\n> ", False)
    out = session.feed("", context(runtime))
    assert (out.text, out.close) == ("> ", False)
    assert session.feed("quit", context(runtime)).close
    one_shot = admin.CliSession().feed("show health", context(runtime))
    assert one_shot.close


@pytest.mark.parametrize(
    ("admin_value", "deadline", "now", "active", "entries", "expected"),
    [
        (AdminState.DRAIN, None, 50.0, 0, 0, None),  # a plain drain never ends by itself
        (AdminState.READY, 100.0, 150.0, 0, 0, None),
        (AdminState.MAINT, 100.0, 150.0, 0, 0, None),
        (AdminState.DRAIN, 100.0, 50.0, 0, 0, DrainEnd.LAST_CLIENT_LEFT),
        (AdminState.DRAIN, 100.0, 50.0, 1, 0, None),
        (AdminState.DRAIN, 100.0, 50.0, 0, 3, None),
        (AdminState.DRAIN, 100.0, 100.0, 2, 3, DrainEnd.DEADLINE),
        (AdminState.DRAIN, 100.0, 150.0, 0, 0, DrainEnd.LAST_CLIENT_LEFT),
    ],
)
def test_drain_end(
    admin_value: AdminState,
    deadline: float | None,
    now: float,
    active: int,
    entries: int,
    expected: DrainEnd | None,
) -> None:
    assert drain_end(admin_value, deadline, now, active, entries) is expected


def test_timed_drain_waits_for_persistent_clients_then_the_deadline() -> None:
    runtime = make_runtime()
    pool = runtime.pools["api"]
    assert pool.source_table is not None
    pool.source_table.record("192.0.2.0/24", "a1", NOW)
    out = run("set server api/a1 state drain 10m", runtime)
    a1 = pool.server("a1")
    assert a1 is not None
    assert (a1.admin, a1.drain_deadline) == (AdminState.DRAIN, NOW + 600)
    assert out.log == [
        "admin socket: server api/a1 state ready -> drain "
        "until its last client leaves, at most 600s"
    ]
    assert admin.finish_drains(runtime, NOW + 1) == []
    # The entry expires after 100 s without the client: the last persistent client left.
    assert admin.finish_drains(runtime, NOW + 101) == [
        "admin socket: server api/a1 drained (its last persistent client left): now maint"
    ]
    assert (a1.admin, a1.drain_deadline) == (AdminState.MAINT, None)
    run("set server api/a2 state drain 1s", runtime)
    a2 = pool.server("a2")
    assert a2 is not None
    pool.begin(a2)  # a request in flight keeps it draining until the deadline
    assert admin.finish_drains(runtime, NOW + 0.5) == []
    assert admin.finish_drains(runtime, NOW + 1) == [
        "admin socket: server api/a2 drained (the drain deadline passed): now maint"
    ]
    run("set server api/a2 state drain 1s; set server api/a2 state ready", runtime)
    assert a2.drain_deadline is None
