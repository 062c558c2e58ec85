"""The failure table (errors.decide) as a table: every failure kind with the facts that matter.

The pipeline tests (test_failures.py, test_deadlines.py) cover the same rows end to end."""

from __future__ import annotations

import pytest

from l7proxy.errors import Facts, Failure, Outcome, decide

FRESH = Facts()
GET = Facts(idempotent=True)
STARTED = Facts(response_started=True, idempotent=True)


@pytest.mark.parametrize(
    ("failure", "facts", "expected"),
    [
        # The client's side: a request error of the frontend, never the server's.
        (Failure.HEAD_TIMEOUT, FRESH, Outcome(408, "cR", client_fault=True)),
        (Failure.BAD_REQUEST, FRESH, Outcome(400, "PR", client_fault=True)),
        (Failure.BAD_REQUEST, Facts(status_hint=431), Outcome(431, "PR", client_fault=True)),
        (Failure.BAD_REQUEST, Facts(status_hint=414), Outcome(414, "PR", client_fault=True)),
        (Failure.BAD_REQUEST, Facts(status_hint=505), Outcome(505, "PR", client_fault=True)),
        (Failure.BAD_REQUEST, Facts(status_hint=599), Outcome(400, "PR", client_fault=True)),
        (Failure.BODY_TIMEOUT, FRESH, Outcome(408, "cD", client_fault=True)),
        (Failure.BAD_BODY, Facts(status_hint=400), Outcome(400, "PD", client_fault=True)),
        (Failure.CLIENT_GONE, FRESH, Outcome(None, "CD")),
        # Routing and connecting: 503, and the connection stays usable.
        (Failure.NO_POOL, FRESH, Outcome(503, "SC", close=False)),
        (Failure.NO_SERVER, FRESH, Outcome(503, "SQ", close=False)),
        (Failure.QUEUE_TIMEOUT, GET, Outcome(503, "sQ", close=False)),
        (Failure.CONNECT_FAILED, GET, Outcome(503, "SC", close=False)),
        # The server's side.
        (Failure.SERVER_CLOSED, FRESH, Outcome(502, "SH", server_fault=True)),
        (Failure.SERVER_DOWN, FRESH, Outcome(502, "SH", server_fault=True)),
        (Failure.BAD_RESPONSE, GET, Outcome(502, "PH", server_fault=True)),
        (Failure.SERVER_TIMEOUT, GET, Outcome(504, "sH", server_fault=True)),
        (Failure.UPLOAD_FAILED, FRESH, Outcome(502, "SD", server_fault=True)),
        (Failure.INTERNAL, FRESH, Outcome(500, "PI")),
        # limits.max_body passed by a chunked body: counted as denied where it is raised.
        (Failure.TOO_LARGE, FRESH, Outcome(413, "PD")),
    ],
)
def test_before_any_response_byte(failure: Failure, facts: Facts, expected: Outcome) -> None:
    assert decide(failure, facts) == expected


@pytest.mark.parametrize("failure", [Failure.SERVER_CLOSED, Failure.SERVER_DOWN])
@pytest.mark.parametrize(
    ("facts", "resend"),
    [
        (Facts(idempotent=True, resends=0, max_resends=3), True),
        (Facts(idempotent=True, resends=2, max_resends=3), True),
        (Facts(idempotent=True, resends=3, max_resends=3), False),  # retries used up
        (Facts(idempotent=True, max_resends=0), False),  # retries: 0
        (Facts(idempotent=False, max_resends=3), False),  # a POST is never sent twice
        (Facts(idempotent=True, body_sent=True, max_resends=3), False),  # a PUT's body went
        (Facts(idempotent=True, response_started=True, max_resends=3), False),
    ],
)
def test_resend_only_what_is_safe_to_send_twice(
    failure: Failure, facts: Facts, resend: bool
) -> None:
    outcome = decide(failure, facts)
    assert outcome.resend is resend
    assert outcome.server_fault  # a resend still counts against the server that failed
    if resend:
        assert outcome.status is None
        assert not outcome.close


@pytest.mark.parametrize(
    "failure",
    [Failure.BAD_RESPONSE, Failure.SERVER_TIMEOUT, Failure.UPLOAD_FAILED, Failure.INTERNAL],
)
def test_never_resent(failure: Failure) -> None:
    assert not decide(failure, Facts(idempotent=True, max_resends=3)).resend


@pytest.mark.parametrize(
    ("failure", "termination", "abort"),
    [
        (Failure.SERVER_TIMEOUT, "sD", True),
        (Failure.SERVER_ABORTED, "SD", True),
        (Failure.BAD_RESPONSE, "PD", True),
        (Failure.BODY_TIMEOUT, "cD", True),
        (Failure.INTERNAL, "PI", True),
        (Failure.TOO_LARGE, "PD", True),
        (Failure.CLIENT_GONE, "CD", False),  # nobody left to see a reset
    ],
)
def test_after_the_response_began_the_client_sees_truncation(
    failure: Failure, termination: str, abort: bool
) -> None:
    outcome = decide(failure, STARTED)
    assert outcome.status is None  # never a second answer
    assert outcome.termination == termination
    assert outcome.abort is abort
    assert outcome.close


def test_every_failure_has_a_row() -> None:
    for failure in Failure:
        outcome = decide(failure, FRESH)
        assert len(outcome.termination) == 2
        assert outcome.status is None or 400 <= outcome.status <= 599
