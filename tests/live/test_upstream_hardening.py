"""Issue 18 on a real relay: an upstream's error text (organisation, masked key, request id)
reaches neither users nor the log, and an upstream quiet after [DONE] still completes."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .fake_upstream import LEAKS, FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

LEAKY = [
    ("leaky:401", "upstream_error", "credentials", 401, 502),
    ("leaky:403", "upstream_error", "credentials", 403, 502),
    ("leaky:429", "upstream_rate_limited", "rate limiting", 429, 429),
    ("leaky:500", "upstream_error", "failed", 500, 502),
    ("leaky-event:2", "upstream_error", "mid-answer", None, None),
]


def _assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text
    assert "LeakyOrg" not in text and "****abcd" not in text and "leaky9f3e2" not in text


@pytest.mark.parametrize(("model", "code", "in_message", "status", "http_status"), LEAKY,
                         ids=[row[0] for row in LEAKY])
def test_upstream_error_text_reaches_no_user_and_no_log(
    relay: RelayServer, client: httpx.Client, model: str, code: str, in_message: str,
    status: int | None, http_status: int | None,
) -> None:
    ticket = new_ticket(client, "abcdefghijkl", model=model)
    events = read_stream(client, ticket["stream_url"])
    done = events[-1][2]
    assert done["status"] == "failed" and done["error"]["code"] == code
    assert in_message in done["error"]["message"]
    _assert_no_leak(json.dumps(events))
    stored = client.get(f"/tickets/{ticket['id']}")
    assert stored.json()["error"]["code"] == code
    _assert_no_leak(stored.text)

    body = {"model": model, "messages": [{"role": "user", "content": "abcdefghijkl"}]}
    whole = client.post("/v1/chat/completions", json=body)
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    if http_status is not None:
        assert_error_shape(whole, http_status, code)
        assert_error_shape(streamed, http_status, code)
    _assert_no_leak(whole.text + streamed.text)

    log = relay.log()
    _assert_no_leak(log)
    if status is not None:  # the operator learns what failed, in one line
        assert (f"upstream answered HTTP {status} (type=invalid_request_error, "
                "code=invalid_api_key)") in log
    else:
        assert "upstream reported an error mid-answer (type=server_error, code=internal_error)" \
            in log


def test_an_upstream_quiet_after_done_completes_the_answer(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    # The relay's upstream timeout is 3 s: were the answer's end awaited, it would fail.
    tag = uuid.uuid4().hex[:8]
    text = f"{tag} complete at [DONE]"
    ticket = new_ticket(client, text, model="quiet-after-done")
    events = read_stream(client, ticket["stream_url"])
    done = events[-1][2]
    assert done["status"] == "completed", done
    assert done["finish_reason"] == "stop"
    assert text_of(events) == text
    call = upstream.calls_with(tag)[0]
    assert call.ended.wait(10) and call.disconnected  # its body never ended: not reused
    healthy = new_ticket(client, "still serving")
    assert text_of(read_stream(client, healthy["stream_url"])) == "still serving"
