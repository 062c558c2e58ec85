"""The response writer against h11: the same bytes for the same relayed response, and the same
decision about the connection's end (hypothesis).

h11 is the oracle: a SERVER-role connection that read the same request (method, version,
Connection) and sends the response as relay.py sent it before: the framing fields in the event,
the rest spliced in, the body piece by piece. ``LBPROXY_FUZZ_EXAMPLES`` raises the number of
examples for a run by hand.
"""

from __future__ import annotations

import os

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l7proxy.chunked import LAST_CHUNK, chunk
from l7proxy.response_writer import Body, reply_head

Headers = list[tuple[bytes, bytes]]


def splice_head(head: bytes, rest: Headers) -> bytes:
    """``rest`` added to a head h11 wrote, as relay.py did before it wrote heads itself."""
    if not rest:
        return head
    return b"\r\n".join([head[:-4], *(name + b": " + value for name, value in rest), b"", b""])


EXAMPLES = int(os.environ.get("LBPROXY_FUZZ_EXAMPLES", "1500"))


def through_h11(
    status: int,
    reason: bytes,
    semantic: Headers,
    rest: Headers,
    request: bytes,
    pieces: list[bytes],
) -> tuple[bytes, bool]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    response = h11.Response(status_code=status, reason=reason, headers=semantic)
    out = [splice_head(conn.send(response) or b"", rest)]
    for piece in pieces:
        out.append(conn.send(h11.Data(data=piece)) or b"")
    out.append(conn.send(h11.EndOfMessage()) or b"")
    return b"".join(out), conn.our_state is h11.MUST_CLOSE


def through_writer(
    status: int,
    reason: bytes,
    semantic: Headers,
    rest: Headers,
    method: bytes,
    version: bytes,
    keep_alive: bool,
    pieces: list[bytes],
) -> tuple[bytes, bool]:
    reply = reply_head(
        status, reason, semantic, rest, method=method, version=version, keep_alive=keep_alive
    )
    out = [reply.head]
    if reply.body is Body.CHUNKED:
        out += [chunk(piece) for piece in pieces]
        out.append(LAST_CHUNK)
    elif reply.body is Body.AS_IS:
        out += pieces
    return b"".join(out), reply.close


CONNECTION = st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, Close", b"x, close"])


@st.composite
def cases(
    draw: st.DrawFn,
) -> tuple[int, bytes, Headers, Headers, bytes, bytes, bytes, bool, list[bytes]]:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE"]))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    connection = draw(CONNECTION)
    request = b"%s / HTTP/%s\r\nHost: a\r\n" % (method, version)
    if connection is not None:
        request += b"Connection: " + connection + b"\r\n"
    request += b"\r\n"
    tokens = {t.strip().lower() for t in (connection or b"").split(b",")}
    keep_alive = version == b"1.1" and b"close" not in tokens
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 404, 500, 503, 299]))
    reason = draw(st.sampled_from([b"OK", b"", b"Not Found", b"a b"]))
    pieces = draw(st.lists(st.binary(max_size=9), max_size=3))
    bodyless = method == b"HEAD" or status in (204, 304)
    if bodyless:
        pieces = []
    framing = draw(st.sampled_from(["length", "chunked", "none", "both"]))
    semantic: Headers = []
    if framing in ("length", "both") or (bodyless and draw(st.booleans())):
        semantic.append((b"content-length", b"%d" % sum(map(len, pieces))))
    if framing in ("chunked", "both"):
        semantic.append((b"transfer-encoding", b"chunked"))
    if draw(st.booleans()):
        semantic.append((b"connection", b"close"))  # relay.py adds it for an early answer
    if draw(st.integers(0, 9)) == 0:
        semantic.insert(0, (b"host", b"odd"))  # a response may carry one; h11 writes it first
    semantic = draw(st.permutations(semantic))
    rest = draw(
        st.lists(st.sampled_from([(b"server", b"x"), (b"set-cookie", b"a=b"), (b"etag", b"1")]))
    )
    return status, reason, semantic, rest, method, version, request, keep_alive, pieces


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases())
def test_writer_writes_what_h11_writes(
    case: tuple[int, bytes, Headers, Headers, bytes, bytes, bytes, bool, list[bytes]],
) -> None:
    status, reason, semantic, rest, method, version, request, keep_alive, pieces = case
    expected = through_h11(status, reason, list(semantic), rest, request, pieces)
    written = through_writer(
        status, reason, list(semantic), rest, method, version, keep_alive, pieces
    )
    assert written == expected


@pytest.mark.parametrize(
    ("version", "semantic", "body", "close"),
    [
        (b"1.1", [(b"content-length", b"3")], Body.AS_IS, False),
        (b"1.1", [], Body.CHUNKED, False),
        (b"1.1", [(b"transfer-encoding", b"chunked")], Body.CHUNKED, False),
        (b"1.0", [(b"transfer-encoding", b"chunked")], Body.AS_IS, True),
        (b"1.0", [(b"content-length", b"3")], Body.AS_IS, True),
    ],
)
def test_framing_for_each_client(
    version: bytes, semantic: Headers, body: Body, close: bool
) -> None:
    reply = reply_head(
        200, b"OK", semantic, [], method=b"GET", version=version, keep_alive=version == b"1.1"
    )
    assert (reply.body, reply.close) == (body, close)


def test_head_and_bodyless_statuses_send_no_body() -> None:
    for method, status in ((b"HEAD", 200), (b"GET", 204), (b"GET", 304)):
        reply = reply_head(
            status,
            b"",
            [(b"content-length", b"5")],
            [],
            method=method,
            version=b"1.1",
            keep_alive=True,
        )
        assert reply.body is Body.NONE
