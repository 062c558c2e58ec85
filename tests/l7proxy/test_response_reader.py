"""The response reader against h11: the same accept/reject decisions, heads, body bytes,
framing and reusability on the same bytes, fed in the same pieces (hypothesis).

h11 is the oracle: a CLIENT-role connection that sent the same request, read through its public
API only. Framing is compared by what it decides: where the body ends (at a length, at the
chunked end, or only at the close), which bytes it holds and which are left after it; the
reader's own framing value must agree with where its body ended. Responses are generated
from parts (status lines, header fields, bodies of each framing, interim responses, what comes
after), then mutated byte by byte, and cut into random pieces; the close is sent last unless the
response ended before. ``LBPROXY_FUZZ_EXAMPLES`` raises the number of examples for a run by hand.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from l7proxy.response_reader import (
    END,
    NEED_DATA,
    BadResponse,
    Framing,
    ResponseHead,
    ResponseReader,
)

EXAMPLES = int(os.environ.get("LBPROXY_FUZZ_EXAMPLES", "1500"))


class Seen(NamedTuple):
    heads: list[tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]]
    body: bytes
    outcome: str  # "end", "error", "switched" or "incomplete"
    at_close: bool  # the body ended only when the server closed (framing "until close")
    reusable: bool
    trailing: bytes


def through_h11(method: bytes, upgrade: bool, pieces: list[bytes], max_head: int) -> Seen:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
    headers = [(b"host", b"a")]
    if upgrade:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    conn.send(h11.Request(method=method, target=b"/", headers=headers))
    conn.send(h11.EndOfMessage())
    heads: list[tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]] = []
    body = bytearray()
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return Seen(heads, bytes(body), "error", False, False, b"")
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                assert conn.their_state is h11.SWITCHED_PROTOCOL
                trailing = bytes(conn.trailing_data[0])
                return Seen(heads, bytes(body), "switched", False, False, trailing)
            if isinstance(event, h11.InformationalResponse | h11.Response):
                heads.append(
                    (event.status_code, event.reason, event.http_version, list(event.headers))
                )
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                reusable = (
                    conn.our_state is h11.DONE
                    and conn.their_state is h11.DONE
                    and not any(conn.trailing_data)
                )
                trailing = bytes(conn.trailing_data[0])
                return Seen(heads, bytes(body), "end", piece == b"", reusable, trailing)
            else:
                raise AssertionError(f"unexpected event {event!r}")
    return Seen(heads, bytes(body), "incomplete", False, False, b"")


def through_reader(method: bytes, upgrade: bool, pieces: list[bytes], max_head: int) -> Seen:
    reader = ResponseReader(method, max_head=max_head, upgrade=upgrade)
    heads: list[tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]] = []
    body = bytearray()
    for piece in [*pieces, b""]:
        reader.receive_data(piece)
        while True:
            try:
                event = reader.next_event()
            except BadResponse:
                return Seen(heads, bytes(body), "error", False, False, b"")
            if event is NEED_DATA:
                if reader.switched:
                    trailing = reader.trailing_data
                    return Seen(heads, bytes(body), "switched", False, False, trailing)
                break
            if isinstance(event, ResponseHead):
                heads.append((event.status, event.reason, event.http_version, event.headers))
            elif event is END:
                at_close = piece == b""
                # The reader's own framing agrees with where its body ended.
                assert (reader.framing is Framing.CLOSE) == at_close
                if reader.framing is Framing.LENGTH:
                    assert len(body) == reader.length
                trailing = reader.trailing_data
                return Seen(heads, bytes(body), "end", at_close, reader.reusable(), trailing)
            else:
                assert isinstance(event, bytes | bytearray)
                body += event
    return Seen(heads, bytes(body), "incomplete", False, False, b"")


# ---- generating responses --------------------------------------------------------------------

EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])
VERSIONS = st.sampled_from([b"1.1", b"1.1", b"1.0", b"2.0", b"0.9", b"1.x", b"11"])
STATUSES = st.sampled_from(
    [200, 200, 201, 204, 301, 304, 404, 500, 999, 100, 101, 103, 199, 0, 99, 1000, 2]
)
REASONS = st.sampled_from(
    [b" OK", b" Not Found", b"", b" ", b" a\tb", b" \x80\xff", b" x\x00y", b"OK", b"  two  "]
)
NAMES = st.sampled_from(
    [
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"Connection",
        b"Set-Cookie",
        b"X-A",
        b"Server",
        b"Bad Name",
        b"",
        b"X\x80",
        b"Keep-Alive",
        b"Upgrade",
    ]
)
VALUES = st.sampled_from(
    [
        b"0",
        b"5",
        b"10",
        b" 5 ",
        b"5, 5",
        b"5,6",
        b"5,",
        b"-1",
        b"0x5",
        b"1" * 21,
        b"9" * 20,
        b"chunked",
        b"Chunked",
        b"gzip, chunked",
        b"identity",
        b"close",
        b"keep-alive",
        b"Keep-Alive, Close",
        b"upgrade",
        b"websocket",
        b"a=b; Path=/",
        b"",
        b"  ",
        b"v\x00",
        b"v\rw",
        b"\xe9t\xe9",
    ]
)


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        name, value = draw(NAMES), draw(VALUES)
        separator = draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
        lines.append(name + separator + value + draw(EOL))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tmore", b"  "])) + draw(EOL))
    return b"".join(lines)


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=12))
        size = draw(st.sampled_from([b"%x", b"%X", b"%04x", b"%x "])) % len(data)
        extension = draw(st.sampled_from([b"", b";a=b", b"; q", b";\x80"]))
        parts.append(size + extension + b"\r\n" + data + draw(st.sampled_from([b"\r\n", b"\n"])))
    parts.append(b"0" + draw(st.sampled_from([b"", b";x"])) + b"\r\n")
    trailer = draw(st.sampled_from([b"", b"T: v\r\n", b"Bad\r\n", b"T: v\n"]))
    parts.append(trailer + draw(st.sampled_from([b"\r\n", b"\n", b""])))
    return b"".join(parts)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 2))):  # interim responses first
        parts.append(b"HTTP/1.1 %d Info" % draw(st.sampled_from([100, 103, 101])) + b"\r\n\r\n")
    status = draw(STATUSES)
    parts.append(b"HTTP/" + draw(VERSIONS) + b" " + b"%03d" % status + draw(REASONS))
    parts.append(draw(EOL) + draw(header_lines()))
    body = draw(st.sampled_from(["none", "length", "chunked", "raw"]))
    if body == "length":
        data = draw(st.binary(max_size=20))
        parts.append(b"Content-Length: %d\r\n\r\n" % draw(st.integers(0, 24)) + data)
    elif body == "chunked":
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n" + draw(chunked_body()))
    else:
        parts.append(draw(EOL) + (draw(st.binary(max_size=20)) if body == "raw" else b""))
    parts.append(draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\n\r\n", b"x"])))
    return b"".join(parts)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(responses()))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["delete", "insert", "replace", "repeat"]))
        byte = draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"\t", b"\x7f", b"0"]))
        if how == "delete":
            del data[at]
        elif how == "insert":
            data[at:at] = byte
        elif how == "replace":
            data[at : at + 1] = byte
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@st.composite
def pieces_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, bool, list[bytes], int]:
    data = draw(st.one_of(responses(), mutated()))
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
    upgrade = draw(st.booleans())
    max_head = draw(st.sampled_from([65536, 65536, 60]))
    return method, upgrade, draw(pieces_of(data)), max_head


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
@example((b"GET", False, [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"], 65536))
@example((b"HEAD", False, [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"], 65536))
@example((b"GET", True, [b"HTTP/1.1 101 Switching\r\nUpgrade: ws\r\n\r\nfirst"], 65536))
@example((b"GET", False, [b"HTTP/1.0 200 OK\r\n\r\nuntil", b" close"], 65536))
@example((b"GET", False, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"], 60))
def test_reader_decides_as_h11_does(case: tuple[bytes, bool, list[bytes], int]) -> None:
    method, upgrade, pieces, max_head = case
    expected = through_h11(method, upgrade, pieces, max_head)
    assert through_reader(method, upgrade, pieces, max_head) == expected


# ---- the cases the differential test must reach, one by one ---------------------------------


def _seen(data: bytes, method: bytes = b"GET", *, upgrade: bool = False) -> Seen:
    seen = through_reader(method, upgrade, [data], 65536)
    assert seen == through_h11(method, upgrade, [data], 65536)
    return seen


@pytest.mark.parametrize(
    ("data", "method", "framing", "body", "reusable"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"GET",
            (Framing.LENGTH, 3),
            b"abc",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD", (Framing.LENGTH, 0), b"", True),
        (b"HTTP/1.1 204 No\r\nContent-Length: 3\r\n\r\n", b"GET", (Framing.LENGTH, 0), b"", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nab\r\n0\r\nT: v\r\n\r\n",
            b"GET",
            (Framing.CHUNKED, 0),
            b"ab",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", b"GET", (Framing.CLOSE, 0), b"until close", False),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"GET",
            (Framing.LENGTH, 1),
            b"x",
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 0\r\n\r\n",
            b"GET",
            (Framing.LENGTH, 0),
            b"",
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nmore",
            b"GET",
            (Framing.LENGTH, 0),
            b"",
            False,
        ),
    ],
)
def test_framing_and_reuse(
    data: bytes, method: bytes, framing: tuple[Framing, int], body: bytes, reusable: bool
) -> None:
    seen = _seen(data, method)
    assert seen.outcome == "end"
    assert (seen.body, seen.reusable) == (body, reusable)
    assert seen.at_close == (framing[0] is Framing.CLOSE)
    reader = ResponseReader(method)
    reader.receive_data(data)
    while not isinstance(reader.next_event(), ResponseHead):
        pass
    assert (reader.framing, reader.length) == framing


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5,6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\n\r\n",  # no upgrade was offered
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        b" HTTP/1.1",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # then the close
        b"HTTP/1.1 100 Continue\r\n\r\n",  # then the close
        b"",
    ],
)
def test_refusals(data: bytes) -> None:
    assert _seen(data).outcome == "error"


def test_obsolete_folding_is_unfolded_as_h11_does() -> None:
    seen = _seen(b"HTTP/1.1 200 OK\r\nX-A: one\r\n \t two\r\nContent-Length: 0\r\n\r\n")
    assert seen.heads[0][3] == [(b"x-a", b"one two"), (b"content-length", b"0")]


def test_interim_heads_come_before_the_final_one() -> None:
    seen = _seen(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert [head[0] for head in seen.heads] == [100, 200]


def test_a_101_to_an_upgrade_leaves_the_new_protocol_unread() -> None:
    seen = _seen(b"HTTP/1.1 101 Go\r\nUpgrade: websocket\r\n\r\n\x81\x00", upgrade=True)
    assert (seen.outcome, seen.trailing) == ("switched", b"\x81\x00")


def test_a_head_longer_than_the_limit_is_refused_before_it_ends() -> None:
    reader = ResponseReader(b"GET", max_head=100)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200)
    with pytest.raises(BadResponse, match="too long"):
        reader.next_event()


def test_a_body_that_fills_the_buffer_is_handed_on_as_it_came() -> None:
    reader = ResponseReader(b"GET")
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
    assert isinstance(reader.next_event(), ResponseHead)
    reader.receive_data(b"abcd")
    pieces = [reader.next_event()]
    reader.receive_data(b"efgh")
    pieces += [reader.next_event(), reader.next_event()]
    assert pieces == [b"abcd", b"efgh", END]
    assert reader.reusable()
