"""`POST /new` request handling and every bad input, through Flask's test client."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from .helpers import assert_error_shape


def post_json(client: FlaskClient, body: object) -> object:
    return client.post("/new", data=json.dumps(body), content_type="application/json")


def test_new_returns_ticket_and_sets_an_httponly_cookie(client: FlaskClient) -> None:
    response = post_json(client, {"prompt": "hi"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "stream_url", "conversation_id"}
    assert len(body["id"]) >= 22 and body["stream_url"] == f"/sse/{body['id']}"
    assert response.headers["Location"] == body["stream_url"]
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert cookie.startswith("relay_session=anon:") and "; Expires=" in cookie
    assert response.headers.getlist("Vary") == ["Cookie"]  # a cache must not share the answer


def test_ids_are_unique_and_url_safe(client: FlaskClient) -> None:
    ids = {post_json(client, {"prompt": "x"}).get_json()["id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_form_encoded_prompt_is_accepted(client: FlaskClient) -> None:
    response = client.post("/new", data={"prompt": "from a form", "model": "mock-chat"})
    assert response.status_code == 201


BAD_JSON_BODIES = [
    ({}, 400, "missing_prompt"),
    ({"prompt": ""}, 400, "empty_prompt"),
    ({"prompt": "   \n"}, 400, "empty_prompt"),
    ({"prompt": 42}, 400, "invalid_prompt"),
    ({"prompt": None}, 400, "missing_prompt"),
    ({"prompt": ["a"]}, 400, "invalid_prompt"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "invalid_request"),
    ({"messages": []}, 400, "invalid_messages"),
    ({"messages": "hi"}, 400, "invalid_messages"),
    ({"messages": [{"role": "user"}]}, 400, "invalid_messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_messages"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_messages"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, "invalid_messages"),
    ({"messages": [{"role": "system", "content": "only system"}]}, 400, "invalid_messages"),
    ({"messages": ["not an object"]}, 400, "invalid_messages"),
    ({"prompt": "x", "temperature": "hot"}, 400, "invalid_request"),
    ({"prompt": "x", "temperature": 3}, 400, "invalid_request"),
    ({"prompt": "x", "temperature": True}, 400, "invalid_request"),
    ({"prompt": "x", "max_tokens": 0}, 400, "invalid_request"),
    ({"prompt": "x", "max_tokens": 1.5}, 400, "invalid_request"),
    ({"prompt": "x", "model": ""}, 400, "invalid_request"),
    ({"prompt": "x", "model": 3}, 400, "invalid_request"),
    ({"prompt": "x", "model": "m" * 201}, 400, "invalid_request"),
    ({"prompt": "x", "system": 1}, 400, "invalid_request"),
    ({"prompt": "x", "regenerate": "yes"}, 400, "invalid_request"),
    ({"prompt": "x", "regenerate": True}, 400, "invalid_request"),
    ({"regenerate": True}, 400, "invalid_request"),
    ({"prompt": "x", "promt": "typo"}, 400, "unknown_field"),
    ({"prompt": "x", "conversation_id": "nope-nope-nope-nope"}, 404, "conversation_not_found"),
    ({"prompt": "x", "conversation_id": "../etc"}, 404, "conversation_not_found"),
    ({"prompt": "x", "conversation_id": 12}, 400, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_JSON_BODIES)
def test_bad_bodies_get_clear_errors(
    client: FlaskClient, body: dict, status: int, code: str
) -> None:
    assert_error_shape(post_json(client, body), status, code)
    assert post_json(client, {"prompt": "still fine"}).status_code == 201


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"", "application/json", 400, "invalid_json"),
        (b"\xff\xfe\x00", "application/json", 400, "invalid_json"),
        (b'{"prompt": "half a pair \\ud800"}', "application/json", 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "application/json", 400,
         "invalid_json"),
        (b'{"prompt": "x", "temperature": NaN}', "application/json", 400, "invalid_json"),
        (b'["a list"]', "application/json", 400, "invalid_request"),
        (b'"a string"', "application/json", 400, "invalid_request"),
        (b"null", "application/json", 400, "invalid_request"),
        (b'{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"prompt": "x"}', None, 415, "unsupported_media_type"),
        (b"<prompt/>", "application/xml", 415, "unsupported_media_type"),
    ],
)
def test_bad_payloads(
    client: FlaskClient, data: bytes, content_type: str | None, status: int, code: str
) -> None:
    kwargs = {"content_type": content_type} if content_type else {}
    assert_error_shape(client.post("/new", data=data, **kwargs), status, code)


def test_prompt_above_the_limit_is_413_and_at_the_limit_is_accepted(client: FlaskClient) -> None:
    overhead = len(json.dumps({"prompt": ""}).encode())
    fits = "a" * (64 * 1024 - overhead)
    assert post_json(client, {"prompt": fits}).status_code == 201
    too_big = post_json(client, {"prompt": fits + "a"})
    error = assert_error_shape(too_big, 413, "prompt_too_large")
    assert "65536" in error["message"]
    form = client.post("/new", data={"prompt": "a" * 70000})
    assert_error_shape(form, 413, "prompt_too_large")


def test_wrong_method_and_unknown_path_are_json(client: FlaskClient) -> None:
    assert_error_shape(client.get("/new"), 405, "method_not_allowed")
    assert_error_shape(client.get("/nope"), 404, "not_found")
    assert_error_shape(client.delete("/tickets/whatever"), 405, "method_not_allowed")


@pytest.mark.parametrize("ticket_id", ["x", "A" * 32, "%2e%2e", "A" * 65, "a b"])
def test_unknown_or_malformed_ticket_ids_are_404(client: FlaskClient, ticket_id: str) -> None:
    for path in (f"/sse/{ticket_id}", f"/tickets/{ticket_id}"):
        assert_error_shape(client.get(path), 404, "ticket_not_found")
    assert_error_shape(client.post(f"/sse/{ticket_id}/cancel"), 404, "ticket_not_found")


def test_location_is_a_uri_under_any_mount_point(client: FlaskClient) -> None:
    plain = post_json(client, {"prompt": "hi"})
    assert plain.headers["Location"] == plain.get_json()["stream_url"]
    mounted = client.post("/new", json={"prompt": "hi"}, base_url="http://localhost/relä")
    assert mounted.status_code == 201
    ticket_id = mounted.get_json()["id"]
    assert mounted.headers["Location"] == f"/rel%C3%A4/sse/{ticket_id}"
