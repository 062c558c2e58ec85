"""The runtime API: HAProxy's CLI line protocol for the commands operators script against. Pure.

A line holds one or more commands separated by ``;``; each answer is text that ends with an
empty line (``\\n> `` instead in ``prompt`` mode). Answers and error texts are HAProxy's, so
``echo "set server www/web1 state drain" | socat stdio /run/lbproxy/admin.sock`` and the scripts
built on it keep working. Changes apply to the runtime at once: the next client sees them.

The io (admin_socket.py) reads lines, gives each to ``CliSession.feed`` with a ``Context`` of
the facts only it knows (clocks, pid, open binds, the stats CSV), writes the output, saves the
state file when an answer says ``changed`` and logs ``log`` lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from balancing.state import Health, PoolState, ServerState, drain_end
from config.model import AdminState

from . import admin_state
from .runtime import Runtime

PROMPT = "\n> "
WHO = "admin socket"  # who changed a server, in the log
MAX_LINE = 16384  # a command line longer than this is refused (HAProxy's default bufsize)

# HAProxy's usage lines, padded to 40 columns before the colon as its help prints them.
USAGE: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("clear", "table"), "clear table <table> [key <key>]", "remove entries from a table"),
    (
        ("disable", "server"),
        "disable server (DEPRECATED)",
        "disable a server for maintenance (use 'set server' instead)",
    ),
    (
        ("enable", "server"),
        "enable server  (DEPRECATED)",
        "enable a disabled server (use 'set server' instead)",
    ),
    (
        ("set", "server"),
        "set server <bk>/<srv> [opts]",
        "change a server's state, weight or health",
    ),
    (("show", "health"), "show health", "say whether every bind is open (for keepalived)"),
    (("show", "info"), "show info", "report information about the running process"),
    (
        ("show", "servers", "state"),
        "show servers state [<backend>]",
        "dump volatile server information (all or for a single backend)",
    ),
    (("show", "sess"), "show sess", "report the list of current streams"),
    (("show", "stat"), "show stat", "report counters for each proxy and server"),
    (
        ("show", "table"),
        "show table [<table>]",
        "report table usage stats or dump this table's contents",
    ),
    (
        ("shutdown", "sessions", "server"),
        "shutdown sessions server <bk>/<srv>",
        "kill sessions on a server",
    ),
)
ALWAYS = (
    "  help [<command>]                        : list matching or all commands\n"
    "  prompt                                  : toggle interactive mode with prompt\n"
    "  quit                                    : disconnect\n"
)

# The first words of every error answer: how ``lbproxy ctl`` tells one from an answer.
ERRORS = (
    "Unknown command",
    "Require ",
    "No such ",
    "Can't find backend",
    "usage: ",
    "'set server <srv> ",
    "Empty weight string",
    "Relative weight must",
    "Absolute weight can only",
    "Trailing garbage",
    "Invalid drain deadline",
    "Permission denied",
    "Key value expected",
    "Unknown action",
)
STATE_USAGE = "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n"
HEALTH_USAGE = "'set server <srv> health' expects 'up', 'stopping', or 'down'.\n"
SET_SERVER_USAGE = "usage: set server <backend>/<server> health | state | weight\n"
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def is_error(answer: str) -> bool:
    return answer.startswith(ERRORS)


@dataclass(frozen=True, slots=True)
class BindFact:
    """One configured bind as the io sees it: open and accepting, or not."""

    name: str
    open: bool


@dataclass(frozen=True, slots=True)
class Context:
    """What only the io knows, read once per line."""

    runtime: Runtime
    now: float  # trio clock: last changes, persistence entries, drain deadlines
    wall: float  # time.time()
    pid: int
    version: str
    binds: tuple[BindFact, ...] = ()
    stat_csv: Callable[[], bytes] = lambda: b""


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    changed: bool = False  # an admin state or weight changed: save the state file
    log: tuple[str, ...] = ()

    @property
    def error(self) -> bool:
        return is_error(self.text)


@dataclass(slots=True)
class Output:
    """What one line produced: text to send, whether to close, what to log and save."""

    text: str = ""
    close: bool = False
    changed: bool = False
    log: list[str] = field(default_factory=list)
    errors: int = 0


def split_line(line: str) -> list[list[str]]:
    """Commands separated by ``;``, words by blanks; a backslash escapes the next character."""
    commands: list[list[str]] = []
    words: list[str] = []
    word: list[str] = []
    has_word = False
    chars = iter(line)
    for ch in chars:
        if ch == "\\":
            word.append(next(chars, ""))
            has_word = True
        elif ch in " \t\r\n":
            if has_word:
                words.append("".join(word))
                word, has_word = [], False
        elif ch == ";":
            if has_word:
                words.append("".join(word))
                word, has_word = [], False
            commands.append(words)
            words = []
        else:
            word.append(ch)
            has_word = True
    if has_word:
        words.append("".join(word))
    commands.append(words)
    return [c for c in commands if c]


@dataclass(slots=True)
class CliSession:
    """One connection to the admin socket: HAProxy's non-interactive mode (one line, then
    close) until ``prompt`` turns the interactive mode on (until ``quit``)."""

    interactive: bool = False

    def feed(self, line: str, ctx: Context) -> Output:
        out = Output()
        commands = split_line(line.rstrip("\r\n"))
        for words in commands:
            if words == ["quit"]:
                out.close = True
                return out
            if words[0] == "prompt":
                self.interactive = not self.interactive
                out.text += PROMPT if self.interactive else ""
                continue
            answer = execute(words, ctx)
            out.text += answer.text + (PROMPT if self.interactive else "\n")
            out.changed = out.changed or answer.changed
            out.log.extend(answer.log)
            out.errors += answer.error
        if not commands and self.interactive:
            out.text += PROMPT[1:]
        out.close = not self.interactive
        return out


def execute(words: list[str], ctx: Context) -> Answer:
    """Answer one command (its words)."""
    head = tuple(words[:3])
    if words[0] == "help":
        return Answer(help_text(words[1:]))
    if head[:2] == ("show", "info"):
        return Answer(show_info(ctx))
    if head[:2] == ("show", "stat"):
        return Answer(ctx.stat_csv().decode("utf-8", "replace"))
    if head == ("show", "servers", "state"):
        return show_servers_state(words[3:], ctx)
    if head[:2] == ("show", "sess"):
        return Answer(show_sess(ctx))
    if head[:2] == ("show", "table"):
        return show_table(words[2:], ctx)
    if head[:2] == ("clear", "table"):
        return clear_table(words[2:], ctx)
    if head[:2] == ("show", "health"):
        return Answer(show_health(ctx))
    if head[:2] == ("set", "server"):
        return set_server(words[2:], ctx)
    if head[:2] in (("disable", "server"), ("enable", "server")):
        target = AdminState.MAINT if words[0] == "disable" else AdminState.READY
        return _with_server(words[2:3], ctx, lambda s, n: _set_state(s, n, target, None, ctx))
    if head == ("shutdown", "sessions", "server"):
        return _with_server(words[3:4], ctx, lambda s, n: shutdown_sessions(s, n, ctx))
    return Answer(unknown_text(words))


# ---- help ------------------------------------------------------------------------------------


def _matched_words(words: list[str]) -> int:
    """How many leading words some command matches exactly (HAProxy's ``length``)."""
    best = 0
    for keywords, _, _ in USAGE:
        n = 0
        while n < len(keywords) and n < len(words) and keywords[n] == words[n]:
            n += 1
        best = max(best, n)
    return best


def _usage_lines(words: list[str], length: int) -> str:
    lines = [
        f"  {usage:<40}: {text}\n"
        for keywords, usage, text in USAGE
        if list(keywords[:length]) == words[:length]
    ]
    return "".join(lines) + ALWAYS


def help_text(words: list[str]) -> str:
    length = _matched_words(words)
    return "The following commands are valid at this level:\n" + _usage_lines(words, length)


def unknown_text(words: list[str]) -> str:
    length = _matched_words(words)
    first = words[0] if words else ""
    if length == 0:
        head = f"Unknown command: '{first}'. Please enter one of the following commands only:\n"
    else:
        head = (
            f"Unknown command: '{first}', but maybe one of the following ones is a better match:\n"
        )
    return head + _usage_lines(words, length)


# ---- show ------------------------------------------------------------------------------------


def _uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h{minutes:02d}m{secs:02d}s"


def show_info(ctx: Context) -> str:
    runtime = ctx.runtime
    uptime = max(int(ctx.wall - runtime.started_at), 0)
    frontends = runtime.frontends.values()
    fields = (
        ("Name", "lbproxy"),
        ("Version", ctx.version),
        ("Nbthread", 1),
        ("Nbproc", 1),
        ("Process_num", 1),
        ("Pid", ctx.pid),
        ("Uptime", _uptime(uptime)),
        ("Uptime_sec", uptime),
        ("Start_time_sec", int(runtime.started_at)),
        ("CurrConns", runtime.connections),
        ("CumConns", sum(f.total for f in frontends)),
        ("CumReq", sum(f.requests for f in frontends)),
        ("Stopping", int(runtime.shutting_down)),
        ("Node", ""),
    )
    return "".join(f"{name}: {value}\n" for name, value in fields)


def show_servers_state(args: list[str], ctx: Context) -> Answer:
    pools = ctx.runtime.pools
    only = args[0] if args else None
    if only is not None and only not in pools:
        return Answer("Can't find backend.\n")
    uptime = max(int(ctx.wall - ctx.runtime.started_at), 0)
    return Answer(admin_state.render(pools, ctx.now, uptime, only))


def show_sess(ctx: Context) -> str:
    lines: list[str] = []
    for key, session in ctx.runtime.sessions.items():
        client = session.client
        proto = "tcpv6" if ":" in client.ip else "tcpv4"
        pool, server = session.served_by() or ("<NONE>", "<none>")
        age = max(int(ctx.now - session.started), 0)
        lines.append(
            f"{key:#x}: proto={proto} src={client.ip}:{client.port} fe={session.frontend} "
            f"be={pool} srv={server} age={age}s\n"
        )
    return "".join(lines)


def show_health(ctx: Context) -> str:
    closed = [b.name for b in ctx.binds if not b.open]
    if ctx.runtime.shutting_down:
        return "not ok: stopping\n"
    if closed or not ctx.binds:
        return "not ok: not listening on " + (", ".join(closed) or "anything") + "\n"
    return f"ok: {len(ctx.binds)} bind(s) open\n"


# ---- the source-persistence table ------------------------------------------------------------


def _tables(ctx: Context) -> dict[str, PoolState]:
    return {name: p for name, p in ctx.runtime.pools.items() if p.source_table is not None}


def _table_head(name: str, pool: PoolState, now: float) -> str:
    table = pool.source_table
    assert table is not None
    used = sum(1 for _, _, seen in table.items() if now - seen <= table.timeout)
    return f"# table: {name}, type: ip, size:{table.size}, used:{used}\n"


def show_table(args: list[str], ctx: Context) -> Answer:
    tables = _tables(ctx)
    if not args:
        return Answer("".join(_table_head(n, p, ctx.now) for n, p in tables.items()))
    pool = tables.get(args[0])
    if pool is None or pool.source_table is None:
        return Answer("No such table\n")
    table = pool.source_table
    ids = {s.label: n for n, s in enumerate(pool.servers, start=1)}
    lines = [_table_head(args[0], pool, ctx.now)]
    for number, (key, label, seen) in enumerate(table.items(), start=1):
        remaining = int((seen + table.timeout - ctx.now) * 1000)
        if remaining < 0:
            continue
        lines.append(
            f"{number:#x}: key={key} use=0 exp={remaining} "
            f"server_id={ids.get(label, 0)} server_key={label}\n"
        )
    return Answer("".join(lines))


def clear_table(args: list[str], ctx: Context) -> Answer:
    if not args:
        return Answer("Require a table name.\n")
    pool = _tables(ctx).get(args[0])
    if pool is None or pool.source_table is None:
        return Answer("No such table\n")
    table = pool.source_table
    rest = args[1:]
    if rest and (rest[0] != "key" or len(rest) != 2):
        return Answer("Key value expected\n" if rest[0] == "key" else "Unknown action\n")
    keys = [key for key, _, _ in table.items() if not rest or key == rest[1]]
    for key in keys:
        table.forget(key)
    what = f"entry {rest[1]}" if rest else f"{len(keys)} entries"
    return Answer("", log=(f"{WHO}: table {args[0]}: cleared {what}",))


# ---- servers ---------------------------------------------------------------------------------


def find_server(arg: str | None, ctx: Context) -> tuple[PoolState, ServerState] | str:
    """The pool and server named ``pool/label``, or HAProxy's error text."""
    if not arg or "/" not in arg:
        return "Require 'backend/server'.\n"
    pool_name, _, label = arg.partition("/")
    pool = ctx.runtime.pools.get(pool_name)
    if pool is None:
        return "No such backend.\n"
    server = pool.server(label)
    if server is None:
        return "No such server.\n"
    return pool, server


def _with_server(
    args: list[str], ctx: Context, action: Callable[[ServerState, str], Answer]
) -> Answer:
    found = find_server(args[0] if args else None, ctx)
    if isinstance(found, str):
        return Answer(found)
    pool, server = found
    return action(server, f"{pool.pool.name}/{server.label}")


def set_server(args: list[str], ctx: Context) -> Answer:
    found = find_server(args[0] if args else None, ctx)
    if isinstance(found, str):
        return Answer(found)
    pool, server = found
    name = f"{pool.pool.name}/{server.label}"
    what = args[1] if len(args) > 1 else ""
    value = args[2] if len(args) > 2 else ""
    if what == "state":
        targets = {s.value: s for s in AdminState}
        if value not in targets:
            return Answer(STATE_USAGE)
        deadline: float | None = None
        if len(args) > 3:
            if targets[value] is not AdminState.DRAIN:
                return Answer(STATE_USAGE)
            seconds = parse_duration(args[3])
            if seconds is None:
                return Answer(f"Invalid drain deadline '{args[3]}': expected like 30s or 10m.\n")
            deadline = ctx.now + seconds
        return _set_state(server, name, targets[value], deadline, ctx)
    if what == "weight":
        return _set_weight(server, name, value)
    if what == "health":
        return _set_health(server, name, value, ctx)
    return Answer(SET_SERVER_USAGE)


def _set_state(
    server: ServerState, name: str, admin: AdminState, deadline: float | None, ctx: Context
) -> Answer:
    before = server.admin
    server.set_admin(admin, ctx.now)
    server.drain_deadline = deadline
    until = f" until its last client leaves, at most {deadline - ctx.now:g}s" if deadline else ""
    line = f"{WHO}: server {name} state {before.value} -> {admin.value}{until}"
    return Answer("", changed=True, log=(line,))


def parse_weight(text: str, configured: int) -> int | str:
    """HAProxy's ``server_parse_weight_change_request``: N (0..256) or N% of the configured."""
    if not text:
        return "Require <weight> or <weight%>.\n"
    digits = len(text) - len(text.lstrip("+-0123456789"))
    number = text[:digits]
    try:
        value = int(number)
    except ValueError:
        return "Empty weight string empty or preceded by garbage\n"
    rest = text[digits:]
    if rest == "%":
        if value < 0:
            return "Relative weight must be positive.\n"
        return min(configured * min(value, 25600) // 100, admin_state.MAX_WEIGHT)
    if value < 0 or value > admin_state.MAX_WEIGHT:
        return "Absolute weight can only be between 0 and 256 inclusive.\n"
    if rest:
        return "Trailing garbage in weight string\n"
    return value


def _set_weight(server: ServerState, name: str, text: str) -> Answer:
    weight = parse_weight(text, server.server.weight)
    if isinstance(weight, str):
        return Answer(weight)
    before = server.weight
    server.set_weight(weight)
    line = f"{WHO}: server {name} weight {before} -> {weight}"
    return Answer("", changed=True, log=(line,))


def _set_health(server: ServerState, name: str, value: str, ctx: Context) -> Answer:
    if value not in ("up", "down"):
        return Answer(HEALTH_USAGE)
    health = Health(value)
    before = server.health
    server.health = health
    # As HAProxy: up means fully up (rise reached), down means fully down; checks go on.
    server.consecutive_ok = server.check.rise if health is Health.UP else 0
    server.consecutive_fail = server.check.fall if health is Health.DOWN else 0
    if health is not before:
        server.counters.last_change = ctx.now
        ctx.runtime.server_changed(server)
    line = f"{WHO}: server {name} health forced {before.value} -> {health.value}"
    return Answer("", log=(line,))


def shutdown_sessions(server: ServerState, name: str, ctx: Context) -> Answer:
    target = (server.pool_name, server.label)
    sessions = [s for s in ctx.runtime.sessions.values() if s.served_by() == target]
    for session in sessions:
        session.shut()
    line = f"{WHO}: server {name}: shut {len(sessions)} session(s)"
    return Answer("", log=(line,))


# ---- drains with a deadline -------------------------------------------------------------------


def persistent_entries(pool: PoolState, label: str, now: float) -> int:
    """Unexpired source-persistence entries that name ``label``."""
    table = pool.source_table
    if table is None:
        return 0
    return sum(
        1 for _, named, seen in table.items() if named == label and now - seen <= table.timeout
    )


def finish_drains(runtime: Runtime, now: float) -> list[str]:
    """Put every server whose timed drain is over into maint; one log line each, saying why.
    The io calls this every second (DRAIN_CHECK_INTERVAL)."""
    lines: list[str] = []
    for name, pool in runtime.pools.items():
        for server in pool.servers:
            entries = persistent_entries(pool, server.label, now)
            end = drain_end(
                server.admin, server.drain_deadline, now, server.counters.active, entries
            )
            if end is None:
                continue
            server.set_admin(AdminState.MAINT, now)
            lines.append(f"{WHO}: server {name}/{server.label} drained ({end.value}): now maint")
    return lines


def parse_duration(text: str) -> float | None:
    """``10m``, ``30s``, ``500ms``, ``1h``, ``2d`` or plain seconds; None when not one."""
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :] or "s"
    if unit not in DURATION_UNITS:
        return None
    try:
        value = float(number)
    except ValueError:
        return None
    if not value >= 0 or value == float("inf"):
        return None
    return value * DURATION_UNITS[unit]
