"""The fair upstream queue through real servers (two gevent workers; two hosts on PostgreSQL and
Redis): round-robin between users, positions reported and falling, bounded, cancel leaves it at
once, a killed worker's queued tickets still served, the cap held across hosts, and `/v1`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ..helpers import new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer
from .usage_helpers import assert_settled

pytestmark = pytest.mark.timeout(120)
REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
Block = dict[str, list[str]]  # one event-stream block: field name to its values


def _env(upstream: FakeUpstream, **settings: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
            "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_MAX_CONCURRENCY": "2", **settings}


def raw_blocks(http: httpx.Client, url: str) -> list[Block]:
    """A stream's blocks as sent (comments included), until `done`."""
    blocks: list[Block] = []
    block: Block = {}
    with http.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "":
                if block:
                    blocks.append(block)
                    if block.get("event") == ["done"]:
                        return blocks
                block = {}
                continue
            name, _, value = line.partition(":")
            block.setdefault(name, []).append(value.removeprefix(" "))
    raise AssertionError(f"the stream ended without `done`: {blocks}")


def spans(rows: list[Any]) -> int:
    """The most (started_at, finished_at) spans open at one instant."""
    edges = sorted([(start, 1) for start, _ in rows] + [(end, -1) for _, end in rows])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def _wait_until(check: Callable[[], bool], seconds: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.05)


def hold_the_slot(http: httpx.Client, upstream: FakeUpstream, tag: str) -> dict[str, Any]:
    """A ticket that takes an upstream slot and keeps it (until cancelled or its worker dies)."""
    stalled = new_ticket(http, f"{tag} holds the slot", model="stall:1")
    with http.stream("GET", stalled["stream_url"]) as response:
        assert response.status_code == 200
    _wait_until(lambda: len(upstream.calls_with(f"{tag} holds")) == 1, what="the stall")
    return stalled


def kill_its_worker(instance: Path, ticket_id: str) -> None:
    """SIGKILL the worker generating the ticket."""
    with closing(_store(instance)) as store:
        claimed_by = store.execute("SELECT claimed_by FROM tickets WHERE id = ?",
                                   (ticket_id,)).fetchone()[0]
    os.kill(int(claimed_by.split(":")[1]), signal.SIGKILL)


@pytest.fixture()
def sqlite_relay(start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
                 tmp_path: Path) -> Iterator[tuple[RelayServer, Path]]:
    instance = tmp_path / "queue"
    yield start_relay(_env(upstream, RELAY_TOKENS_PER_DAY="100000000"), workers=2,
                      instance=instance), instance


@pytest.fixture()
def one_slot(start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
             tmp_path: Path) -> Callable[..., tuple[RelayServer, Path]]:
    """Start a relay (two workers, SQLite) with one upstream slot and these settings."""

    def start(**settings: str) -> tuple[RelayServer, Path]:
        instance = tmp_path / "one-slot"
        env = _env(upstream, RELAY_UPSTREAM_MAX_CONCURRENCY="1", **settings)
        return start_relay(env, workers=2, instance=instance), instance

    return start


def _store(instance: Path) -> sqlite3.Connection:
    return sqlite3.connect(instance / "relay.db")


