"""What one config sync carries, and its wire form (pure).

A bundle is the configuration text, the files it names (certificates and keys, by their path
relative to the configuration's folder, so both nodes may keep their files in different
folders), and the runtime server states as ``show servers state`` prints them. On the wire:
a 4-byte big-endian length, then UTF-8 JSON with file contents in base64. The answer has the
same framing: ``{"ok": bool, "lines": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import posixpath
from dataclasses import dataclass

from config.model import AdminState

from .admin_state import Saved

PROTOCOL = 1
MAX_MESSAGE = 32 * 1024 * 1024  # a configuration and its certificates, with room to spare
LENGTH_BYTES = 4
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class BundleError(Exception):
    """A bundle or answer that cannot be read; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class SyncedFile:
    name: str  # relative to the configuration's folder, '/'-separated
    data: bytes

    @property
    def mode(self) -> int:
        """Keys stay owner-only on the peer, whatever the sender's umask did."""
        return SECRET_MODE if b"PRIVATE KEY" in self.data else PUBLIC_MODE


@dataclass(frozen=True, slots=True)
class Bundle:
    sender: str  # the node name, for the receiver's log
    config: bytes
    files: tuple[SyncedFile, ...]
    states: str | None  # `show servers state`; None when the sender has no admin socket


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    ok: bool
    lines: tuple[str, ...]


def relative_name(path: str, config_dir: str) -> str:
    """``path`` as a name under ``config_dir``; a file elsewhere cannot be placed on the peer."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(config_dir))
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        raise BundleError(
            f"{path} is outside the configuration's folder {config_dir}; "
            "sync copies only files under it (name them with relative paths)"
        )
    return relative.replace(os.sep, "/")


def check_name(name: str) -> str:
    """A received name, refused unless it stays inside the folder it is written to."""
    normal = posixpath.normpath(name)
    if (
        not name
        or name.startswith("/")
        or normal.startswith("../")
        or normal in (".", "..")
        or "\\" in name
        or "\x00" in name
    ):
        raise BundleError(f"refused file name {name!r}: it must stay inside the folder")
    return normal


def frame(payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise BundleError(f"the message is {len(data)} bytes, more than {MAX_MESSAGE}")
    return len(data).to_bytes(LENGTH_BYTES, "big") + data


def frame_length(head: bytes) -> int:
    length = int.from_bytes(head, "big")
    if length > MAX_MESSAGE:
        raise BundleError(f"a message of {length} bytes announced, more than {MAX_MESSAGE}")
    return length


def encode_bundle(bundle: Bundle) -> bytes:
    return frame(
        {
            "protocol": PROTOCOL,
            "sender": bundle.sender,
            "config": _b64(bundle.config),
            "files": [{"name": f.name, "data": _b64(f.data)} for f in bundle.files],
            "states": bundle.states,
        }
    )


def decode_bundle(body: bytes) -> Bundle:
    message = _json(body)
    if message.get("protocol") != PROTOCOL:
        raise BundleError(f"protocol {message.get('protocol')!r}; this node speaks {PROTOCOL}")
    items = message.get("files")
    if not isinstance(items, list):
        raise BundleError("malformed bundle: no file list")
    try:
        files = tuple(
            SyncedFile(check_name(str(item["name"])), _unb64(item["data"])) for item in items
        )
        states = message["states"]
        return Bundle(
            sender=str(message["sender"]),
            config=_unb64(message["config"]),
            files=files,
            states=states if isinstance(states, str) else None,
        )
    except (KeyError, TypeError) as error:
        raise BundleError(f"malformed bundle: {error}") from None


def encode_answer(answer: SyncAnswer) -> bytes:
    return frame({"ok": answer.ok, "lines": list(answer.lines)})


def decode_answer(body: bytes) -> SyncAnswer:
    message = _json(body)
    lines = message.get("lines")
    if not isinstance(lines, list):
        raise BundleError("malformed answer")
    return SyncAnswer(ok=message.get("ok") is True, lines=tuple(str(line) for line in lines))


def state_commands(saved: list[Saved]) -> list[str]:
    """The runtime API lines that give the peer the sender's admin states and weights."""
    commands: list[str] = []
    for entry in saved:
        name = f"{entry.pool}/{entry.label}"
        commands.append(f"set server {name} weight {entry.weight}")
        commands.append(f"set server {name} state {_STATE_WORD[entry.admin]}")
    return commands


_STATE_WORD = {AdminState.READY: "ready", AdminState.DRAIN: "drain", AdminState.MAINT: "maint"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise BundleError("malformed bundle: file data is not text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise BundleError("malformed bundle: file data is not base64") from None


def _json(body: bytes) -> dict[str, object]:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"not a sync message: {error}") from None
    if not isinstance(message, dict):
        raise BundleError("not a sync message")
    return message
