"""The sync bundle's wire form and names (pure)."""

from __future__ import annotations

import pytest

from config.model import AdminState
from l7proxy.admin_state import Saved
from l7proxy.ha_bundle import (
    LENGTH_BYTES,
    Bundle,
    BundleError,
    SyncAnswer,
    SyncedFile,
    check_name,
    decode_answer,
    decode_bundle,
    encode_answer,
    encode_bundle,
    frame_length,
    relative_name,
    state_commands,
)


def test_a_bundle_goes_and_comes_back() -> None:
    bundle = Bundle(
        "lb1",
        b"virtual_servers: []\n",
        (
            SyncedFile("certs/site.pem", b"CERT"),
            SyncedFile("certs/site.key", b"-----BEGIN PRIVATE KEY"),
        ),
        "1\n",
    )
    wire = encode_bundle(bundle)
    assert frame_length(wire[:LENGTH_BYTES]) == len(wire) - LENGTH_BYTES
    back = decode_bundle(wire[LENGTH_BYTES:])
    assert back == bundle
    assert [f.mode for f in back.files] == [0o644, 0o600]
    answer = SyncAnswer(False, ("lb2 keeps its configuration:", "lb.yaml:3:5: x: bad"))
    assert decode_answer(encode_answer(answer)[LENGTH_BYTES:]) == answer


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "..", "", "a\\b"])
def test_names_must_stay_inside(name: str) -> None:
    with pytest.raises(BundleError, match="refused file name"):
        check_name(name)


def test_names_inside_are_kept() -> None:
    assert check_name("certs/./site.pem") == "certs/site.pem"


def test_files_outside_the_config_folder_are_not_sent() -> None:
    assert relative_name("/etc/lbproxy/certs/a.pem", "/etc/lbproxy") == "certs/a.pem"
    with pytest.raises(BundleError, match="outside the configuration's folder"):
        relative_name("/etc/ssl/a.pem", "/etc/lbproxy")


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"protocol": 9}', b'{"protocol": 1}'])
def test_garbage_is_refused(body: bytes) -> None:
    with pytest.raises(BundleError):
        decode_bundle(body)


def test_a_huge_frame_is_refused_before_reading_it() -> None:
    with pytest.raises(BundleError, match="more than"):
        frame_length((1 << 31).to_bytes(LENGTH_BYTES, "big"))


def test_states_become_runtime_commands() -> None:
    saved = [Saved("web", "rs1", AdminState.DRAIN, 1), Saved("web", "rs2", AdminState.READY, 5)]
    assert state_commands(saved) == [
        "set server web/rs1 weight 1",
        "set server web/rs1 state drain",
        "set server web/rs2 weight 5",
        "set server web/rs2 state ready",
    ]
