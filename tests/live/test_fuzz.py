"""Schemathesis against a live relay (gunicorn, gevent workers, the built-in mock upstream),
generated from the OpenAPI document the relay serves: no 5xx, every response documented, in its
documented content type and schema (so every error in the contract's shape), and the server
healthy afterwards.

Bounded: a few examples per operation in the fuzzing phase, plus schemathesis' examples and
coverage phases, which are deterministic. A failure prints the request that reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.resources import files
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (  # type: ignore[attr-defined]
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from relay.errors import ErrorCode

from ..helpers import new_ticket, read_stream, text_of
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(300)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25
STATEFUL_SCENARIOS = 30


@pytest.fixture(scope="module")
def fuzzed_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    """A relay of its own (a fuzzed store is no other test's), on the built-in mock."""
    return start_relay({"RELAY_DEFAULT_MODEL": "mock-echo"})


@pytest.fixture(scope="module")
def fuzz_session() -> Iterator[requests.Session]:
    """One cookie jar for every generated request: the tickets and conversations that some of
    them create are then the caller's own for the others."""
    with requests.Session() as session:
        yield session


# The packaged document, which the server serves as it is (tests/test_openapi.py). Loaded at
# collection, not from the live server: schemathesis' fixture-based loading runs every operation
# as a subtest of one test, which pytest 9 no longer lets it name.
schema = schemathesis.openapi.from_path(str(files("relay").joinpath("openapi.json")))


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, fuzzed_relay: RelayServer, fuzz_session: requests.Session
) -> None:
    response = case.call_and_validate(
        base_url=fuzzed_relay.url, session=fuzz_session, checks=CHECKS, timeout=30
    )
    assert_error_shape(response)


def test_linked_operations_answer_as_documented(
    fuzzed_relay: RelayServer, fuzz_session: requests.Session
) -> None:
    """Sequences that follow the document's links: a ticket made by `POST /new`, then streamed,
    shown or cancelled; its conversation shown, renamed or deleted."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": fuzzed_relay.url, "session": fuzz_session, "timeout": 30}

        def validate_response(
            self, response: Any, case: schemathesis.Case, additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            assert_error_shape(response)

    Workflow.run(settings=settings(
        max_examples=STATEFUL_SCENARIOS, stateful_step_count=6, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    ))


def assert_error_shape(response: Any) -> None:
    """Every error: `{"error": {"code", "message"}}` with a code of relay's vocabulary."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] in set(ErrorCode), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_the_server_is_healthy_afterwards(fuzzed_relay: RelayServer) -> None:
    with httpx.Client(base_url=fuzzed_relay.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        prompt = "still answering after the fuzzing"
        events = read_stream(client, new_ticket(client, prompt)["stream_url"])
        assert text_of(events) == prompt
        assert events[-1][1:] == ("done", {"status": "completed", "finish_reason": "stop",
                                          "usage": events[-1][2]["usage"]})
    assert "Traceback" not in fuzzed_relay.log()
