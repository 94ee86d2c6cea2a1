"""Conversations: history sent upstream, regenerate, list/rename/delete, and ownership."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import delete

from relay import create_app, generation
from relay.db import MIGRATIONS_DIR, db
from relay.models import Conversation, Ticket

from .helpers import assert_error_shape, upstream_request


def finish(client: FlaskClient, ticket_id: str) -> bytes:
    """Stream a ticket to its end in-process (the mock upstream yields to gevent's hub)."""
    return client.get(f"/sse/{ticket_id}").get_data()


def test_follow_up_sends_earlier_turns_upstream(app: Flask, client: FlaskClient) -> None:
    first = client.post("/new", json={"prompt": "first question", "system": "be brief",
                                      "model": "mock-echo"})
    body = first.get_json()
    assert upstream_request(app, body["id"])["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"}
    ]
    assert b"event: done" in finish(client, body["id"])
    second = client.post(
        "/new", json={"prompt": "second question", "conversation_id": body["conversation_id"]}
    ).get_json()
    assert second["conversation_id"] == body["conversation_id"]
    assert upstream_request(app, second["id"])["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first question"},
        {"role": "user", "content": "second question"},
    ]


def test_regenerate_drops_the_last_answer(app: Flask, client: FlaskClient) -> None:
    body = client.post("/new", json={"prompt": "answer twice"}).get_json()
    finish(client, body["id"])
    again = client.post(
        "/new", json={"regenerate": True, "conversation_id": body["conversation_id"]}
    ).get_json()
    assert upstream_request(app, again["id"])["messages"] == [
        {"role": "user", "content": "answer twice"}
    ]
    finish(client, again["id"])
    messages = client.get(f"/conversations/{body['conversation_id']}").get_json()["messages"]
    assert [(m["role"], m["ticket_id"]) for m in messages] == [
        ("user", None), ("assistant", again["id"])
    ]


def test_new_turn_while_generating_is_409(app: Flask, client: FlaskClient) -> None:
    body = client.post("/new", json={"prompt": "slow"}).get_json()
    with app.app_context():
        db.session.get(Ticket, body["id"]).status = "running"
        db.session.get(Ticket, body["id"]).lease_expires_at = 1e12
        db.session.commit()
    busy = client.post("/new", json={"prompt": "more", "conversation_id": body["conversation_id"]})
    assert_error_shape(busy, 409, "conversation_busy")


def test_unopened_ticket_is_cancelled_by_the_next_turn(client: FlaskClient) -> None:
    body = client.post("/new", json={"prompt": "never streamed"}).get_json()
    client.post("/new", json={"prompt": "next", "conversation_id": body["conversation_id"]})
    assert client.get(f"/tickets/{body['id']}").get_json()["status"] == "cancelled"


def test_list_show_rename_delete(client: FlaskClient) -> None:
    a = client.post("/new", json={"prompt": "alpha " * 30}).get_json()
    b = client.post("/new", json={"prompt": "beta"}).get_json()
    listed = client.get("/conversations").get_json()["conversations"]
    assert [c["id"] for c in listed] == [b["conversation_id"], a["conversation_id"]]
    assert listed[1]["title"].startswith("alpha alpha") and len(listed[1]["title"]) <= 61
    shown = client.get(f"/conversations/{b['conversation_id']}").get_json()
    assert shown["active_ticket"] == {"id": b["id"], "stream_url": f"/sse/{b['id']}"}
    renamed = client.patch(f"/conversations/{a['conversation_id']}", json={"title": "Renamed"})
    assert renamed.get_json()["title"] == "Renamed"
    assert_error_shape(client.patch(f"/conversations/{a['conversation_id']}", json={}), 400)
    lone_surrogate = b'{"title": "half a pair \\ud800"}'
    assert_error_shape(client.patch(f"/conversations/{a['conversation_id']}", data=lone_surrogate,
                                    content_type="application/json"), 400)
    rename = f"/conversations/{a['conversation_id']}"
    assert_error_shape(client.patch(rename, data="{", content_type="application/json"), 400,
                       "invalid_json")
    assert_error_shape(client.patch(rename, json=["Renamed"]), 400)
    assert_error_shape(client.patch(rename, data={"title": "Form"}), 415,
                       "unsupported_media_type")
    assert_error_shape(client.patch(rename, json={"title": "t" * 100_000}), 413,
                       "prompt_too_large")
    assert client.get(rename).get_json()["title"] == "Renamed"
    assert client.delete(f"/conversations/{a['conversation_id']}").status_code == 204
    assert_error_shape(client.get(f"/tickets/{a['id']}"), 404, "ticket_not_found")
    assert_error_shape(
        client.get(f"/conversations/{a['conversation_id']}"), 404, "conversation_not_found"
    )


