"""Quotas and usage in process: refusals before anything starts (JSON on `/sse`, OpenAI's shape
on `/v1`), Retry-After, overrides set by an admin, `GET /usage` (the live tests in
tests/live/test_quotas.py and test_usage.py check the same through real servers)."""

from __future__ import annotations

import calendar
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from relay import generation, quotas, users
from relay.db import db
from relay.errors import InvalidRequest

from .helpers import assert_error_shape
from .test_accounts import make_user, sign_in


def _rows(app: Flask, sql: str) -> list[tuple]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(text(sql)).all()]


def test_a_quota_refusal_leaves_the_ticket_pending_until_it_fits(
    app: Flask, client: FlaskClient
) -> None:
    app.config["TOKENS_PER_DAY"] = 300
    ticket = client.post("/new", json={"prompt": "hello there", "model": "mock-echo",
                                       "max_tokens": 400}).get_json()
    # It reserves more than the whole quota: waiting would not help, so no Retry-After.
    never = client.get(ticket["stream_url"])
    assert_error_shape(never, 429, "quota_exceeded")
    assert "Retry-After" not in never.headers
    message = never.get_json()["error"]["message"]
    assert "can never fit your daily token quota (300)" in message
    assert "smaller `max_tokens` (at most 291)" in message  # 300 less the prompt's 9
    assert client.get(f"/tickets/{ticket['id']}").get_json()["status"] == "pending"
    assert _rows(app, "SELECT COUNT(*) FROM reservations") == [(0,)]
    app.config["TOKENS_PER_DAY"] = 1000
    streamed = client.get(ticket["stream_url"])
    assert streamed.status_code == 200 and b'"completed"' in streamed.get_data()
    [(prompt, completion, estimated)] = _rows(
        app, "SELECT prompt_tokens, completion_tokens, estimated FROM usage")
    # The mock reports usage: its words of prompt, its chunks of answer.
    assert (prompt, completion, estimated) == (2, 3, 0)
    assert _rows(app, "SELECT scope LIKE 'user:anon:%', period LIKE 'd:%', tokens "
                      "FROM usage_totals ORDER BY period") == [(1, 1, 5), (1, 0, 5)]
    assert _rows(app, "SELECT COUNT(*) FROM reservations") == [(0,)]
    # One that fits the quota (9 + 990) but not what today left of it: Retry-After, to midnight.
    later = client.post("/new", json={"prompt": "hello there", "model": "mock-echo",
                                      "max_tokens": 990}).get_json()
    refused = client.get(later["stream_url"])
    assert_error_shape(refused, 429, "quota_exceeded")
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert abs(int(refused.headers["Retry-After"]) - (midnight - time.time())) <= 2
    assert "5 used" in refused.get_json()["error"]["message"]
    assert client.get(f"/tickets/{later['id']}").get_json()["status"] == "pending"


