"""Usage through real servers: after every way a ticket ends (completed, cancelled running or
pending, a reader gone, an upstream fault, its worker SIGKILLed and reaped) no reservation is
left and the usage rows equal the stored tickets, one each, token for token; the upstream's
report is used as is, its absence is estimated; `GET /usage` and `relay usage --json` agree."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.estimate import count_prompt, count_tokens

from ..helpers import new_ticket, read_stream
from .accounts import relay_cli
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer
from .usage_helpers import assert_settled

pytestmark = pytest.mark.timeout(120)


def _wait_for_chunks(upstream: FakeUpstream, tag: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while not upstream.calls_with(tag) or upstream.calls_with(tag)[0].chunks_sent < count:
        assert time.monotonic() < deadline, "the upstream call did not start"
        time.sleep(0.02)


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
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path: Path,
) -> None:
    instance = tmp_path / "usage"
    # Limits on, so that every claim takes a reservation for the finishes to release.
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_TOKENS_PER_DAY": "100000000",
        "RELAY_MAX_GENERATIONS": "100", "RELAY_LEASE_SECONDS": "2",
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
        with closing(sqlite3.connect(instance / "relay.db")) as store:
            claimed_by = store.execute("SELECT claimed_by FROM tickets WHERE id = ?",
                                       (killed["id"],)).fetchone()[0]
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

    with closing(sqlite3.connect(instance / "relay.db")) as store:
        assert_settled(store)
        store.row_factory = sqlite3.Row
        tickets = {row["id"]: row for row in store.execute("SELECT * FROM tickets")}
        rows = {row["ticket_id"]: row for row in store.execute("SELECT * FROM usage")}
    assert set(prompts) <= set(rows)
    with httpx.Client(base_url=relay.url, timeout=30, cookies=owner_cookies) as http:
        for ticket_id, prompt in prompts.items():
            ticket, row = tickets[ticket_id], rows[ticket_id]
            text = http.get(f"/tickets/{ticket_id}").json()["text"]
            said = json.loads(ticket["usage"] or "{}")
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
    listed = relay_cli(instance, "usage", "--json")
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
