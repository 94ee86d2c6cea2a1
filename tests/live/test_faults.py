"""Upstream faults and dead workers end the stream with `failed`, recorded, the relay healthy."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer, free_port

pytestmark = pytest.mark.timeout(60)

FAULTS = [
    ("status:429", "upstream_rate_limited", "429", 0),
    ("status:500", "upstream_error", "500", 0),
    ("drop:3", "upstream_disconnected", "", 3),
    ("stall:2", "upstream_timeout", "3 seconds", 2),
    ("malformed:2", "upstream_bad_response", "malformed", 2),
    ("error-event:2", "upstream_error", "reported an error mid-answer", 2),
    ("truncated:2", "upstream_disconnected", "before it finished", 2),
]


@pytest.mark.parametrize(("model", "code", "in_message", "chunks"), FAULTS,
                         ids=[f[0] for f in FAULTS])
def test_upstream_fault_ends_with_failed_and_is_recorded(
    client: httpx.Client, model: str, code: str, in_message: str, chunks: int
) -> None:
    text = "abcdefghijklmnopqrstuvwxyz"
    ticket = new_ticket(client, text, model=model)
    events = read_stream(client, ticket["stream_url"])
    *deltas, done = events
    assert done[1] == "done" and done[2]["status"] == "failed"
    assert done[2]["error"]["code"] == code
    assert in_message in done[2]["error"]["message"]
    assert text_of(deltas) == text[: 3 * chunks]
    assert [int(i) for i, _, _ in events] == list(range(1, chunks + 2))
    body = client.get(f"/tickets/{ticket['id']}").json()
    assert body["status"] == "failed" and body["error"]["code"] == code
    healthy = new_ticket(client, "still serving")
    assert text_of(read_stream(client, healthy["stream_url"])) == "still serving"


def test_unreachable_upstream_fails_cleanly(start_relay: Callable[..., RelayServer]) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "RELAY_DEFAULT_MODEL": "echo",
    }, workers=1)
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        ticket = new_ticket(http, "hello?")
        done = read_stream(http, ticket["stream_url"])[-1]
        assert done[2]["status"] == "failed"
        assert done[2]["error"]["code"] == "upstream_unreachable"
        assert http.get("/healthz").status_code == 200
        models = http.get("/v1/models")
        assert_error_shape(models, 502, "upstream_unreachable")


def test_worker_death_fails_the_ticket_for_readers_elsewhere(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path_factory
) -> None:
    shared = tmp_path_factory.mktemp("shared-db")
    env = {
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_LEASE_SECONDS": "1.5",
    }
    doomed = start_relay(env, workers=1, instance=shared)
    survivor = start_relay(env, workers=1, instance=shared)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=doomed.url, timeout=30) as http:
        ticket = new_ticket(http, f"{tag} " + "x" * 600, model="echo:50")
        first = read_stream(http, ticket["stream_url"], stop_after=4)
        cookies = dict(http.cookies)
    doomed.kill()
    with httpx.Client(base_url=survivor.url, timeout=30, cookies=cookies) as http:
        rest = read_stream(http, ticket["stream_url"], last_event_id=4)
        assert rest[-1][1] == "done" and rest[-1][2]["status"] == "failed"
        assert rest[-1][2]["error"]["code"] == "worker_lost"
        events = first + rest
        assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
        assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "failed"
        healthy = new_ticket(http, "after the crash")
        assert text_of(read_stream(http, healthy["stream_url"])) == "after the crash"


def test_cross_host_resume_from_the_database(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path_factory
) -> None:
    shared = tmp_path_factory.mktemp("shared-db2")
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
           "RELAY_DEFAULT_MODEL": "echo"}
    host_a = start_relay(env, workers=1, instance=shared)
    host_b = start_relay(env, workers=1, instance=shared)
    text = "resumed on another host, " * 8
    with httpx.Client(base_url=host_a.url, timeout=30) as a:
        ticket = new_ticket(a, text, model="echo:15")
        first = read_stream(a, ticket["stream_url"], stop_after=6)
        cookies = dict(a.cookies)
    with httpx.Client(base_url=host_b.url, timeout=30, cookies=cookies) as b:
        rest = read_stream(b, ticket["stream_url"], last_event_id=6)
        assert text_of(first + rest) == text
        assert [int(i) for i, _, _ in first + rest] == list(range(1, len(first + rest) + 1))

        # A cancel sent to host A stops the producer on host B while its upstream is silent:
        # without Redis, B's writer finds the flag within RELAY_POLL_MS.
        tag = uuid.uuid4().hex[:8]
        cancel_ticket = new_ticket(b, f"{tag} " + "z" * 300, model="stall:3")
        received: list = []
        reader = threading.Thread(
            target=lambda: received.extend(read_stream(b, cancel_ticket["stream_url"]))
        )
        reader.start()
        time.sleep(0.5)
        with httpx.Client(base_url=host_a.url, timeout=30, cookies=cookies) as a:
            assert a.post(f"/sse/{cancel_ticket['id']}/cancel").status_code == 202
        reader.join(15)
    assert received[-1][2]["status"] == "cancelled"
    assert text_of(received) == (f"{tag} " + "z" * 300)[:9]
    call = upstream.calls_with(tag)[0]
    assert call.ended.wait(5) and call.disconnected


def test_cancel_on_disconnect_setting_stops_generation(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_CANCEL_ON_DISCONNECT": "true",
        "RELAY_DISCONNECT_GRACE_SECONDS": "0.5",
    }, workers=1)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        ticket = new_ticket(http, f"{tag} " + "y" * 900, model="echo:30")
        assert len(read_stream(http, ticket["stream_url"], stop_after=3)) == 3
        call = upstream.calls_with(tag)[0]
        assert call.ended.wait(10) and call.disconnected and not call.completed
        done = read_stream(http, ticket["stream_url"])[-1]
        assert done[2]["status"] == "cancelled"
