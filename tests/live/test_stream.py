"""The stream through a real gunicorn+gevent relay and a real upstream: framing, resume, fan-out."""

from __future__ import annotations

import concurrent.futures
import json
import random
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

ADVERSARIAL = [
    "plain words",
    "line one\nline two\n\nafter a blank line\n",
    "carriage\rreturn and crlf\r\nmixed\n\r",
    "data: looks like a field\nid: 99\nevent: done\nretry: 1\n: a comment\n\n",
    "emoji 🎉👩‍👩‍👧‍👦 and CJK 中文字符 and combining é and RTL שלום",
    '{"delta": "json inside"} \\u0000 "quotes" \\n backslashes \\',
    "\ufeffBOM at the start, NUL \x00 inside, and a lone \u2028 separator",
]


def marker() -> str:
    return uuid.uuid4().hex[:12]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_text_arrives_byte_exact(client: httpx.Client, text: str) -> None:
    # A prompt may not hold NUL (no PostgreSQL text can store it): the `nul` model answers with
    # the prompt's `_` as NUL.
    assert "_" not in text
    model = "nul" if "\x00" in text else "echo"
    ticket = new_ticket(client, text.replace("\x00", "_"), model=model)
    events = read_stream(client, ticket["stream_url"])
    assert text_of(events) == text
    ids = [int(event_id) for event_id, _, _ in events]
    assert ids == list(range(1, len(events) + 1))
    assert [e for _, e, _ in events].count("done") == 1 and events[-1][1] == "done"
    assert events[-1][2]["status"] == "completed"
    assert events[-1][2]["finish_reason"] == "stop"
    assert events[-1][2]["usage"]["completion_tokens"] == len(events) - 1


def test_upstream_framing_variants_are_parsed(client: httpx.Client) -> None:
    text = "CRLF line ends, comments, multi-line data and split writes"
    ticket = new_ticket(client, text, model="ragged")
    events = read_stream(client, ticket["stream_url"])
    assert text_of(events) == text
    assert events[-1][2]["status"] == "completed"


def test_upstream_connections_are_kept_alive(relay: RelayServer, upstream: FakeUpstream) -> None:
    tag = marker()
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for turn in range(3):
            ticket = new_ticket(http, f"{tag} turn {turn}")
            assert read_stream(http, ticket["stream_url"])[-1][2]["status"] == "completed"
    ports = [call.client_port for call in upstream.calls_with(tag)]
    assert len(ports) == 3
    # Two workers each keep their own connection: three calls can use at most two.
    assert len(set(ports)) < 3


def test_response_headers_and_raw_framing(client: httpx.Client) -> None:
    ticket = new_ticket(client, "ab\ncd")
    with client.stream("GET", ticket["stream_url"]) as response:
        raw = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    assert raw.startswith(b"retry: ")
    assert b"\r" not in raw
    assert b'id: 1\ndata: {"delta":"ab\\n"}\n\n' in raw
    assert raw.endswith(b"\n\n") and b"event: done\nid: 3\ndata: {" in raw


