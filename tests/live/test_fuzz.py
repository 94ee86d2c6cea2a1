"""Schemathesis against a live relay (gunicorn, gevent workers, the built-in mock upstream),
generated from relay's OpenAPI document, on SQLite and on PostgreSQL: no 5xx, every response
documented, in its documented content type and schema (so every error in the contract's shape),
every event stream ended by its terminal event, and the server healthy afterwards.

Bounded: a few examples per operation in schemathesis' fuzzing phase plus its deterministic
examples and coverage phases, then a few sequences that follow the document's links. A failure
prints a curl command that reproduces it.
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

pytestmark = [
    pytest.mark.timeout(300),
    # The fuzzer's requests.Session drops some pooled connections (after a HEAD of a stream)
    # without closing them, and the garbage collector's ResourceWarning then fires inside
    # whichever hypothesis draw runs next (once in a full run here). It is the client's socket;
    # the server's answers are what the checks judge, and its health is asserted afterwards.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 200
STATEFUL_SCENARIOS = 150
STATEFUL_STEPS = 6
# The mock answers at once: a response not over within this many seconds never ends (an event
# stream is cut there, and fails `assert_stream_ended`).
CALL_TIMEOUT = 20
_HYPOTHESIS = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

# The packaged document, which the server serves as it is (tests/test_openapi.py). Loaded at
# collection, not from the live server: schemathesis' fixture-based loading runs every operation
# as a subtest of one test, which pytest 9 no longer lets it name.
schema = schemathesis.openapi.from_path(
    str(files("relay").joinpath("openapi.json")),
    config=schemathesis.Config.from_dict({
        "request-timeout": CALL_TIMEOUT, "max-stream-events": 1_000_000,
    }),
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def fuzzed_relay(
    request: pytest.FixtureRequest, start_relay: Callable[..., RelayServer]
) -> Iterator[RelayServer]:
    """A relay of its own (a fuzzed store is no other test's) on the built-in mock, with its
    store on SQLite or on a new PostgreSQL database (which refuses what SQLite takes: NUL)."""
    env = {"RELAY_DEFAULT_MODEL": "mock-echo"}
    if request.param == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("migrated_postgres")
    server = start_relay(env)
    yield server
    server.stop()  # before its database is dropped


@pytest.fixture(scope="module")
def fuzz_session(fuzzed_relay: RelayServer) -> Iterator[requests.Session]:
    """One cookie jar for every generated request: the tickets and conversations that some of
    them create are then the caller's own for the others."""
    with requests.Session() as session:
        yield session


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, **_HYPOTHESIS)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, fuzzed_relay: RelayServer, fuzz_session: requests.Session
) -> None:
    response = case.call_and_validate(
        base_url=fuzzed_relay.url, session=fuzz_session, checks=CHECKS
    )
    assert_error_shape(response)
    assert_stream_ended(response)


def test_linked_operations_answer_as_documented(
    fuzzed_relay: RelayServer, fuzz_session: requests.Session
) -> None:
    """Sequences that follow the document's links: a ticket made by `POST /new`, then streamed,
    shown or cancelled; its conversation shown, renamed or deleted."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": fuzzed_relay.url, "session": fuzz_session}

        def validate_response(
            self, response: Any, case: schemathesis.Case, additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            assert_error_shape(response)
            assert_stream_ended(response)

    Workflow.run(settings=settings(
        max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS, **_HYPOTHESIS
    ))


def test_the_server_is_healthy_afterwards(fuzzed_relay: RelayServer) -> None:
    with httpx.Client(base_url=fuzzed_relay.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        prompt = "still answering after the fuzzing"
        events = read_stream(client, new_ticket(client, prompt)["stream_url"])
        assert text_of(events) == prompt
        assert events[-1][1] == "done" and events[-1][2]["status"] == "completed"
    assert "Traceback" not in fuzzed_relay.log()


def assert_error_shape(response: Any) -> None:
    """Every error: `{"error": {"code", "message"}}` with a code of relay's vocabulary."""
    if response.status_code < 400 or response.request.method == "HEAD":
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] in set(ErrorCode), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def assert_stream_ended(response: Any) -> None:
    """An event stream ends, with exactly one `done` (`data: [DONE]` under `/v1/`) last."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.request.method == "HEAD" or not content_type.startswith("text/event-stream"):
        return
    assert not response.stream_cut_short, f"{response.request.url} did not end"
    blocks = [block for block in response.content.split(b"\n\n") if block.strip()]
    if "/v1/" in response.request.url:
        assert blocks[-1] == b"data: [DONE]" and blocks.count(b"data: [DONE]") == 1, blocks[-3:]
        return
    ends = [block for block in blocks if block.startswith(b"event: done\n")]
    assert len(ends) == 1 and blocks[-1] == ends[0], blocks[-3:]
