"""Requests per minute: the window's arithmetic (a table of cases), and the store's counter in
process (the live tests in tests/live/test_ratelimits.py check it through real servers, and
Redis)."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from relay.db import db
from relay.ratelimits import Count, refusal, retry_after

from .helpers import assert_error_shape
from .test_accounts import make_user, sign_in
from .test_quotas import _rows


@pytest.mark.parametrize(("reset_at", "now", "expected"), [
    (160.0, 100.0, 60),  # the window just started
    (160.0, 100.5, 60),  # part of a second left rounds up
    (160.0, 159.2, 1),
    (160.0, 160.0, 1),  # ended: at least a second, never 0
    (160.0, 170.0, 1),  # a clock behind another host's
    (160.0, 90.0, 60),  # ahead: never more than the minute
])
def test_retry_after(reset_at: float, now: float, expected: int) -> None:
    assert retry_after(reset_at, now) == expected


@pytest.mark.parametrize(("counts", "expected"), [
    ([], None),
    ([Count("user:u", 10, True, 160.0)], None),
    ([Count("user:u", 10, False, 130.0)], ("you", 30)),
    ([Count("user:u", 10, True, 160.0), Count("key:k", 2, False, 105.5)],
     ("this API key", 6)),
    ([Count("user:u", 10, False, 150.0), Count("key:k", 2, False, 105.0)], ("you", 50)),
])
def test_refusal(counts: list[Count], expected: tuple[str, int] | None) -> None:
    error = refusal(counts, 100.0)
    if expected is None:
        assert error is None
        return
    assert error is not None and error.code == "rate_limited" and error.status == 429
    who, wait = expected
    assert error.retry_after == wait
    assert f"for {who} (at most {counts[0].limit if who == 'you' else counts[1].limit}" in (
        error.message)


def test_over_the_limit_is_refused_before_anything_is_stored(
    app: Flask, client: FlaskClient
) -> None:
    app.config["REQUESTS_PER_MINUTE"] = 3
    for n in range(3):
        assert client.post("/new", json={"prompt": f"p{n}", "model": "mock-echo"}).status_code \
            == 201
    refused = client.post("/new", json={"prompt": "one more", "model": "mock-echo"})
    assert_error_shape(refused, 429, "rate_limited")
    assert 55 <= int(refused.headers["Retry-After"]) <= 60
    assert _rows(app, "SELECT COUNT(*) FROM tickets") == [(3,)]
    v1 = client.post("/v1/chat/completions", json={
        "model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]})
    assert v1.status_code == 429 and 55 <= int(v1.headers["Retry-After"]) <= 60
    error = v1.get_json()["error"]
    assert error["code"] == "rate_limited" and error["type"] and error["message"]
    assert _rows(app, "SELECT COUNT(*) FROM tickets") == [(3,)]
    # Another visitor has a window of their own.
    other = app.test_client()
    assert other.post("/new", json={"prompt": "mine", "model": "mock-echo"}).status_code == 201
    # A window that ended starts again at the next request.
    with app.app_context():
        db.session.execute(text("UPDATE request_counts SET window_start = window_start - 61"))
        db.session.commit()
    assert client.post("/new", json={"prompt": "later", "model": "mock-echo"}).status_code == 201
    assert sorted(_rows(app, "SELECT requests FROM request_counts")) == [(1,), (1,)]


def test_no_limit_counts_nothing(app: Flask, client: FlaskClient) -> None:
    for n in range(3):
        assert client.post("/new", json={"prompt": f"p{n}", "model": "mock-echo"}).status_code \
            == 201
    assert _rows(app, "SELECT COUNT(*) FROM request_counts") == [(0,)]


def test_an_admins_override_limits_that_user_alone(app: Flask) -> None:
    app.config["AUTH"] = "accounts"
    make_user(app, "root", admin=True)
    make_user(app, "alice")
    admin = sign_in(app, "root")
    changed = admin.patch("/admin/users/alice", json={"limits": {"requests_per_minute": 1}})
    assert changed.get_json()["user"]["limits"] == {"requests_per_minute": 1}
    time.sleep(1.0 - time.monotonic() % 1.0)  # overrides are looked for once a second
    alice = sign_in(app, "alice")
    assert alice.post("/new", json={"prompt": "one", "model": "mock-echo"}).status_code == 201
    refused = alice.post("/new", json={"prompt": "two", "model": "mock-echo"})
    assert_error_shape(refused, 429, "rate_limited")
    assert admin.post("/new", json={"prompt": "root's", "model": "mock-echo"}).status_code == 201