def test_other_callers_cannot_see_or_continue_a_conversation(app: Flask) -> None:
    alice, bob = app.test_client(), app.test_client()
    mine = alice.post("/new", json={"prompt": "private"}).get_json()
    cid = mine["conversation_id"]
    assert bob.get("/conversations").get_json()["conversations"] == []
    assert_error_shape(bob.get(f"/conversations/{cid}"), 404, "conversation_not_found")
    assert_error_shape(bob.delete(f"/conversations/{cid}"), 404, "conversation_not_found")
    continued = bob.post("/new", json={"prompt": "x", "conversation_id": cid})
    assert_error_shape(continued, 404, "conversation_not_found")
    assert_error_shape(bob.get(f"/sse/{mine['id']}"), 404, "ticket_not_found")


def test_new_turn_after_a_dead_worker_fails_its_ticket_and_goes_on(
    app: Flask, client: FlaskClient
) -> None:
    body = client.post("/new", json={"prompt": "orphaned"}).get_json()
    with app.app_context():
        ticket = db.session.get(Ticket, body["id"])
        ticket.status, ticket.lease_expires_at, ticket.claimed_by = "running", 1.0, "gone:1"
        db.session.commit()
    again = client.post("/new", json={"prompt": "next", "conversation_id": body["conversation_id"]})
    assert again.status_code == 201
    orphan = client.get(f"/tickets/{body['id']}").get_json()
    assert orphan["status"] == "failed" and orphan["error"]["code"] == "worker_lost"


@pytest.fixture()
def slow_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The in-process app with a mock upstream that takes 2 ms a chunk."""
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"INSTANCE_PATH": str(tmp_path), "MOCK_DELAY_MS": 2.0})
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
    yield app
    with app.app_context():
        db.engine.dispose()


def test_a_ticket_deleted_behind_its_producers_back_stops_it_and_not_the_others(
    slow_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # Another host deleted the conversation and no cancel reached this producer (no Redis): its
    # chunks no longer fit the store. It must stop, and the other streams' chunks, which share
    # its batches, must go on being committed.
    client = slow_app.test_client()
    # mock-echo streams 8,000 characters as 2,000 chunks (4 s), 400 as 100.
    doomed = client.post("/new", json={"prompt": "d" * 8000, "model": "mock-echo"}).get_json()
    doomed_stream = gevent.spawn(finish, client, doomed["id"])
    while (live := generation.live_log(doomed["id"])) is None or live.visible < 5:
        gevent.sleep(0.01)
    with slow_app.app_context():
        # Deleted in the store (cascading to its ticket), not through relay, whose delete ends
        # a running ticket first: the producer must still cope.
        db.session.execute(delete(Conversation).where(
            Conversation.id == doomed["conversation_id"]))
        db.session.commit()
    other = client.post("/new", json={"prompt": "o" * 400, "model": "mock-echo"}).get_json()
    body = finish(client, other["id"]).decode()
    assert body.count('data: {"delta"') == 100 and '"status": "completed"' in body
    doomed_body = doomed_stream.get(timeout=10).decode()
    assert doomed_body.rstrip().endswith('"finish_reason": "cancelled", "usage": {}}')
    assert generation.live_log(doomed["id"]) is None
    assert live.count < 1000  # its producer stopped, it did not generate the answer to its end
    assert "batch write failed" not in caplog.text
