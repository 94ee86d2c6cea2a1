"""`POST /v1/chat/completions` on a real relay, driven by the official `openai` SDK: streamed and
whole answers, upstream faults before and after the first token, and a client that leaves."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def http(relay: RelayServer) -> Iterator[httpx.Client]:
    """The SDK's HTTP client, whose cookie jar holds the identity its completions belong to."""
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        yield client


@pytest.fixture()
def sdk(relay: RelayServer, http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.url + "/v1", api_key="unused", http_client=http,
                         max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Echo."}, {"role": "user", "content": text}]


def ticket_of(http: httpx.Client, completion_id: str) -> dict[str, object]:
    response = http.get(f"/tickets/{completion_id.removeprefix('chatcmpl-')}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_streamed_completion_through_the_sdk(
    sdk: openai.OpenAI, http: httpx.Client, upstream: FakeUpstream
) -> None:
    text = f"{uuid.uuid4().hex[:8]} streamed through relay's OpenAI endpoint"
    chunks = list(sdk.chat.completions.create(
        model="echo", messages=ask(text), stream=True, stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len(chunks) > 5  # one chunk per upstream piece, not the answer at the end
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 7  # what the fake upstream counted
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "echo"
    [call] = upstream.calls_with(text)
    assert call.messages == ask(text) and call.completed
    ticket = ticket_of(http, chunks[0].id)
    assert ticket["status"] == "completed" and ticket["text"] == text


def test_a_whole_completion_through_the_sdk(
    sdk: openai.OpenAI, http: httpx.Client, upstream: FakeUpstream
) -> None:
    text = f"{uuid.uuid4().hex[:8]} answered whole"
    completion = sdk.chat.completions.create(model="echo", messages=ask(text), max_tokens=64)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == text
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 7
    assert len(upstream.calls_with(text)) == 1
    assert ticket_of(http, completion.id)["status"] == "completed"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize(("model", "error", "status", "code"), [
    ("status:429", openai.RateLimitError, 429, "upstream_rate_limited"),
    ("status:500", openai.APIStatusError, 502, "upstream_error"),
])
def test_an_upstream_failure_before_the_first_token_is_an_http_error(
    sdk: openai.OpenAI, model: str, error: type[openai.APIStatusError], status: int, code: str,
    stream: bool,
) -> None:
    with pytest.raises(error) as caught:
        result = sdk.chat.completions.create(model=model, messages=ask("x"), stream=stream)
        list(result) if stream else None  # type: ignore[call-overload]
    assert caught.value.status_code == status
    assert caught.value.code == code and caught.value.type == "upstream_error"
    assert sdk.chat.completions.create(model="echo", messages=ask("still serving")).choices


def test_a_failure_after_the_first_token_ends_the_stream_with_an_error(
    sdk: openai.OpenAI, http: httpx.Client
) -> None:
    received: list[str] = []
    ids: set[str] = set()
    stream = sdk.chat.completions.create(model="drop:3", messages=ask("abcdefghijkl"),
                                         stream=True)
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            ids.add(chunk.id)
    assert "".join(received) == "abcdefghi"
    assert caught.value.code == "upstream_disconnected"
    [completion_id] = ids
    assert ticket_of(http, completion_id)["status"] == "failed"


def test_bad_input_through_the_sdk_is_refused_by_name(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="echo", messages=ask("hi"), top_p=0.5)
    assert caught.value.code == "unknown_field" and "`top_p`" in caught.value.message
    assert caught.value.type == "invalid_request_error"


def test_leaving_a_stream_closes_the_upstream_call(
    sdk: openai.OpenAI, upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex[:8]
    stream = sdk.chat.completions.create(
        model="echo:30", messages=ask(f"{tag} " + "w" * 900), stream=True,
    )
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    [call] = upstream.calls_with(tag)
    assert call.ended.wait(10) and call.disconnected and not call.completed


def test_leaving_a_whole_completion_closes_the_upstream_call(
    relay: RelayServer, upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex[:8]
    impatient = openai.OpenAI(base_url=relay.url + "/v1", api_key="unused", timeout=1.0,
                              max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="stall:2", messages=ask(f"{tag} waits"))
    [call] = upstream.calls_with(tag)
    # The relay's upstream timeout is 3 s: an upstream call that ends well before it was closed
    # because the client left, not because the upstream went silent.
    assert call.ended.wait(10) and call.disconnected
    assert time.monotonic() - started < 2.5


def test_a_silent_upstream_is_a_504_for_a_whole_answer(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="stall:0", messages=ask("anyone there?"))
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"


def test_a_slow_first_token_gets_the_head_and_heartbeats_meanwhile(
    relay: RelayServer, http: httpx.Client
) -> None:
    # The relay's heartbeat is 1 s and the first token comes after 2.2 s: the head is sent after
    # one heartbeat interval, then a `: ping`, then the chunks.
    body = {"model": "echo:2200", "messages": ask("slowly"), "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert ": ping" in lines[:first_data]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[first_data:-1] if line.startswith("data: ")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "slowly"
