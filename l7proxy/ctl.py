"""``lbproxy ctl``: send one runtime API command line to the admin socket and print the answer.

``lbproxy ctl set server www/web1 state drain`` is ``echo "set server www/web1 state drain" |
socat stdio /run/lbproxy/admin.sock`` without socat; ``lbproxy ctl health`` exits 0 only when
the proxy answers and every bind is open (a keepalived ``vrrp_script``).
Exit status: 0 answered, 1 an error answer or no answer (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import socket
import sys

from . import admin

DEFAULT_SOCKET = "/run/lbproxy/admin.sock"
TIMEOUT = 10.0  # the proxy answers at once; this bounds a hung one (same as its LINE_TIMEOUT)
MAX_ANSWER = 64 * 1024 * 1024  # show stat of a large configuration is well below this

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Unreachable(Exception):
    """No answer from the admin socket; the message says why, in one line."""


def ask(path: str, line: str, timeout: float = TIMEOUT) -> str:
    """Send ``line`` and return the whole answer (the proxy closes after one line)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as error:
            raise Unreachable(f"cannot connect to {path}: {error.strerror or error}") from None
        chunks: list[bytes] = []
        size = 0
        try:
            sock.sendall(line.encode() + b"\n")
            while size <= MAX_ANSWER:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
        except OSError as error:
            raise Unreachable(f"{path}: {error.strerror or error}") from None
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        sock.close()


def _socket_path(args: argparse.Namespace) -> str | None:
    if args.socket:
        return str(args.socket)
    if not args.config:
        return DEFAULT_SOCKET
    from config.loader import ConfigError, load_file

    try:
        config = load_file(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None
    settings = config.global_.admin_socket
    if settings is None:
        print(f"lbproxy ctl: {args.config} has no global.admin_socket", file=sys.stderr)
        return None
    return settings.path


def answers_error(answer: str) -> bool:
    """Some command of the line got an error answer (answers end with an empty line)."""
    return any(admin.is_error(part.lstrip("\n")) for part in answer.split("\n\n"))


def run(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    if not words:
        print("lbproxy ctl: say which command, e.g. 'show info' or 'health'", file=sys.stderr)
        return EXIT_USAGE
    path = _socket_path(args)
    if path is None:
        return EXIT_FAILED
    health = words == ["health"]
    line = "show health" if health else " ".join(words)
    try:
        answer = ask(path, line)
    except Unreachable as error:
        print(f"lbproxy ctl: {error}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(answer)
    if health:
        return EXIT_OK if answer.startswith("ok") else EXIT_FAILED
    return EXIT_FAILED if answers_error(answer) else EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="send a runtime API command to the admin socket (like socat to HAProxy's)",
        description="Send COMMAND to the admin socket and print the answer. "
        "'health' exits 0 when the proxy answers and every bind is open.",
    )
    ctl.add_argument("-s", "--socket", metavar="SOCKET", help=f"default {DEFAULT_SOCKET}")
    ctl.add_argument(
        "-c", "--config", metavar="FILE", help="take the socket path from this configuration"
    )
    ctl.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND")
    ctl.set_defaults(func=run)