def test_single_tickets_of_other_users_start_before_a_batchs_third(
    sqlite_relay: tuple[RelayServer, Path],
) -> None:
    relay, instance = sqlite_relay
    tag = uuid.uuid4().hex[:8]
    slow = "y" * 120  # 40 chunks, 30 ms apart: over a second each
    users = {name: httpx.Client(base_url=relay.url, timeout=60) for name in "ABC"}
    try:
        batch = [new_ticket(users["A"], f"{tag} A{n} {slow}", model="echo:30") for n in range(10)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            a_reads = [pool.submit(raw_blocks, users["A"], t["stream_url"]) for t in batch]

            def queued_or_running() -> bool:
                with closing(_store(instance)) as store:
                    return store.execute(
                        "SELECT COUNT(*) FROM tickets WHERE owner = (SELECT owner FROM tickets "
                        "WHERE id = ?) AND (queued_at IS NOT NULL OR status != 'pending')",
                        (batch[0]["id"],)).fetchone()[0] == 10

            _wait_until(queued_or_running, what="A's ten tickets queued")
            singles = {name: new_ticket(users[name], f"{tag} {name} {slow}", model="echo:30")
                       for name in "BC"}
            single_reads = {name: pool.submit(raw_blocks, users[name], t["stream_url"])
                            for name, t in singles.items()}
            results = [read.result(60) for read in a_reads]
            single_results = {name: read.result(60) for name, read in single_reads.items()}
    finally:
        for http in users.values():
            http.close()
    for blocks in [*results, *single_results.values()]:
        deltas = [b for b in blocks if "event" not in b and "data" in b]
        # Token ids start at 1 whatever was sent while queued; `queued` blocks carry no id.
        assert [int(b["id"][0]) for b in deltas] == list(range(1, len(deltas) + 1))
        assert json.loads(blocks[-1]["data"][0])["status"] == "completed"
        queued = [b for b in blocks if b.get("event") == ["queued"]]
        assert all("id" not in b for b in queued)
        positions = [json.loads(b["data"][0])["position"] for b in queued]
        assert all(a != b for a, b in zip(positions, positions[1:], strict=False)), positions
        # It falls, but for the one rise when B and C arrived and went ahead of A's batch.
        after_rise = positions[positions.index(max(positions)):] if positions else []
        assert after_rise == sorted(after_rise, reverse=True), positions
        if queued:  # ... to the start: every `queued` before the first token
            assert blocks.index(queued[-1]) < blocks.index(deltas[0])
    # B and C waited (two of A's ran), were told where they stood, then went before A's third.
    for name in "BC":
        told = [json.loads(b["data"][0])["position"] for b in single_results[name]
                if b.get("event") == ["queued"]]
        assert told and told == sorted(told, reverse=True) and told[0] <= 2, (name, told)
    # Most of A's batch waited, told positions that fell.
    assert sum(any(b.get("event") == ["queued"] for b in r) for r in results) >= 7
    with closing(_store(instance)) as store:
        started = dict(store.execute("SELECT id, started_at FROM tickets").fetchall())
        rows = store.execute("SELECT started_at, finished_at FROM tickets").fetchall()
        assert_settled(store)
    a_starts = sorted(started[t["id"]] for t in batch)
    for name, ticket in singles.items():
        assert started[ticket["id"]] < a_starts[2], name
    assert spans(rows) <= 2  # the cap held on both workers together


def test_queue_full_cancel_and_reservations(
    one_slot: Callable[..., tuple[RelayServer, Path]], upstream: FakeUpstream,
) -> None:
    relay, instance = one_slot(RELAY_UPSTREAM_QUEUE_MAX="2", RELAY_TOKENS_PER_DAY="100000000")
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        stalled = hold_the_slot(http, upstream, tag)
        tickets = [new_ticket(http, f"{tag} waits {n}") for n in range(3)]

        def open_briefly(ticket: dict[str, Any]) -> httpx.Response:
            with http.stream("GET", ticket["stream_url"]) as response:
                response.read() if response.status_code != 200 else None
                return response

        assert [open_briefly(t).status_code for t in tickets[:2]] == [200, 200]
        refused = open_briefly(tickets[2])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) > 0

        def queued() -> list[str]:
            with closing(_store(instance)) as store:
                return [row[0] for row in store.execute(
                    "SELECT id FROM tickets WHERE status = 'pending' AND queued_at IS NOT NULL")]

        def reserved() -> set[str]:
            with closing(_store(instance)) as store:
                return {row[0] for row in store.execute("SELECT ticket_id FROM reservations")}

        assert sorted(queued()) == sorted(t["id"] for t in tickets[:2])
        assert {t["id"] for t in tickets[:2]} <= reserved()  # a queued ticket holds its own
        assert tickets[2]["id"] not in reserved()  # refused: it took nothing
        # A queued ticket cancelled ends at once (its stream's `done`), leaves the queue and
        # gives back its reservation: the refused one now fits.
        assert http.post(f"/sse/{tickets[0]['id']}/cancel").status_code == 202
        done = read_stream(http, tickets[0]["stream_url"])
        assert [e[1] for e in done] == ["done"] and done[0][2]["status"] == "cancelled"
        assert queued() == [tickets[1]["id"]]
        assert tickets[0]["id"] not in reserved()
        assert open_briefly(tickets[2]).status_code == 200
        assert sorted(queued()) == sorted(t["id"] for t in tickets[1:])
        # The slot freed: the queue is served in order, every one to its end.
        assert http.post(f"/sse/{stalled['id']}/cancel").status_code == 202
        for ticket in tickets[1:]:
            assert read_stream(http, ticket["stream_url"])[-1][2]["status"] == "completed"
    with closing(_store(instance)) as store:
        assert_settled(store)