def test_multi_megabyte_prompt_round_trips(client: httpx.Client) -> None:
    line = "Zeile 🎉 中文 data: x\r\n"
    prompt = line * (3 * 1024 * 1024 // len(line.encode()))
    body = json.dumps({"prompt": prompt, "model": "echo"}, ensure_ascii=False).encode()
    assert len(body) > 3 * 1024 * 1024 - 100
    response = client.post("/new", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    events = read_stream(client, response.json()["stream_url"])
    assert text_of(events) == prompt


def test_resume_at_random_points_has_no_gap_or_duplicate(client: httpx.Client) -> None:
    rng = random.Random(7)
    text = "".join(chr(rng.choice([0x61, 0x4E2D, 0x1F389, 0x0A, 0x0D]) + rng.randrange(5))
                   for _ in range(240))
    ticket = new_ticket(client, text, model="echo:5")
    full = read_stream(client, ticket["stream_url"])
    assert text_of(full) == text
    for _ in range(6):
        cut = rng.randrange(0, len(full))
        rest = read_stream(client, ticket["stream_url"], last_event_id=cut)
        assert [int(i) for i, _, _ in rest] == list(range(cut + 1, len(full) + 1))
        assert rest == full[cut:]


def test_resume_while_generating_then_query_parameter(client: httpx.Client) -> None:
    text = "resume me while I am still being generated, " * 4
    ticket = new_ticket(client, text, model="echo:20")
    first = read_stream(client, ticket["stream_url"], stop_after=5)
    assert [int(i) for i, _, _ in first] == [1, 2, 3, 4, 5]
    rest = read_stream(client, ticket["stream_url"] + "?last_event_id=5")
    assert int(rest[0][0]) == 6
    assert text_of(first + rest) == text
    header_wins = read_stream(client, ticket["stream_url"] + "?last_event_id=1", last_event_id=10)
    assert int(header_wins[0][0]) == 11


def test_long_answer_resumes_exactly_from_before_what_memory_keeps(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> None:
    # One worker, so the resume lands where the answer is generated: the LiveLog keeps only its
    # newest frames, and a reader from further back must be served from the database.
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo:4",
    }, workers=1)
    text = "".join(f"{i:03d}" for i in range(400))  # 400 chunks of 3 characters
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        ticket = new_ticket(http, text)
        first = read_stream(http, ticket["stream_url"], stop_after=2)
        deadline = time.monotonic() + 20
        while http.get(f"/tickets/{ticket['id']}").json()["last_event_id"] < 250:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "running"
        rest = read_stream(http, ticket["stream_url"], last_event_id=2)
        whole = read_stream(http, ticket["stream_url"])
    assert [int(i) for i, _, _ in first + rest] == list(range(1, 402))
    assert text_of(first + rest) == text and text_of(whole) == text
    assert rest[-1][1] == "done" and rest[-1][2]["status"] == "completed"


def test_finished_ticket_replays_and_204_after_done(client: httpx.Client) -> None:
    ticket = new_ticket(client, "replay me")
    events = read_stream(client, ticket["stream_url"])
    assert read_stream(client, ticket["stream_url"]) == events
    done_id = events[-1][0]
    response = client.get(ticket["stream_url"], headers={"Last-Event-ID": done_id})
    assert response.status_code == 204 and response.content == b""
    only_done = read_stream(client, ticket["stream_url"], last_event_id=int(done_id) - 1)
    assert only_done == events[-1:]


def test_concurrent_readers_share_one_upstream_call(
    relay: RelayServer, upstream: FakeUpstream
) -> None:
    tag = marker()
    text = f"{tag} fan out to many readers " * 3
    with httpx.Client(base_url=relay.url, timeout=30) as owner:
        ticket = new_ticket(owner, text, model="echo:10")
        cookies = dict(owner.cookies)

    def read() -> list:
        with httpx.Client(base_url=relay.url, timeout=30, cookies=cookies) as http:
            return read_stream(http, ticket["stream_url"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda _: read(), range(24)))
    assert all(result == results[0] for result in results)
    assert text_of(results[0]) == text
    assert len(upstream.calls_with(tag)) == 1


def test_heartbeat_pings_during_upstream_silence(
    relay: RelayServer, upstream: FakeUpstream, client: httpx.Client
) -> None:
    ticket = new_ticket(client, "ab", model="stall:1")
    pings = 0
    with client.stream("GET", ticket["stream_url"]) as response:
        for line in response.iter_lines():
            if line == ": ping":
                pings += 1
            if line.startswith("event: done"):
                break
    assert pings >= 2  # heartbeat 1 s, upstream timeout 3 s


def test_tickets_endpoint_reports_text_and_usage(client: httpx.Client) -> None:
    ticket = new_ticket(client, "poll me")
    read_stream(client, ticket["stream_url"])
    body = client.get(f"/tickets/{ticket['id']}").json()
    assert body["status"] == "completed" and body["text"] == "poll me"
    assert body["usage"]["completion_tokens"] == 3 and body["finished_at"] >= body["created_at"]
    assert body["conversation_id"] == ticket["conversation_id"]


def test_someone_elses_ticket_is_404_like_an_unknown_one(relay: RelayServer) -> None:
    with httpx.Client(base_url=relay.url) as alice, httpx.Client(base_url=relay.url) as bob:
        ticket = new_ticket(alice, "mine")
        for path in (ticket["stream_url"], f"/tickets/{ticket['id']}"):
            theirs = bob.get(path)
            unknown = bob.get(path.replace(ticket["id"], "A" * 32))
            assert_error_shape(theirs, 404, "ticket_not_found")
            assert theirs.json() == unknown.json()
        assert_error_shape(bob.post(f"/sse/{ticket['id']}/cancel"), 404, "ticket_not_found")
        assert read_stream(alice, ticket["stream_url"])[-1][2]["status"] == "completed"


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "١٢", "9" * 30])
def test_malformed_last_event_id_is_400(client: httpx.Client, bad: str) -> None:
    ticket = new_ticket(client, "x")
    response = client.get(ticket["stream_url"], headers={"Last-Event-ID": bad.encode()})
    assert_error_shape(response, 400, "invalid_last_event_id")


