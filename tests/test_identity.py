"""The identity cookie: signed, set once, tamper-proof, and old-format cookies still recognised."""

from __future__ import annotations

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient

COOKIE = "relay_session"


def conversations(client: FlaskClient) -> list[str]:
    return [c["id"] for c in client.get("/conversations").get_json()["conversations"]]


def test_cookie_is_set_once_and_keeps_the_owner(client: FlaskClient) -> None:
    first = client.post("/new", json={"prompt": "mine"})
    assert first.status_code == 201 and "Set-Cookie" in first.headers
    again = client.post("/new", json={"prompt": "mine too"})
    assert "Set-Cookie" not in again.headers
    assert {first.get_json()["conversation_id"], again.get_json()["conversation_id"]} == set(
        conversations(client)
    )


def test_tampered_cookie_is_a_new_stranger(client: FlaskClient) -> None:
    ticket = client.post("/new", json={"prompt": "private"}).get_json()
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    owner, _, signature = cookie.value.rpartition(".")
    client.set_cookie(COOKIE, owner + "x." + signature)
    assert client.get(f"/tickets/{ticket['id']}").status_code == 404
    assert conversations(client) == []


def test_old_format_cookie_keeps_its_owner_and_is_replaced(app: Flask) -> None:
    old_format = SecureCookieSessionInterface().get_signing_serializer(app)
    assert old_format is not None
    legacy = old_format.dumps({"uid": "anon:from-an-older-relay", "_permanent": True})
    client = app.test_client()
    client.set_cookie(COOKIE, legacy)
    created = client.post("/new", json={"prompt": "still me"})
    assert created.status_code == 201
    replaced = client.get_cookie(COOKIE)
    assert replaced is not None and replaced.value != legacy
    assert replaced.value.startswith("anon:from-an-older-relay.")
    assert conversations(client) == [created.get_json()["conversation_id"]]
    stranger = app.test_client()
    assert conversations(stranger) == []


def test_a_cookie_verified_once_is_still_the_only_one_that_passes(client: FlaskClient) -> None:
    created = client.post("/new", json={"prompt": "mine"}).get_json()
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    assert conversations(client) == [created["conversation_id"]]  # verified, and remembered
    assert conversations(client) == [created["conversation_id"]]  # served from memory
    owner, _, signature = cookie.value.rpartition(".")
    client.set_cookie(COOKIE, owner + "." + signature[:-2] + "AA")
    assert conversations(client) == []
    client.set_cookie(COOKIE, cookie.value)
    client.set_cookie("theme", "dark")  # another cookie: another header, checked again
    assert conversations(client) == [created["conversation_id"]]
