"""Two relay hosts on real PostgreSQL and Redis: resume, fan-out and cancel across hosts."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import openai
import pytest
import redis

from ..helpers import new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = [pytest.mark.timeout(90), pytest.mark.postgres, pytest.mark.redis]

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def hosts(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str
) -> tuple[RelayServer, RelayServer]:
    redis.Redis.from_url(REDIS_URL).ping()
    env = {
        "DATABASE_URL": migrated_postgres, "REDIS_URL": REDIS_URL, "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo",
        "RELAY_SECRET_KEY": "shared-secret-of-the-two-hosts-0123456789",
        # Far above a test's length: only Redis can wake readers and producers on the other host.
        "RELAY_POLL_MS": "60000", "RELAY_LEASE_SECONDS": "300", "RELAY_HEARTBEAT_SECONDS": "30",
    }
    return start_relay(env, workers=2), start_relay(env, workers=2)


def test_resume_on_the_other_host_is_exact(hosts: tuple[RelayServer, RelayServer]) -> None:
    a, b = hosts
    text = "postgres and redis carry this stream across hosts. " * 3
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        ticket = new_ticket(on_a, text, model="echo:20")
        first = read_stream(on_a, ticket["stream_url"], stop_after=7)
        cookies = dict(on_a.cookies)
    started = time.monotonic()
    with httpx.Client(base_url=b.url, timeout=30, cookies=cookies) as on_b:
        rest = read_stream(on_b, ticket["stream_url"], last_event_id=7)
    assert time.monotonic() - started < 20  # woken by Redis, not by the 60 s poll
    events = first + rest
    assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
    assert text_of(events) == text and events[-1][2]["status"] == "completed"


def test_readers_on_both_hosts_get_the_same_events_from_one_call(
    hosts: tuple[RelayServer, RelayServer], upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex[:10]
    text = f"{tag} fan-out across hosts " * 4
    with httpx.Client(base_url=hosts[0].url) as owner:
        ticket = new_ticket(owner, text, model="echo:10")
        cookies = dict(owner.cookies)

    def read(index: int) -> list:
        with httpx.Client(base_url=hosts[index % 2].url, timeout=60, cookies=cookies) as http:
            return read_stream(http, ticket["stream_url"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(read, range(12)))
    assert all(result == results[0] for result in results)
    assert text_of(results[0]) == text
    assert len(upstream.calls_with(tag)) == 1


def test_cancel_on_one_host_stops_the_producer_on_the_other(
    hosts: tuple[RelayServer, RelayServer], upstream: FakeUpstream
) -> None:
    a, b = hosts
    tag = uuid.uuid4().hex[:10]
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        ticket = new_ticket(on_a, f"{tag} " + "x" * 200, model="stall:3")
        received: list = []
        reader = threading.Thread(
            target=lambda: received.extend(read_stream(on_a, ticket["stream_url"]))
        )
        reader.start()
        deadline = time.monotonic() + 10
        while not upstream.calls_with(tag) or upstream.calls_with(tag)[0].chunks_sent < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with httpx.Client(base_url=b.url, timeout=30, cookies=dict(on_a.cookies)) as on_b:
            assert on_b.post(f"/sse/{ticket['id']}/cancel").status_code == 202
        reader.join(20)
    call = upstream.calls_with(tag)[0]
    # The stalled upstream sends nothing more, so only the Redis signal can stop it this fast.
    assert call.ended.wait(10) and call.disconnected
    assert received[-1][2]["status"] == "cancelled"
    assert text_of(received) == (f"{tag} " + "x" * 200)[:9]  # the three chunks sent


def test_an_openai_stream_on_one_host_is_cancelled_from_the_other(
    hosts: tuple[RelayServer, RelayServer], upstream: FakeUpstream
) -> None:
    a, b = hosts
    tag = uuid.uuid4().hex[:10]
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        sdk = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", http_client=on_a,
                            max_retries=0)
        whole = sdk.chat.completions.create(model="echo", messages=[
            {"role": "user", "content": f"{tag} on PostgreSQL"}])
        assert whole.choices[0].message.content == f"{tag} on PostgreSQL"
        stream = sdk.chat.completions.create(
            model="stall:3", messages=[{"role": "user", "content": f"{tag} " + "x" * 200}],
            stream=True,
        )
        chunks = [next(stream) for _ in range(3)]
        ticket_id = chunks[0].id.removeprefix("chatcmpl-")
        with httpx.Client(base_url=b.url, timeout=30, cookies=dict(on_a.cookies)) as on_b:
            assert on_b.post(f"/sse/{ticket_id}/cancel").status_code == 202
        chunks += list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == (f"{tag} " + "x" * 200)[:9]  # the three chunks sent
    assert chunks[-1].choices[0].finish_reason == "cancelled"
    call = upstream.calls_with(f"{tag} x")[0]
    assert call.ended.wait(10) and call.disconnected