def test_a_v1_refusal_is_openai_shaped_and_ends_its_ticket(
    app: Flask, client: FlaskClient
) -> None:
    app.config["TOKENS_PER_DAY"] = 10

    def complete(**fields: object) -> TestResponse:
        return client.post("/v1/chat/completions", json={
            "model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], **fields})

    # The default answer cap (4096) can never fit in 10 tokens: no Retry-After.
    response = complete(stream=True)
    assert response.status_code == 429 and "Retry-After" not in response.headers
    error = response.get_json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] and "max_tokens" in error["message"]
    # Its client cannot come back for it: ended cancelled, with a usage row of nothing.
    assert _rows(app, "SELECT status FROM tickets") == [("cancelled",)]
    assert _rows(app, "SELECT total_tokens FROM usage") == [(0,)]
    # 8 (the prompt's estimate) + 2 fits; once it spent some, the same waits for tomorrow.
    assert complete(max_tokens=2).status_code == 200
    response = complete(stream=True, max_tokens=2)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "quota_exceeded"
    assert sorted(_rows(app, "SELECT status FROM tickets")) == [
        ("cancelled",), ("cancelled",), ("completed",)]
    assert _rows(app, "SELECT COUNT(*) FROM reservations") == [(0,)]


def test_no_limit_configured_takes_no_reservation(app: Flask, client: FlaskClient) -> None:
    ticket = client.post("/new", json={"prompt": "free", "model": "mock-echo"}).get_json()
    assert b"completed" in client.get(ticket["stream_url"]).get_data()
    with app.app_context():
        assert quotas.admission(app) is None
    assert _rows(app, "SELECT COUNT(*) FROM usage") == [(1,)]


@pytest.mark.parametrize(("now", "next_month"), [
    ("2026-12-31 23:59:59", "2027-01-01"), ("2026-02-10 00:00:00", "2026-03-01"),
])
def test_retry_after_counts_to_the_next_utc_day_and_month(now: str, next_month: str) -> None:
    moment = calendar.timegm(time.strptime(now, "%Y-%m-%d %H:%M:%S"))
    month = calendar.timegm(time.strptime(next_month, "%Y-%m-%d"))
    scope = quotas.Scope("user:u", "owner", "u", quotas.Limits(10, 10))
    for state, until in ((quotas.State(11, 0, 0, 0), moment - moment % 86400 + 86400),
                         (quotas.State(0, 11, 0, 0), month)):
        with pytest.raises(quotas.TooManyRequests) as refused:
            quotas.check(scope, state, 0, moment)
        assert refused.value.retry_after == until - moment


@pytest.mark.parametrize(("limits", "state"), [
    (quotas.Limits(tokens_per_day=100), quotas.State(0, 0, 0, 0)),
    (quotas.Limits(tokens_per_month=100, max_generations=1), quotas.State(0, 0, 1, 0)),
])
def test_a_reservation_larger_than_the_whole_quota_is_refused_without_retry_after(
    limits: quotas.Limits, state: quotas.State
) -> None:
    scope = quotas.Scope("user:u", "owner", "u", limits)
    quotas.check(scope, quotas.State(0, 0, 0, 0), 100, time.time(), 20)  # exactly fits
    with pytest.raises(quotas.TooManyRequests) as refused:
        quotas.check(scope, state, 101, time.time(), 20)
    # Before the generations' refusal too: that one would send the caller back in 5 s.
    assert refused.value.code == "quota_exceeded" and refused.value.retry_after is None
    assert "smaller `max_tokens` (at most 80)" in str(refused.value.message)
    with pytest.raises(quotas.TooManyRequests) as prompt_alone:
        quotas.check(scope, quotas.State(0, 0, 0, 0), 150, time.time(), 120)
    assert "prompt alone is about 120 tokens" in str(prompt_alone.value.message)


def test_generations_are_refused_at_the_limit() -> None:
    scope = quotas.Scope("key:k", "key_id", "k", quotas.Limits(max_generations=2))
    quotas.check(scope, quotas.State(0, 0, 1, 0), 0, time.time())
    with pytest.raises(quotas.TooManyRequests) as refused:
        quotas.check(scope, quotas.State(0, 0, 2, 0), 0, time.time())
    assert refused.value.code == "too_many_generations" and refused.value.retry_after == 5


def test_an_admin_sets_and_clears_a_users_limits(app: Flask) -> None:
    app.config["AUTH"] = "accounts"
    make_user(app, "root", admin=True)
    make_user(app, "alice")
    admin = sign_in(app, "root")
    changed = admin.patch("/admin/users/alice", json={"limits": {"tokens_per_day": 500}})
    assert changed.status_code == 200
    assert changed.get_json()["user"]["limits"] == {"tokens_per_day": 500}
    cleared = admin.patch("/admin/users/alice", json={"limits": {"tokens_per_day": 0}})
    assert cleared.get_json()["user"]["limits"] is None
    for bad in ({"tokens_per_day": -1}, {"tokens_per_day": "5"}, {"per_hour": 5}, [1]):
        assert_error_shape(admin.patch("/admin/users/alice", json={"limits": bad}), 400)
    alice = sign_in(app, "alice")
    assert alice.patch("/admin/users/alice", json={"limits": {}}).status_code == 403
    with app.app_context():
        assert users.find_user("alice").name == "alice"
        with pytest.raises(InvalidRequest):
            quotas.set_limits("user", 1, {"max_generations": True})


def test_usage_shows_the_callers_own(app: Flask, client: FlaskClient) -> None:
    app.config["MODEL_PRICES"] = {"mock-echo": (1.0, 2.0)}
    for prompt in ("one two", "three"):
        ticket = client.post("/new", json={"prompt": prompt, "model": "mock-echo"}).get_json()
        assert b"completed" in client.get(ticket["stream_url"]).get_data()
    shown = client.get("/usage").get_json()
    assert shown["totals"]["tickets"] == 2 and shown["totals"]["estimated"] is False
    totals = shown["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (3, 4)  # mock: words, chunks
    assert totals["cost"] == pytest.approx((3 * 1.0 + 4 * 2.0) / 1000)
    [day] = shown["by_day"]
    assert day["model"] == "mock-echo" and day["total_tokens"] == shown["totals"]["total_tokens"]
    assert app.test_client().get("/usage").get_json()["totals"]["tickets"] == 0
    assert_error_shape(client.get("/usage?since=yesterday"), 400)
    assert client.get("/usage?since=2999-01-01").get_json()["by_day"] == []
    assert b'relay_tokens_total{estimated="false",kind="completion",model="mock-echo"}' in (
        client.get("/metrics").get_data())


@pytest.mark.parametrize(("deltas", "kept"), [
    (["One", " two", " three"], 3),  # an upstream that heeds a cap of 3
    (["...", "!!!", "??"], 3),  # estimated high (two tokens each), never cut short for it
    (["a", "b", "c", "d", "e"], 3),  # a token a chunk, past the cap
    ([" word" * 4, " word" * 4], 1),  # many a chunk: by the estimate, at twice the cap
])
def test_an_answer_is_stopped_past_its_cap_by_what_it_has_at_least(
    deltas: list[str], kept: int
) -> None:
    producer = object.__new__(generation.Producer)  # only the counting, no app
    producer.ticket_id, producer.cap, producer.cut = "t", 3, False
    producer.answer_chunks = producer.answer_estimate = 0
    passed = [producer._past_cap(text) for text in deltas]
    assert passed == [False] * kept + [True] * (len(deltas) - kept)
    assert producer.cut == (kept < len(deltas))
