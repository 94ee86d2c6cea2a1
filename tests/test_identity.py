"""The identity cookie: signed, set once, tamper-proof."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient

from relay import cookies, secondcache

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


def test_a_cookie_in_flasks_own_format_is_a_stranger(app: Flask) -> None:
    ticket = app.test_client()
    created = ticket.post("/new", json={"prompt": "private"}).get_json()
    flask_format = SecureCookieSessionInterface().get_signing_serializer(app)
    assert flask_format is not None
    client = app.test_client()
    client.set_cookie(COOKIE, flask_format.dumps({"uid": "anon:not-a-relay-cookie"}))
    assert client.get(f"/tickets/{created['id']}").status_code == 404
    assert conversations(client) == []


def test_only_the_exact_signature_passes(client: FlaskClient) -> None:
    created = client.post("/new", json={"prompt": "mine"}).get_json()
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    assert conversations(client) == [created["conversation_id"]]
    owner, _, signature = cookie.value.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]  # not the padding bits
    client.set_cookie(COOKIE, owner + "." + flipped)
    assert conversations(client) == []
    client.set_cookie(COOKIE, cookie.value)
    client.set_cookie("theme", "dark")  # another cookie in the same header
    assert conversations(client) == [created["conversation_id"]]


def test_a_verified_cookie_is_trusted_for_at_most_the_rest_of_its_second(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = client.post("/new", json={"prompt": "mine"}).get_json()
    now = [1000.2]
    monkeypatch.setattr(secondcache.time, "monotonic", lambda: now[0])
    verified: list[str] = []
    real_signer = cookies._signer

    def counting_signer(app: Flask) -> Any:
        signer = real_signer(app)
        unsign = signer.unsign
        signer.unsign = lambda value: verified.append(value) or unsign(value)  # type: ignore
        return signer

    monkeypatch.setattr(cookies, "_signer", counting_signer)
    assert conversations(client) == [created["conversation_id"]]
    assert len(verified) == 1
    now[0] = 1000.9  # the same second: the header is not verified again
    assert conversations(client) == [created["conversation_id"]]
    assert len(verified) == 1
    now[0] = 1001.0  # the next second: verified again, so a revocation takes at most a second
    assert conversations(client) == [created["conversation_id"]]
    assert len(verified) == 2
