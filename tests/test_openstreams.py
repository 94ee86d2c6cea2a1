"""Open streams per user and per address, in process on the store (the live tests in
tests/live/test_open_streams.py check them through real servers with two workers, Redis and a
killed worker); and requests per minute per client address."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from relay import apikeys, quotas
from relay.cli import main
from relay.db import db
from relay.errors import InvalidRequest, TooManyRequests
from relay.openstreams import Slot, StreamLimiter, held
from relay.state import relay_state

from .helpers import assert_error_shape
from .test_accounts import make_user, sign_in
from .test_quotas import _rows


def _limit(app: Flask, **settings: Any) -> StreamLimiter:
    """The app's limiter, remade with these settings (it reads them when the app is made)."""
    app.config.update(settings)
    with app.app_context():
        limiter = relay_state(app).open_streams = StreamLimiter(app.config, db.engine)
    return limiter


def _refused(limiter: StreamLimiter, owner: str, address: str, who: str, limit: int) -> None:
    with pytest.raises(TooManyRequests) as refused:
        limiter.admit(owner, address)
    error = refused.value
    assert (error.status, error.code, error.retry_after) == (429, "too_many_streams", 5)
    assert f"for {who} (at most {limit})" in error.message


def test_slots_per_user_and_per_address_are_taken_and_given_back(app: Flask) -> None:
    limiter = _limit(app, MAX_STREAMS_PER_USER=2, MAX_STREAMS_PER_ADDRESS=3)
    with app.app_context():
        first = limiter.admit("anon:a", "10.0.0.1")
        second = limiter.admit("anon:a", "10.0.0.1")
        assert isinstance(first, Slot) and isinstance(second, Slot)
        _refused(limiter, "anon:a", "10.0.0.2", "you", 2)  # another address: still the user's
        third = limiter.admit("anon:b", "10.0.0.1")
        _refused(limiter, "anon:c", "10.0.0.1", "your address", 3)
        assert limiter.admit("anon:c", "10.0.0.9") is not None
        # A HEAD only checks: refused at the limit, and takes nothing below it.
        with pytest.raises(TooManyRequests):
            limiter.admit("anon:a", "10.0.0.7", take=False)
        assert limiter.admit("anon:d", "10.0.0.7", take=False) is None
        assert _rows(app, "SELECT COUNT(*) FROM open_streams") == [(4,)]
        first.release()
        first.release()  # once, however often
        assert limiter.admit("anon:a", "10.0.0.2") is not None
        second.release()
        third.release()
    assert _rows(app, "SELECT owner, address FROM open_streams ORDER BY owner") == [
        ("anon:a", "10.0.0.2"), ("anon:c", "10.0.0.9")]


def test_an_expired_slot_stops_counting_and_a_renewed_one_does_not(app: Flask) -> None:
    limiter = _limit(app, MAX_STREAMS_PER_USER=1, LEASE_SECONDS=30.0)
    with app.app_context():
        slot = limiter.admit("anon:a", "10.0.0.1")
        assert slot is not None
        db.session.execute(text("UPDATE open_streams SET expires_at = expires_at - 60"))
        db.session.commit()
        limiter._renew(time.time())  # this worker still holds it: renewed
        _refused(limiter, "anon:a", "10.0.0.1", "you", 1)
        # As a dead worker's: not renewed, so it stops counting once its lease ran out.
        db.session.execute(text("UPDATE open_streams SET expires_at = expires_at - 60, "
                                "worker = 'elsewhere:1:000000'"))
        db.session.commit()
        assert limiter.admit("anon:a", "10.0.0.1") is not None
        limiter._renew(time.time())  # purges the dead worker's row
    assert _rows(app, "SELECT COUNT(*) FROM open_streams") == [(1,)]


def test_no_limit_takes_nothing(app: Flask, client: FlaskClient) -> None:
    ticket = client.post("/new", json={"prompt": "hi", "model": "mock-echo"}).get_json()
    assert client.get(ticket["stream_url"]).status_code == 200
    assert _rows(app, "SELECT COUNT(*) FROM open_streams") == [(0,)]


def test_a_body_never_read_gives_its_slot_back_when_closed(app: Flask) -> None:
    limiter = _limit(app, MAX_STREAMS_PER_USER=1)
    with app.app_context():
        slot = limiter.admit("anon:a", "10.0.0.1")

        def body() -> Any:
            yield b"never"

        held(body(), slot).close()  # type: ignore[attr-defined]
        assert limiter.admit("anon:a", "10.0.0.1") is not None
    plain = iter([b"x"])
    assert held(plain, None) is plain  # no limit: the body itself