def test_cancel_closes_the_upstream_call(client: httpx.Client, upstream: FakeUpstream) -> None:
    tag = marker()
    ticket = new_ticket(client, f"{tag} " + "a long answer to stop " * 40, model="echo:30")
    received: list = []

    def read() -> None:
        received.extend(read_stream(client, ticket["stream_url"]))

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not upstream.calls_with(tag) or upstream.calls_with(tag)[0].chunks_sent < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    response = client.post(f"/sse/{ticket['id']}/cancel")
    assert response.status_code in (200, 202) and response.json()["id"] == ticket["id"]
    reader.join(10)
    call = upstream.calls_with(tag)[0]
    assert call.ended.wait(5) and call.disconnected and not call.completed
    assert received[-1][1] == "done" and received[-1][2]["status"] == "cancelled"
    body = client.get(f"/tickets/{ticket['id']}").json()
    assert body["status"] == "cancelled" and body["text"] == text_of(received)
    again = client.post(f"/sse/{ticket['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_deleting_a_conversation_mid_answer_stops_it_and_ends_its_stream(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    tag = marker()
    ticket = new_ticket(client, f"{tag} " + "an answer nobody wants any more " * 40,
                        model="echo:30")
    received: list = []
    reader = threading.Thread(target=lambda: received.extend(
        read_stream(client, ticket["stream_url"])
    ))
    reader.start()
    deadline = time.monotonic() + 10
    while not upstream.calls_with(tag) or upstream.calls_with(tag)[0].chunks_sent < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.delete(f"/conversations/{ticket['conversation_id']}").status_code == 204
    reader.join(10)
    call = upstream.calls_with(tag)[0]
    assert call.ended.wait(5) and call.disconnected and not call.completed
    *deltas, done = received
    assert done == (str(len(deltas) + 1), "done",
                    {"status": "cancelled", "finish_reason": "cancelled", "usage": {}})
    assert_error_shape(client.get(f"/tickets/{ticket['id']}"), 404, "ticket_not_found")
    assert_error_shape(client.get(ticket["stream_url"]), 404, "ticket_not_found")
    healthy = new_ticket(client, "still serving")
    assert text_of(read_stream(client, healthy["stream_url"])) == "still serving"


def test_cancel_before_streaming_ends_with_cancelled(client: httpx.Client) -> None:
    ticket = new_ticket(client, "never started")
    assert client.post(f"/sse/{ticket['id']}/cancel").json()["status"] == "cancelled"
    events = read_stream(client, ticket["stream_url"])
    assert events == [("1", "done", {"status": "cancelled", "finish_reason": "cancelled",
                                     "usage": {}})]


def test_reader_disconnect_lets_generation_finish_by_default(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    tag = marker()
    text = f"{tag} keep going after the reader leaves"
    ticket = new_ticket(client, text, model="echo:20")
    assert len(read_stream(client, ticket["stream_url"], stop_after=2)) == 2
    call_done = upstream.calls_with(tag)[0].ended.wait(15)
    assert call_done and upstream.calls_with(tag)[0].completed
    assert text_of(read_stream(client, ticket["stream_url"])) == text


def test_many_concurrent_tickets_on_two_workers_share_sqlite_cleanly(relay: RelayServer) -> None:
    def one(index: int) -> str:
        with httpx.Client(base_url=relay.url, timeout=60) as http:
            ticket = new_ticket(http, f"ticket {index} " + "z" * 90, model="echo:2")
            return text_of(read_stream(http, ticket["stream_url"]))

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        texts = list(pool.map(one, range(80)))
    assert texts == [f"ticket {i} " + "z" * 90 for i in range(80)]
    log = relay.log()
    assert "database is locked" not in log and "Traceback" not in log


def test_metrics_sum_every_worker(relay: RelayServer) -> None:
    def created() -> float:
        text = httpx.get(relay.url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("relay_tickets_created_total"))
        return float(line.split()[-1])

    before = created()
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for index in range(6):  # fresh connections land on both workers
            with httpx.Client(base_url=relay.url, cookies=dict(http.cookies)) as fresh:
                read_stream(fresh, new_ticket(fresh, f"count me {index}")["stream_url"])
    assert created() == before + 6
    text = httpx.get(relay.url + "/metrics").text
    assert 'relay_tickets_finished_total{error_code="",status="completed"}' in text
    assert "relay_streams_open" in text and "relay_upstream_first_chunk_seconds_bucket" in text


def test_a_head_request_starts_no_upstream_call(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    tag = marker()
    ticket = new_ticket(client, f"{tag} only looked at")
    head = client.head(ticket["stream_url"])
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")
    assert client.get(f"/tickets/{ticket['id']}").json()["status"] == "pending"
    assert upstream.calls_with(tag) == []
    assert client.head("/sse/" + "x" * 32).status_code == 404
    # The GET still streams it, with the one upstream call.
    assert read_stream(client, ticket["stream_url"])[-1][2]["status"] == "completed"
    assert len(upstream.calls_with(tag)) == 1
