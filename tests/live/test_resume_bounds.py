"""A `Last-Event-ID` past the ticket's last event: an error while it generates, `done` once it
has finished, never an endless stream of pings."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def one_worker(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """One worker: every GET lands where the ticket is generated (its LiveLog)."""
    return start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo:50",
    }, workers=1)


def _status_of(http: httpx.Client, url: str, last_event_id: int) -> httpx.Response:
    """The response to a GET with `last_event_id`, its body read only when it is not a stream."""
    with http.stream("GET", url, headers={"Last-Event-ID": str(last_event_id)}) as response:
        if not response.headers["content-type"].startswith("text/event-stream"):
            response.read()
        return response


def test_an_id_past_the_end_of_a_generating_ticket_is_400(one_worker: RelayServer) -> None:
    text = "an answer still being generated when the odd id arrives"
    with httpx.Client(base_url=one_worker.url, timeout=30) as http:
        ticket = new_ticket(http, text)
        first = read_stream(http, ticket["stream_url"], stop_after=2)
        assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "running"
        response = _status_of(http, ticket["stream_url"], 1000)
        assert response.status_code == 400, "a stream of pings instead of an error"
        assert_error_shape(response, 400, "invalid_last_event_id")
        # The id just sent still resumes, and the answer is whole.
        rest = read_stream(http, ticket["stream_url"], last_event_id=2)
    assert [int(i) for i, _, _ in first + rest] == list(range(1, len(first + rest) + 1))
    assert text_of(first + rest) == text and rest[-1][2]["status"] == "completed"


def test_an_id_on_a_ticket_not_started_is_400_and_starts_nothing(
    one_worker: RelayServer,
) -> None:
    with httpx.Client(base_url=one_worker.url, timeout=30) as http:
        ticket = new_ticket(http, "not started yet")
        response = _status_of(http, ticket["stream_url"], 3)
        assert response.status_code == 400, "a stream instead of an error"
        assert_error_shape(response, 400, "invalid_last_event_id")
        assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "pending"
        assert text_of(read_stream(http, ticket["stream_url"])) == "not started yet"


def test_an_id_past_done_of_a_finished_ticket_gets_done(one_worker: RelayServer) -> None:
    with httpx.Client(base_url=one_worker.url, timeout=30) as http:
        ticket = new_ticket(http, "finished")
        events = read_stream(http, ticket["stream_url"])
        past = int(events[-1][0]) + 5
        assert read_stream(http, ticket["stream_url"], last_event_id=past) == events[-1:]