def test_one_stream_too_many_is_refused_before_it_starts(app: Flask, client: FlaskClient) -> None:
    _limit(app, MAX_STREAMS_PER_USER=1)
    first, second = (client.post("/new", json={"prompt": f"p{n}", "model": "mock-echo"})
                     .get_json() for n in range(2))
    open_one = client.get(first["stream_url"], buffered=False)
    assert open_one.status_code == 200
    refused = client.get(second["stream_url"])
    assert_error_shape(refused, 429, "too_many_streams")
    assert refused.headers["Retry-After"] == "5"
    assert client.head(second["stream_url"]).status_code == 429
    assert client.get(f"/tickets/{second['id']}").get_json()["status"] == "pending"
    v1 = client.post("/v1/chat/completions", json={
        "model": "mock-echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert v1.status_code == 429
    error = v1.get_json()["error"]
    assert error["code"] == "too_many_streams" and error["type"]
    assert _rows(app, "SELECT COUNT(*) FROM tickets") == [(2,)]  # nothing stored for /v1
    # A whole answer holds no stream.
    whole = client.post("/v1/chat/completions", json={
        "model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]})
    assert whole.status_code == 200
    open_one.close()
    for _ in range(2):  # read whole (and closed) each time: the place is given back
        assert client.get(second["stream_url"], buffered=True).status_code == 200
    done = int(client.get(f"/tickets/{first['id']}").get_json()["last_event_id"])
    assert client.get(first["stream_url"], headers={"Last-Event-ID": str(done)}).status_code == 204
    assert _rows(app, "SELECT COUNT(*) FROM open_streams") == [(0,)]


def test_requests_per_minute_per_address(app: Flask) -> None:
    app.config["ADDRESS_REQUESTS_PER_MINUTE"] = 2
    here = {"REMOTE_ADDR": "10.0.0.1"}
    for n in range(2):  # a new cookieless visitor each time, from one address
        fresh = app.test_client()
        assert fresh.post("/new", json={"prompt": f"p{n}", "model": "mock-echo"},
                          environ_base=here).status_code == 201
    refused = app.test_client().post("/new", json={"prompt": "x", "model": "mock-echo"},
                                     environ_base=here)
    error = assert_error_shape(refused, 429, "rate_limited")
    assert "for your address (at most 2 a minute)" in error["message"]
    elsewhere = app.test_client().post("/new", json={"prompt": "y", "model": "mock-echo"},
                                       environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert elsewhere.status_code == 201


def test_a_users_override_of_open_streams_is_their_limit(app: Flask) -> None:
    app.config["AUTH"] = "accounts"
    make_user(app, "root", admin=True)
    make_user(app, "alice")
    make_user(app, "bob")
    admin = sign_in(app, "root")
    changed = admin.patch("/admin/users/alice", json={"limits": {"max_streams": 1}})
    assert changed.get_json()["user"]["limits"] == {"max_streams": 1}
    time.sleep(1.0 - time.monotonic() % 1.0)  # overrides are looked for once a second
    alice, bob = sign_in(app, "alice"), sign_in(app, "bob")
    # No setting: the override alone turns the limiter on, for alice and nobody else.
    alices = _open_streams(alice, 2)
    assert alices[0].status_code == 200
    error = assert_error_shape(alices[1], 429, "too_many_streams")
    assert "for you (at most 1)" in error["message"]
    bobs = _open_streams(bob, 3)
    assert [response.status_code for response in bobs] == [200] * 3
    assert _rows(app, "SELECT COUNT(*) FROM open_streams") == [(1,)]  # alice's alone
    for response in alices + bobs:
        response.close()
    # With a setting, the others have it and alice keeps her override, lower or higher.
    _limit(app, MAX_STREAMS_PER_USER=2)
    assert [r.status_code for r in _open_streams(bob, 3)] == [200, 200, 429]
    admin.patch("/admin/users/alice", json={"limits": {"max_streams": 3}})
    time.sleep(1.0 - time.monotonic() % 1.0)
    assert [r.status_code for r in _open_streams(alice, 4)] == [200, 200, 200, 429]
    assert sign_in(app, "alice").get("/usage").get_json()["limits"]["user"]["max_streams"] == 3


def _open_streams(client: FlaskClient, count: int) -> list[Any]:
    """`count` new tickets of `client`, each with its stream opened (not read, so held)."""
    opened = []
    for n in range(count):
        ticket = client.post("/new", json={"prompt": f"p{n}", "model": "mock-echo"}).get_json()
        opened.append(client.get(ticket["stream_url"], buffered=False))
    return opened


def test_a_key_has_no_open_streams_override(app: Flask) -> None:
    app.config["AUTH"] = "accounts"
    user = make_user(app, "alice")
    with app.app_context():
        listing, _ = apikeys.create_key(user, app.secret_key or "")
        with pytest.raises(InvalidRequest) as refused:
            quotas.set_limits("key", listing["id"], {"max_streams": 2})
        assert "`max_streams` is a user's limit, not a key's" in refused.value.message
        stored = quotas.set_limits("key", listing["id"], {"max_generations": 2})
        assert "max_streams" not in stored
        assert "max_streams" not in quotas.limits_report(
            app.config, user.owner, listing["id"])["key"]
        assert not quotas.Limits(max_streams=1).any()  # not a claim's limit
    runner = app.test_cli_runner()
    said = runner.invoke(main, ["keys", "limits", listing["id"], "--max-streams", "2"])
    assert said.exit_code == 1 and "a user's limit, not a key's" in said.output
    assert "--max-streams" not in runner.invoke(main, ["keys", "limits", "--help"]).output
    said = runner.invoke(main, ["users", "limits", "alice", "--max-streams", "2"])
    assert said.exit_code == 0 and "max_streams=2" in said.output, said.output
