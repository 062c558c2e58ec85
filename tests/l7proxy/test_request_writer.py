"""The request writer against h11: the same bytes for the same request head and body, as
h11's client side wrote them before (hypothesis). The fields are ones h11 accepted from a
client (lower-case names, validated values), split the way exchange.forward_request_split splits
them."""

from __future__ import annotations

import os

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from l7proxy.chunked import LAST_CHUNK, chunk
from l7proxy.request_writer import request_head

EXAMPLES = int(os.environ.get("LBPROXY_FUZZ_EXAMPLES", "1500"))
Headers = list[tuple[bytes, bytes]]

TOKENS = st.sampled_from([b"x-a", b"accept", b"cookie", b"x-forwarded-for", b"user-agent"])
VALUES = st.sampled_from([b"1", b"a b", b"text/html, */*", b"\xe9t\xe9", b"SRV=web1; x=y", b""])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes, Headers, Headers, list[bytes], bool]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"PATCH"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h/x", b"/%20"]))
    pieces = draw(st.lists(st.binary(min_size=1, max_size=9), max_size=3))
    chunked = draw(st.booleans()) if pieces else False
    declared_empty = draw(st.booleans())  # Content-Length: 0 on a request without a body
    semantic: Headers = [(b"host", draw(st.sampled_from([b"a", b"a:8080", b"[::1]:80"])))]
    if chunked:
        semantic.append((b"transfer-encoding", b"chunked"))
    elif pieces or declared_empty:
        semantic.append((b"content-length", b"%d" % sum(map(len, pieces))))
    if draw(st.booleans()):
        semantic.append((b"expect", b"100-continue"))
    semantic = draw(st.permutations(semantic))
    rest = draw(st.lists(st.tuples(TOKENS, VALUES), max_size=5))
    return method, target, semantic, rest, pieces, chunked


@settings(max_examples=EXAMPLES, deadline=None)
@given(requests())
def test_writer_writes_what_h11_wrote(
    case: tuple[bytes, bytes, Headers, Headers, list[bytes], bool],
) -> None:
    method, target, semantic, rest, pieces, chunked = case
    conn = h11.Connection(h11.CLIENT)
    head = conn.send(h11.Request(method=method, target=target, headers=[*semantic, *rest]))
    expected = [head or b""]
    expected += [conn.send(h11.Data(data=piece)) or b"" for piece in pieces]
    expected.append(conn.send(h11.EndOfMessage()) or b"")
    written = [request_head(method, target, semantic, rest)]
    if chunked:
        written += [chunk(piece) for piece in pieces]
        written.append(LAST_CHUNK)
    else:
        written += pieces
    assert b"".join(written) == b"".join(expected)
