"""`POST /v1/chat/completions` through Flask's test client and the built-in mock: every bad
input, the whole answer, the stream's chunks, and the ticket each completion is recorded as."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from relay.db import db
from relay.models import Ticket

from .helpers import assert_error_shape

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there, relay."}]


def post(client: FlaskClient, body: object, content_type: str = "application/json") -> Any:
    return client.post(URL, data=json.dumps(body), content_type=content_type)


def ticket_count(app: Flask) -> int:
    with app.app_context():
        return db.session.query(Ticket).count()


@pytest.mark.parametrize(("body", "code", "needle"), [
    ([], "invalid_request", "object"),
    ({}, "invalid_messages", "`messages`"),
    ({"messages": "hi"}, "invalid_messages", "non-empty list"),
    ({"messages": []}, "invalid_messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "invalid_messages",
     "messages[0]"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "invalid_messages", "role"),
    ({"messages": [{"role": "user", "content": 3}]}, "invalid_messages", "string"),
    ({"messages": [{"role": "user", "content": "  "}]}, "invalid_messages", "non-empty user"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "invalid_messages", "text parts"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "invalid_messages", "text parts"),
    ({"messages": HELLO, "top_p": 0.5}, "unknown_field", "`top_p`"),
    ({"messages": HELLO, "tools": []}, "unknown_field", "`tools`"),
    ({"messages": HELLO, "stream": "yes"}, "invalid_request", "`stream`"),
    ({"messages": HELLO, "stream_options": {"include_usage": True}}, "invalid_request",
     "only allowed with `stream: true`"),
    ({"messages": HELLO, "stream": True, "stream_options": {"other": 1}}, "invalid_request",
     "`include_usage`"),
    ({"messages": HELLO, "stream": True, "stream_options": {"include_usage": 1}},
     "invalid_request", "true or false"),
    ({"messages": HELLO, "max_tokens": 5, "max_completion_tokens": 5}, "invalid_request",
     "not both"),
    ({"messages": HELLO, "max_completion_tokens": 0}, "invalid_request",
     "`max_completion_tokens` must be"),
    ({"messages": HELLO, "max_tokens": "5"}, "invalid_request", "`max_tokens` must be"),
    ({"messages": HELLO, "temperature": 3}, "invalid_request", "between 0 and 2"),
    ({"messages": HELLO, "model": ""}, "invalid_request", "`model`"),
])
def test_every_bad_body_is_a_clear_400_and_stores_nothing(
    app: Flask, client: FlaskClient, body: object, code: str, needle: str
) -> None:
    error = assert_error_shape(post(client, body), 400, code)
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"  # OpenAI's, which its SDKs expose
    assert ticket_count(app) == 0


def test_a_body_that_is_not_json_is_refused(app: Flask, client: FlaskClient) -> None:
    assert_error_shape(client.post(URL, data="{nope", content_type="application/json"), 400,
                       "invalid_json")
    assert_error_shape(client.post(URL, data={"messages": "x"}), 415, "unsupported_media_type")
    too_big = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_error_shape(post(client, too_big), 413)
    assert assert_error_shape(client.get("/v1/nothing"), 404)["type"] == "invalid_request_error"
    assert "type" not in assert_error_shape(client.post("/new", json={}), 400)
    assert ticket_count(app) == 0
    assert post(client, {"model": "mock-echo", "messages": HELLO}).status_code == 200


def test_the_whole_answer_is_a_chat_completion_recorded_as_a_ticket(client: FlaskClient) -> None:
    response = post(client, {
        "model": "mock-echo", "max_tokens": 50,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                  {"type": "text", "text": "in parts."}]}],
    })
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    body = response.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "mock-echo"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello in parts."}
    assert choice["finish_reason"] == "stop"
    ticket = client.get(f"/tickets/{body['id'].removeprefix('chatcmpl-')}").get_json()
    assert ticket["status"] == "completed" and ticket["text"] == "Hello in parts."


def sse_data(response: Any) -> list[str]:
    text = response.get_data(as_text=True)
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def test_the_stream_is_openai_chunks_ended_by_done(client: FlaskClient) -> None:
    response = post(client, {"model": "mock-echo", "messages": HELLO, "stream": True,
                             "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "retry:" not in response.get_data(as_text=True)
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == HELLO[0]["content"]
    assert len(chunks) > 3  # the answer came in pieces, not at the end
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0


def test_without_include_usage_no_usage_chunk_is_sent(client: FlaskClient) -> None:
    data = sse_data(post(client, {"model": "mock-echo", "messages": HELLO, "stream": True}))
    last = json.loads(data[-2])
    assert data[-1] == "[DONE]" and last["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in json.loads(item) for item in data[:-1])
