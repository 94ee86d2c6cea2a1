"""The migration to messages stored once, on data written by the code before it (SQLite here,
PostgreSQL in tests/live/test_conversation_turns.py): up, then down again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from relay import create_app
from relay.db import MIGRATIONS_DIR, db

from .helpers import upstream_request

BEFORE = "9ebd9a8758e2"
T1, T2, T3 = (f"ticket{n}".ljust(32, "x") for n in (1, 2, 3))
_MESSAGES = [  # position, role, content, ticket, status, created_at
    (0, "system", "the rules", None, None, 1.0),
    (1, "user", "q1", None, None, 1.0),
    (2, "assistant", "a1", T1, "completed", 1.5),
    (3, "user", "q2", None, None, 2.0),
    (3, "user", "q2 again", None, None, 2.1),  # two concurrent turns took one position
]
_TICKETS = [  # id, status, created_at, request
    (T1, "completed", 1.0, {"model": "m", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "system", "content": "the rules"},
        {"role": "user", "content": "q1"}]}),
    (T2, "pending", 2.0, {"model": "m", "temperature": 0.5, "messages": [
        {"role": "system", "content": "the rules"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}),
    (T3, "pending", 2.1, {"model": "m", "messages": [
        {"role": "system", "content": "the rules"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2 again"}]}),
]


def _write_old_data() -> None:
    db.session.execute(text(
        "INSERT INTO conversations (id, owner, title, created_at, updated_at)"
        " VALUES ('c1', 'owner', 'old', 1.0, 2.1)"))
    db.session.execute(text(
        "INSERT INTO messages (conversation_id, position, role, content, ticket_id, status,"
        " created_at) VALUES ('c1', :p, :r, :c, :t, :s, :at)"
    ), [dict(zip(("p", "r", "c", "t", "s", "at"), row, strict=True)) for row in _MESSAGES])
    db.session.execute(text(
        "INSERT INTO tickets (id, owner, conversation_id, request, model, status, last_seq,"
        " cancel_requested, created_at) VALUES (:id, 'owner', 'c1', :request, 'm', :status,"
        " :last_seq, false, :at)"
    ), [{"id": id_, "status": status, "at": at, "request": json.dumps(request),
         "last_seq": 1 if status == "completed" else 0}
        for id_, status, at, request in _TICKETS])
    db.session.commit()


def _requests() -> dict[str, Any]:
    rows = db.session.execute(text("SELECT id, request FROM tickets ORDER BY id")).all()
    return {id_: json.loads(r) if isinstance(r, str) else r for id_, r in rows}


def check_migration(app: Flask) -> None:
    """Migrate old data up and down and check it at each end."""
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        _write_old_data()
        upgrade(directory=MIGRATIONS_DIR)
        assert db.session.execute(text(
            "SELECT content FROM messages ORDER BY position")).scalars().all() == [
            "the rules", "q1", "a1", "q2", "q2 again"]
        assert _requests() == {T1: {"model": "m", "system": "be brief"},
                               T2: {"model": "m", "temperature": 0.5}, T3: {"model": "m"}}
        states = db.session.execute(text(
            "SELECT id, status, last_seq FROM tickets ORDER BY id")).all()
        assert [tuple(row) for row in states] == [
            (T1, "completed", 1), (T2, "cancelled", 1), (T3, "pending", 0)]
        done = db.session.execute(text(
            "SELECT kind, data FROM ticket_events WHERE ticket_id = :id"), {"id": T2}).one()
        assert done[0] == "done" and json.loads(done[1])["status"] == "cancelled"
        db.session.commit()
    assert upstream_request(app, T3)["messages"] == [
        {"role": "system", "content": "the rules"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
        {"role": "user", "content": "q2 again"}]
    with app.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        requests = _requests()
        assert requests[T1] == _TICKETS[0][3]
        assert requests[T3]["messages"][-2:] == [
            {"role": "user", "content": "q2"}, {"role": "user", "content": "q2 again"}]
        db.session.commit()


def test_the_migration_keeps_old_data_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    app = create_app({"INSTANCE_PATH": str(tmp_path)})
    check_migration(app)
    with app.app_context():
        db.engine.dispose()
