"""An Outcome fits the ticket's columns whatever the upstream sent."""

from __future__ import annotations

import json

from relay.errors import ErrorCode
from relay.events import MAX_CODE, Outcome
from relay.models import TicketStatus


def test_an_over_long_finish_reason_is_cut_and_nul_replaced() -> None:
    outcome = Outcome(TicketStatus.COMPLETED, "stop\x00" + "x" * 100)
    assert outcome.finish_reason == "stop\ufffd" + "x" * (MAX_CODE - 5)
    assert json.loads(outcome.done_payload())["finish_reason"] == outcome.finish_reason


def test_a_finish_reason_or_usage_of_another_type_is_dropped() -> None:
    odd: dict = {"finish_reason": {"a": 1}, "usage": "lots"}
    outcome = Outcome(TicketStatus.COMPLETED, odd["finish_reason"], odd["usage"])
    assert (outcome.finish_reason, outcome.usage) == (None, None)


def test_an_error_fits_its_columns() -> None:
    outcome = Outcome(TicketStatus.FAILED, "error",
                      error={"code": "c" * 100, "message": "m\x00" * 1000})
    assert outcome.error == {"code": "c" * MAX_CODE, "message": "m\ufffd" * 500}


def test_a_fitting_error_keeps_its_code() -> None:
    error = {"code": ErrorCode.UPSTREAM_TIMEOUT, "message": "The upstream sent nothing."}
    assert Outcome(TicketStatus.FAILED, "error", error=error).error["code"] is (  # type: ignore[index]
        ErrorCode.UPSTREAM_TIMEOUT)
