"""Usage through real servers: after every way a ticket ends (completed, cancelled running or
pending, a reader gone, an upstream fault, its worker SIGKILLed and reaped) no reservation is
left and the usage rows equal the stored tickets, one each, token for token; the upstream's
report is used as is, its absence is estimated; `GET /usage` and `relay usage --json` agree; a
deleted conversation's tickets keep their usage rows. Each on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from relay.estimate import count_prompt, count_tokens

from ..helpers import new_ticket, read_stream
from .accounts import relay_cli
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer
from .usage_helpers import Store

pytestmark = pytest.mark.timeout(120)


def _wait_for_chunks(upstream: FakeUpstream, tag: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while not upstream.calls_with(tag) or upstream.calls_with(tag)[0].chunks_sent < count:
        assert time.monotonic() < deadline, "the upstream call did not start"
        time.sleep(0.02)


def _json(value: Any) -> Any:
    """A JSON column's value: text in SQLite, decoded already by psycopg."""
    return value if isinstance(value, dict) else json.loads(value or "{}")


def _reading(http: httpx.Client, ticket: dict[str, Any]) -> threading.Thread:
    """A reader of the ticket in a thread; a stream cut by its worker's death ends it."""

    def read() -> None:
        try:
            read_stream(http, ticket["stream_url"])
        except httpx.TransportError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_usage_rows_equal_the_tickets_after_every_kind_of_end(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, store: Store,
) -> None:
    instance = store.instance
    # Limits on, so that every claim takes a reservation for the finishes to release.
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_TOKENS_PER_DAY": "100000000",
        "RELAY_MAX_GENERATIONS": "100", "RELAY_LEASE_SECONDS": "2", **store.env,
    }, workers=2, instance=instance)
    tag = uuid.uuid4().hex[:8]
    prompts: dict[str, str] = {}
    with httpx.Client(base_url=relay.url, timeout=30) as http:

        def made(prompt: str, **fields: Any) -> dict[str, Any]:
            ticket = new_ticket(http, prompt, **fields)
            prompts[ticket["id"]] = prompt
            return ticket

        reported = made(f"{tag} reported by the upstream")
        assert read_stream(http, reported["stream_url"])[-1][2]["status"] == "completed"
        unreported = made(f"{tag} never reported, so estimated", model="nousage")
        assert read_stream(http, unreported["stream_url"])[-1][2]["status"] == "completed"
        faulty = made(f"{tag} the upstream drops this " + "y" * 30, model="drop:3")
        assert read_stream(http, faulty["stream_url"])[-1][2]["status"] == "failed"
        pending = made(f"{tag} cancelled before anyone streamed it")
        assert http.post(f"/sse/{pending['id']}/cancel").status_code == 202
        # A reader that leaves after three events: generation goes on to the end.
        left = made(f"{tag}-left " + "z" * 90, model="echo:20")
        assert len(read_stream(http, left["stream_url"], stop_after=3)) == 3
        # Cancelled while generating.
        stalled_tag = f"{tag}-cancel"
        stalled = made(f"{stalled_tag} " + "x" * 60, model="stall:3")
        reader = _reading(http, stalled)
        _wait_for_chunks(upstream, stalled_tag, 3)
        assert http.post(f"/sse/{stalled['id']}/cancel").status_code == 202
        reader.join(20)
        # Its worker killed mid-stream, then reaped once the lease ran out.
        killed_tag = f"{tag}-killed"
        killed = made(f"{killed_tag} " + "w" * 60, model="stall:2")
        _reading(http, killed)
        _wait_for_chunks(upstream, killed_tag, 2)
        time.sleep(0.3)  # the two chunks committed
        [claim] = store.rows("SELECT claimed_by FROM tickets WHERE id = ?", (killed["id"],))
        claimed_by = claim["claimed_by"]
        os.kill(int(claimed_by.split(":")[1]), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (shown := http.get(f"/tickets/{killed['id']}").json())["status"] == "running":
            assert time.monotonic() < deadline, "the dead worker's ticket was not reaped"
            time.sleep(0.2)
        assert shown["error"]["code"] == "worker_lost"
        deadline = time.monotonic() + 15
        while http.get(f"/tickets/{left['id']}").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        mine = http.get("/usage").json()
        owner_cookies = dict(http.cookies)

    store.assert_settled()
    tickets = {row["id"]: row for row in store.rows("SELECT * FROM tickets")}
    rows = {row["ticket_id"]: row for row in store.rows("SELECT * FROM usage")}
    assert set(prompts) <= set(rows)
    with httpx.Client(base_url=relay.url, timeout=30, cookies=owner_cookies) as http:
        for ticket_id, prompt in prompts.items():
            ticket, row = tickets[ticket_id], rows[ticket_id]
            text = http.get(f"/tickets/{ticket_id}").json()["text"]
            said = _json(ticket["usage"])
            assert (row["owner"], row["model"], row["status"]) == (
                ticket["owner"], ticket["model"], ticket["status"])
            assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
            if ticket_id == pending["id"]:  # nothing was sent upstream
                assert (row["prompt_tokens"], row["completion_tokens"]) == (0, 0)
            elif said:
                # The upstream's own figures (the fake reports 7 and one per chunk).
                assert not row["estimated"]
                call = upstream.calls_with(prompt[:20])[0]
                assert (row["prompt_tokens"], row["completion_tokens"]) == (
                    said["prompt_tokens"], said["completion_tokens"]) == (7, call.chunks_sent)
                assert row["delivered_tokens"] == row["completion_tokens"]
            else:
                assert row["estimated"], ticket_id
                assert row["prompt_tokens"] == count_prompt([{"role": "user",
                                                              "content": prompt}])
                assert row["completion_tokens"] == count_tokens(text)
            assert row["delivered_tokens"] == (count_tokens(text) if not said
                                               else row["completion_tokens"])
    assert {r: rows[r]["status"] for r in (stalled["id"], killed["id"], faulty["id"])} == {
        stalled["id"]: "cancelled", killed["id"]: "failed", faulty["id"]: "failed"}
    assert rows[unreported["id"]]["estimated"] and not rows[reported["id"]]["estimated"]

    # GET /usage and `relay usage --json` say what the rows say.
    owner = tickets[reported["id"]]["owner"]
    mine_rows = [r for r in rows.values() if r["owner"] == owner]
    assert mine["totals"]["tickets"] == len(mine_rows)
    assert mine["totals"]["total_tokens"] == sum(r["total_tokens"] for r in mine_rows)
    assert mine["totals"]["estimated"] is True
    listed = relay_cli(instance, "usage", "--json", database_url=store.url)
    assert listed.returncode == 0, listed.stderr
    cli = json.loads(listed.stdout)
    cli_mine = [{k: v for k, v in r.items() if k not in ("owner", "user")}
                for r in cli["rows"] if r["owner"] == owner]
    assert cli_mine == mine["by_day"]
    # Someone else sees only their own.
    with httpx.Client(base_url=relay.url, timeout=30) as other:
        theirs = new_ticket(other, f"{tag} someone else")
        read_stream(other, theirs["stream_url"])
        seen = other.get("/usage").json()
    assert seen["totals"]["tickets"] == 1
    assert seen["limits"]["user"]["tokens_per_day"] == 100000000


def test_a_deleted_conversation_leaves_one_usage_row_per_ticket_that_reached_the_upstream(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, store: Store,
) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_TOKENS_PER_DAY": "100000000",
        "RELAY_MAX_GENERATIONS": "100", "RELAY_LEASE_SECONDS": "2", **store.env,
    }, workers=2, instance=store.instance)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:

        def delete(ticket: dict[str, Any]) -> None:
            # On a connection of its own: often another worker than the producer's.
            with httpx.Client(base_url=relay.url, timeout=30, cookies=dict(http.cookies)) as other:
                response = other.delete(f"/conversations/{ticket['conversation_id']}")
            assert response.status_code == 204, response.text
            assert http.get(f"/tickets/{ticket['id']}").status_code == 404

        finished = new_ticket(http, f"{tag} finished, then deleted")
        assert read_stream(http, finished["stream_url"])[-1][2]["status"] == "completed"
        delete(finished)
        # Generating (the upstream stalls after two chunks; its reader left): the delete
        # cancels it, and its producer ends it with what it spent before it goes.
        running_tag = f"{tag}-running"
        prompts = {"running": f"{running_tag} " + "r" * 60, "killed": f"{tag}-killed " + "k" * 60}
        running = new_ticket(http, prompts["running"], model="stall:2")
        assert len(read_stream(http, running["stream_url"], stop_after=2)) == 2
        delete(running)
        assert upstream.calls_with(running_tag)[0].ended.wait(10)  # its call was closed
        # Its worker killed: nobody ends it but the delete, from what the store holds.
        killed = new_ticket(http, prompts["killed"], model="stall:2")
        assert len(read_stream(http, killed["stream_url"], stop_after=2)) == 2
        [claim] = store.rows("SELECT claimed_by FROM tickets WHERE id = ?", (killed["id"],))
        os.kill(int(claim["claimed_by"].split(":")[1]), signal.SIGKILL)
        delete(killed)
        pending = new_ticket(http, f"{tag} never streamed")
        delete(pending)
    deleted = [finished["id"], running["id"], killed["id"], pending["id"]]
    store.assert_settled(deleted=deleted)
    rows = {row["ticket_id"]: row for row in store.rows("SELECT * FROM usage")}
    assert [rows[t]["status"] for t in deleted] == [
        "completed", "cancelled", "cancelled", "cancelled"]
    # What each generated: the fake's report for the finished one, estimates of the two chunks
    # (six characters) for the stopped ones, nothing for the one never sent upstream.
    assert rows[finished["id"]]["prompt_tokens"] == 7 and not rows[finished["id"]]["estimated"]
    for name, ticket in (("running", running), ("killed", killed)):
        row = rows[ticket["id"]]
        assert row["estimated"] and row["prompt_tokens"] == count_prompt(
            [{"role": "user", "content": prompts[name]}])
        assert row["completion_tokens"] == count_tokens(prompts[name][:6]), name
    assert rows[pending["id"]]["total_tokens"] == 0
    assert len(upstream.calls_with(tag)) == 3