def test_queued_tickets_of_a_killed_worker_are_served(
    one_slot: Callable[..., tuple[RelayServer, Path]], upstream: FakeUpstream,
) -> None:
    relay, instance = one_slot(RELAY_LEASE_SECONDS="2", RELAY_TOKENS_PER_DAY="100000000")
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        stalled = hold_the_slot(http, upstream, tag)
        waiting = [new_ticket(http, f"{tag} waits {n}") for n in range(4)]
        for ticket in waiting:  # queued by readers on either worker, who then leave
            with http.stream("GET", ticket["stream_url"]) as response:
                assert response.status_code == 200
        kill_its_worker(instance, stalled["id"])
        # No reader is left (those there were left, or died with their worker): the dead
        # worker's ticket is reaped once its lease runs out, and every queued one is served.
        _wait_until(lambda: all(http.get(f"/tickets/{t['id']}").json()["status"] == "completed"
                                for t in waiting), what="the queued tickets served")
        for ticket in waiting:
            assert read_stream(http, ticket["stream_url"])[-1][2]["status"] == "completed"
        shown = http.get(f"/tickets/{stalled['id']}").json()
        assert shown["status"] == "failed" and shown["error"]["code"] == "worker_lost"
    with closing(_store(instance)) as store:
        assert store.execute("SELECT COUNT(*) FROM tickets WHERE status IN ('pending', "
                             "'running')").fetchone()[0] == 0
        assert_settled(store)


def test_v1_waits_in_the_queue_and_its_client_leaving_cancels(
    one_slot: Callable[..., tuple[RelayServer, Path]], upstream: FakeUpstream,
) -> None:
    relay, instance = one_slot()
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        stalled = hold_the_slot(http, upstream, tag)

        def complete(text: str, stream: bool) -> httpx.Response:
            body = {"model": "echo", "stream": stream,
                    "messages": [{"role": "user", "content": text}]}
            with httpx.Client(base_url=relay.url, timeout=30) as v1:
                response = v1.post("/v1/chat/completions", json=body)
                return response

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            whole = pool.submit(complete, f"{tag} whole answer", False)
            streamed = pool.submit(complete, f"{tag} streamed answer", True)
            # A client that gives up while its request waits: its ticket is cancelled.
            gone = threading.Thread(target=_post_and_leave, args=(relay.url, f"{tag} gone"))
            gone.start()
            _wait_until(lambda: _queued_count(instance) == 3, what="three /v1 requests queued")
            gone.join()
            _wait_until(lambda: _queued_count(instance) == 2, what="the gone one cancelled")
            assert not whole.done() and not streamed.done()
            assert http.post(f"/sse/{stalled['id']}/cancel").status_code == 202
            answer = whole.result(30)
            chunks = streamed.result(30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == f"{tag} whole answer"
    assert chunks.status_code == 200 and chunks.text.endswith("data: [DONE]\n\n")
    content = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in chunks.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"])
    assert content == f"{tag} streamed answer"
    assert upstream.calls_with(f"{tag} gone") == []
    with closing(_store(instance)) as store:
        statuses = dict(store.execute("SELECT status, COUNT(*) FROM tickets GROUP BY status"))
    assert statuses == {"cancelled": 2, "completed": 2}


def _queued_count(instance: Path) -> int:
    with closing(_store(instance)) as store:
        return int(store.execute("SELECT COUNT(*) FROM tickets WHERE status = 'pending' AND "
                                 "queued_at IS NOT NULL").fetchone()[0])


def _post_and_leave(url: str, text: str) -> None:
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": text}]}
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=1.5)) as v1:
        try:
            v1.post("/v1/chat/completions", json=body)
        except httpx.ReadTimeout:
            pass  # it leaves: the connection is closed


