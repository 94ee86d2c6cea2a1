"""Turns of one conversation on a real relay: the history the upstream receives, concurrent
turns on SQLite and PostgreSQL, every end of a ticket releasing its conversation, and the
migration of old data on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from relay import create_app
from relay.db import db

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from ..test_migration_messages import check_migration
from .conftest import upgrade_database
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)

HISTORY_CAP = 4
CONCURRENT_TURNS = 12


def _env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
            "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_TIMEOUT_SECONDS": "5", **extra}


@pytest.fixture(scope="module")
def capped(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """A relay with two workers on SQLite that sends at most HISTORY_CAP messages upstream."""
    return start_relay(_env(upstream, RELAY_MAX_HISTORY_MESSAGES=str(HISTORY_CAP)))


def test_upstream_receives_the_newest_history_after_the_system_message(
    capped: RelayServer, upstream: FakeUpstream
) -> None:
    relay = capped
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        first = new_ticket(http, f"{tag} turn 0", system="stay brief")
        read_stream(http, first["stream_url"])
        for n in range(1, 6):
            turn = new_ticket(http, f"{tag} turn {n}", system="stay brief",
                              conversation_id=first["conversation_id"])
            assert text_of(read_stream(http, turn["stream_url"])) == f"{tag} turn {n}"
    calls = [call for n in range(6) for call in upstream.calls_with(f"{tag} turn {n}")]
    assert len(calls) == 6
    assert all(len(c.messages) <= HISTORY_CAP and c.messages[0]["role"] == "system"
               for c in calls)
    assert calls[-1].messages == [
        {"role": "system", "content": "stay brief"},
        {"role": "user", "content": f"{tag} turn 4"},
        {"role": "assistant", "content": f"{tag} turn 4"},
        {"role": "user", "content": f"{tag} turn 5"},
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(
    request: pytest.FixtureRequest, start_relay: Callable[..., RelayServer],
    upstream: FakeUpstream, new_database: Callable[[], str], tmp_path: Path,
) -> tuple[RelayServer, Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]]:
    """A relay with two workers on SQLite or PostgreSQL, and a query on its store."""
    if request.param == "sqlite":
        relay = request.getfixturevalue("capped")

        def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(relay.log_path.parent / "relay.db")) as conn:
                return conn.execute(sql, params).fetchall()

        return relay, query
    url = new_database()
    upgraded = upgrade_database(url, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    relay = start_relay(_env(upstream, DATABASE_URL=url), workers=2, instance=tmp_path)

    def pg_query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(sql.replace(":cid", "%(cid)s"), params).fetchall()

    return relay, pg_query


def test_concurrent_turns_leave_one_unfinished_ticket_and_unique_positions(
    store: tuple[RelayServer, Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]],
) -> None:
    relay, query = store
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        first = new_ticket(http, "opening")
        read_stream(http, first["stream_url"])
        cookies = dict(http.cookies)
    cid = first["conversation_id"]
    barrier = threading.Barrier(CONCURRENT_TURNS)

    def turn(n: int) -> httpx.Response:
        with httpx.Client(base_url=relay.url, timeout=30, cookies=cookies) as http:
            http.get("/healthz")  # connected before the race
            barrier.wait()
            return http.post("/new", json={"prompt": f"turn {n}", "conversation_id": cid})

    with ThreadPoolExecutor(CONCURRENT_TURNS) as pool:
        responses = list(pool.map(turn, range(CONCURRENT_TURNS)))
    created = [r.json()["id"] for r in responses if r.status_code == 201]
    for refused in (r for r in responses if r.status_code != 201):
        assert_error_shape(refused, 409, "conversation_busy")
    assert created
    # A turn replaces a ticket nobody started streaming: of those created, all but the last
    # ended cancelled, before anyone could generate them.
    tickets = dict(query("SELECT id, status FROM tickets WHERE conversation_id = :cid",
                         {"cid": cid}))
    unfinished = [t for t, status in tickets.items() if status in ("pending", "running")]
    assert len(unfinished) == 1 and unfinished[0] in created
    assert {tickets[t] for t in created if t != unfinished[0]} <= {"cancelled"}
    positions = [row[0] for row in query(
        "SELECT position FROM messages WHERE conversation_id = :cid ORDER BY position",
        {"cid": cid})]
    assert positions == list(range(2 + len(created)))
    with httpx.Client(base_url=relay.url, timeout=30, cookies=cookies) as http:
        done = read_stream(http, f"/sse/{unfinished[0]}")[-1]
        assert done[2]["status"] == "completed"
        again = http.post("/new", json={"prompt": "after the race", "conversation_id": cid})
        assert again.status_code == 201, again.text


ENDS = [("echo", "completed"), ("status:500", "failed"), ("drop:3", "failed"),
        ("stall:2", "cancelled")]


@pytest.mark.parametrize(("model", "end"), ENDS, ids=[model for model, _ in ENDS])
def test_every_end_of_a_ticket_releases_its_conversation(
    client: httpx.Client, model: str, end: str
) -> None:
    first = new_ticket(client, "opening")
    read_stream(client, first["stream_url"])
    cid = first["conversation_id"]
    ticket = new_ticket(client, "abcdefghijklmnop", model=model, conversation_id=cid)
    if end == "cancelled":
        head = read_stream(client, ticket["stream_url"], stop_after=2)
        refused = client.post("/new", json={"prompt": "too early", "conversation_id": cid})
        assert_error_shape(refused, 409, "conversation_busy")
        assert client.post(f"/sse/{ticket['id']}/cancel").status_code in (200, 202)
        events = head + read_stream(client, ticket["stream_url"], last_event_id=2)
    else:
        events = read_stream(client, ticket["stream_url"])
    assert events[-1][2]["status"] == end
    after = new_ticket(client, "released", conversation_id=cid)
    assert text_of(read_stream(client, after["stream_url"])) == "released"


@pytest.mark.postgres
def test_the_migration_keeps_old_data_on_postgresql(
    new_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"INSTANCE_PATH": str(tmp_path), "DATABASE_URL": new_database()})
    check_migration(app)
    with app.app_context():
        db.engine.dispose()

