"""The early refusal of `POST /new` and `/v1/chat/completions` when a quota is already used up or
the generations are at their cap: the claim's 429, before anything is stored."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from relay import quotas
from relay.db import db

from .helpers import assert_error_shape

CHAT = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _count(app: Flask, table: str) -> int:
    with app.app_context():
        return int(db.session.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _spend(client: FlaskClient) -> int:
    """Chat once to the end; returns the tokens it spent (the mock reports its usage)."""
    ticket = client.post("/new", json={"prompt": "one two", "model": "mock-echo",
                                       "max_tokens": 10}).get_json()
    assert b'"completed"' in client.get(ticket["stream_url"]).get_data()
    return int(client.get("/usage").get_json()["totals"]["total_tokens"])


def test_a_used_up_quota_refuses_new_before_storing_anything(
    app: Flask, client: FlaskClient
) -> None:
    app.config["TOKENS_PER_DAY"] = 1000
    used = _spend(client)
    assert used > 0
    app.config["TOKENS_PER_DAY"] = used
    stored = _count(app, "tickets"), _count(app, "conversations")
    refused = client.post("/new", json={"prompt": "again", "model": "mock-echo"})
    error = assert_error_shape(refused, 429, "quota_exceeded")
    assert "nothing is left" in error["message"]
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert abs(int(refused.headers["Retry-After"]) - (midnight - time.time())) <= 2
    assert (_count(app, "tickets"), _count(app, "conversations")) == stored
    # One token left: the pre-check lets it through; the claim's reservation decides.
    app.config["TOKENS_PER_DAY"] = used + 1
    ticket = client.post("/new", json={"prompt": "again", "model": "mock-echo"})
    assert ticket.status_code == 201
    assert_error_shape(client.get(ticket.get_json()["stream_url"]), 429, "quota_exceeded")
    assert _count(app, "reservations") == 0


def test_a_used_up_quota_refuses_v1_in_openais_shape(app: Flask, client: FlaskClient) -> None:
    app.config["TOKENS_PER_MONTH"] = 1000
    used = _spend(client)
    app.config["TOKENS_PER_MONTH"] = used
    stored = _count(app, "tickets")
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    error = response.get_json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] and "month" in error["message"]
    assert _count(app, "tickets") == stored


def test_generations_at_the_cap_refuse_new_and_v1(app: Flask, client: FlaskClient) -> None:
    app.config["MAX_GENERATIONS"] = 1
    ticket = client.post("/new", json={"prompt": "held", "model": "mock-echo"}).get_json()
    with app.app_context():  # the reservation a running generation of this caller holds
        row = db.session.execute(text("SELECT owner FROM tickets WHERE id = :id"),
                                 {"id": ticket["id"]}).one()
        db.session.execute(text(
            "INSERT INTO reservations (ticket_id, owner, key_id, tokens, created_at) "
            "VALUES (:id, :owner, NULL, 0, :now)"), {"id": ticket["id"], "owner": row.owner,
                                                     "now": time.time()})
        db.session.commit()
    stored = _count(app, "tickets")
    refused = client.post("/new", json={"prompt": "one more", "model": "mock-echo"})
    assert_error_shape(refused, 429, "too_many_generations")
    assert refused.headers["Retry-After"] == "5"
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "too_many_generations"
    assert _count(app, "tickets") == stored
    # Another caller holds none: theirs is admitted.
    assert app.test_client().post("/new", json={"prompt": "mine", "model": "mock-echo"}
                                  ).status_code == 201


def test_no_limit_runs_no_precheck(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    applying_scopes = quotas.applying_scopes

    def counted(*args: Any) -> list[quotas.Scope]:
        calls.append(args[2])
        return applying_scopes(*args)

    monkeypatch.setattr(quotas, "applying_scopes", counted)
    assert client.post("/new", json={"prompt": "free", "model": "mock-echo"}).status_code == 201
    assert client.post("/v1/chat/completions", json={**CHAT, "stream": False}).status_code == 200
    assert calls == []
    app.config["MAX_GENERATIONS"] = 5
    assert client.post("/new", json={"prompt": "limited", "model": "mock-echo"}).status_code == 201
    assert len(calls) == 1