def test_a_queued_ticket_whose_client_comes_back_after_its_worker_died_is_served(
    one_slot: Callable[..., tuple[RelayServer, Path]], upstream: FakeUpstream,
) -> None:
    relay, instance = one_slot(RELAY_LEASE_SECONDS="2")
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        stalled = hold_the_slot(http, upstream, tag)
        waiting = [new_ticket(http, f"{tag} waits {n}") for n in range(3)]
        with http.stream("GET", waiting[0]["stream_url"]) as response:  # stays to read
            assert response.status_code == 200
            lines = response.iter_lines()
            assert [next(lines) for _ in range(4)] == [
                "retry: 2000", "", "event: queued", 'data: {"position":1}']
            for ticket in waiting[1:]:
                with httpx.Client(base_url=relay.url, timeout=30,
                                  cookies=dict(http.cookies)) as other:
                    with other.stream("GET", ticket["stream_url"]) as queued:
                        assert queued.status_code == 200
            kill_its_worker(instance, stalled["id"])
            try:  # to its end, or its death with the worker, if it was on that one
                list(lines)
            except httpx.HTTPError:
                pass
        # The clients come back, as an EventSource does, on whichever worker.
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            ends = list(pool.map(lambda t: read_stream(http, t["stream_url"])[-1][2], waiting))
        assert [end["status"] for end in ends] == ["completed"] * 3
    with closing(_store(instance)) as store:
        assert_settled(store)


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cap_holds_across_two_hosts(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str,
) -> None:
    env = _env(upstream, DATABASE_URL=migrated_postgres, REDIS_URL=REDIS_URL,
               RELAY_SECRET_KEY="shared-secret-of-the-two-hosts-0123456789",
               RELAY_TOKENS_PER_DAY="100000000")  # queued tickets reserve on PostgreSQL too
    hosts = [start_relay(env, workers=2), start_relay(env, workers=2)]
    tag = uuid.uuid4().hex[:8]
    slow = "z" * 30

    def one(n: int) -> list[tuple[str, str, Any]]:
        host = hosts[n % 2]
        with httpx.Client(base_url=host.url, timeout=60) as http:
            ticket = new_ticket(http, f"{tag} {n} {slow}", model="echo:20")
            return read_stream(http, ticket["stream_url"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(10)))
    for n, events in enumerate(results):
        assert events[-1][2]["status"] == "completed"
        assert text_of(events) == f"{tag} {n} {slow}"
    with closing(psycopg.connect(migrated_postgres)) as store:
        rows = store.execute("SELECT started_at, finished_at FROM tickets WHERE model = "
                             "'echo:20'").fetchall()
        assert len(rows) == 10
        assert spans(rows) <= 2
        waited = store.execute("SELECT MAX(started_at - queued_at), COUNT(queued_at) FROM "
                               "tickets WHERE model = 'echo:20'").fetchone()
        assert waited[0] > 0.1 and waited[1] == 10  # all went through the queue; some waited
        assert_settled(store)
