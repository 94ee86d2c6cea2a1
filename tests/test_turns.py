"""A conversation's turns in the store: each message stored once, the caps on messages, what a
reconnect reads, one unfinished ticket per conversation, and regenerate at any length."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text

from relay.db import db

from .helpers import assert_error_shape, upstream_request

# SQLite's own default (SQLITE_MAX_VARIABLE_NUMBER); Debian builds it with 250,000.
_SQLITE_DEFAULT_MAX_VARIABLES = 32766


def finish(client: FlaskClient, ticket_id: str) -> bytes:
    body = client.get(f"/sse/{ticket_id}").get_data()
    assert b"event: done" in body
    return body


def stored_bytes(app: Flask) -> int:
    """Bytes of every ticket's request, message and event row."""
    with app.app_context():
        return int(db.session.execute(text(
            "SELECT (SELECT COALESCE(SUM(LENGTH(request)), 0) FROM tickets)"
            " + (SELECT COALESCE(SUM(LENGTH(content)), 0) FROM messages)"
            " + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM ticket_events)"
        )).scalar_one())


def test_each_turn_stores_its_own_messages_only(app: Flask, client: FlaskClient) -> None:
    # Before, each ticket stored a copy of the whole history: the bytes stored per turn grew
    # with the conversation, and with them what every claim and ticket read decoded.
    prompt = "a question of a thousand characters. " * 27
    body = client.post("/new", json={"prompt": prompt, "model": "mock-echo"}).get_json()
    finish(client, body["id"])
    added = []
    for _ in range(12):
        before = stored_bytes(app)
        turn = client.post("/new", json={"prompt": prompt, "model": "mock-echo",
                                         "conversation_id": body["conversation_id"]})
        assert turn.status_code == 201, turn.get_data()
        finish(client, turn.get_json()["id"])
        added.append(stored_bytes(app) - before)
    assert max(added) - min(added) < 100, added
    with app.app_context():
        longest = db.session.execute(text("SELECT MAX(LENGTH(request)) FROM tickets")).scalar()
    assert longest < 200


def test_a_request_over_the_message_cap_is_refused(app: Flask, client: FlaskClient) -> None:
    app.config["MAX_MESSAGES"] = 4
    four = [{"role": "user", "content": f"m{n}"} for n in range(4)]
    assert client.post("/new", json={"messages": four}).status_code == 201
    over = client.post("/new", json={"messages": [*four, {"role": "user", "content": "m4"}]})
    error = assert_error_shape(over, 400, "invalid_messages")
    assert "4" in error["message"] and "RELAY_MAX_MESSAGES" not in error["message"]
    v1 = client.post("/v1/chat/completions", json={"messages": four * 2})
    assert_error_shape(v1, 400, "invalid_messages")


def test_upstream_gets_the_newest_history_after_the_system_message(
    app: Flask, client: FlaskClient
) -> None:
    app.config["MAX_HISTORY_MESSAGES"] = 5
    first = client.post("/new", json={"prompt": "turn 0", "model": "mock-echo",
                                      "system": "be brief"}).get_json()
    finish(client, first["id"])
    cid = first["conversation_id"]
    for n in range(1, 5):
        finish(client, client.post("/new", json={
            "prompt": f"turn {n}", "model": "mock-echo", "conversation_id": cid,
            "system": "be brief"}).get_json()["id"])
    last = client.post("/new", json={"prompt": "turn 5", "conversation_id": cid,
                                     "system": "be brief", "model": "mock-echo"}).get_json()
    assert upstream_request(app, last["id"])["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "turn 3"},
        {"role": "user", "content": "turn 4"},
        {"role": "assistant", "content": "turn 4"},
        {"role": "user", "content": "turn 5"},
    ]
    # A conversation's own first message, when it is a system message, is the one kept.
    chat = client.post("/new", json={"model": "mock-echo", "messages": [
        {"role": "system", "content": "the rules"},
        *[{"role": "user", "content": f"q{n}"} for n in range(7)],
    ]}).get_json()
    assert [m["content"] for m in upstream_request(app, chat["id"])["messages"]] == [
        "the rules", "q3", "q4", "q5", "q6"]


@pytest.fixture()
def statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement run on the app's SQLite connections from now on."""
    seen: list[str] = []
    with app.app_context():
        db.engine.dispose()  # new connections only, each traced

        @event.listens_for(db.engine, "connect")
        def _trace(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.set_trace_callback(seen.append)

    yield seen


def test_reading_a_ticket_or_resuming_it_reads_no_history(
    app: Flask, client: FlaskClient, statements: list[str]
) -> None:
    body = client.post("/new", json={"prompt": "one two three", "model": "mock-echo"}).get_json()
    finish(client, body["id"])
    statements.clear()
    assert client.get(f"/tickets/{body['id']}").get_json()["status"] == "completed"
    resumed = client.get(f"/sse/{body['id']}", headers={"Last-Event-ID": "1"})
    assert b"event: done" in resumed.get_data()
    assert statements
    history = [s for s in statements
               if re.search(r"\bmessages\b", s) or re.search(r"\brequest\b", s)]
    assert history == []


def test_regenerate_after_more_answers_than_sqlite_has_variables(
    app: Flask, client: FlaskClient
) -> None:
    body = client.post("/new", json={"prompt": "again", "model": "mock-echo"}).get_json()
    finish(client, body["id"])
    cid = body["conversation_id"]
    with app.app_context():
        db.session.execute(text(
            "INSERT INTO messages (conversation_id, position, role, content, ticket_id, status,"
            " created_at) VALUES (:cid, :position, 'assistant', 'x', NULL, 'completed', 0)"
        ), [{"cid": cid, "position": 2 + n} for n in range(40_000)])
        db.session.commit()
        db.engine.dispose()

        @event.listens_for(db.engine, "connect")
        def _default_limit(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.setlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, _SQLITE_DEFAULT_MAX_VARIABLES
            )

    again = client.post("/new", json={"regenerate": True, "conversation_id": cid})
    assert again.status_code == 201, again.get_data()
    with app.app_context():
        left = db.session.execute(text(
            "SELECT role FROM messages WHERE conversation_id = :cid ORDER BY position"
        ), {"cid": cid}).scalars().all()
    assert left == ["user"]


def test_the_store_allows_one_unfinished_ticket_per_conversation(
    app: Flask, client: FlaskClient
) -> None:
    body = client.post("/new", json={"prompt": "first"}).get_json()
    with app.app_context(), pytest.raises(Exception, match="(?i)unique"):
        db.session.execute(text(
            "INSERT INTO tickets (id, owner, conversation_id, request, model, status, last_seq,"
            " cancel_requested, created_at) SELECT 'second', owner, conversation_id, request,"
            " model, 'pending', 0, 0, 0 FROM tickets WHERE id = :id"
        ), {"id": body["id"]})
    with app.app_context(), pytest.raises(Exception, match="(?i)unique"):
        db.session.execute(text(
            "INSERT INTO messages (conversation_id, position, role, content, created_at)"
            " SELECT conversation_id, position, role, content, 0 FROM messages"
            " WHERE conversation_id = :cid"
        ), {"cid": body["conversation_id"]})
