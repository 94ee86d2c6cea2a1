"""A producer that fails in an unexpected way: the user gets the contract's code and a sentence,
the log one line with the exception's type and frames, and neither gets the exception's text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from relay import logs
from relay.upstream import ChatRequest, Delta

PROMPT = "my very private prompt"


class _CrashingUpstream:
    """An upstream adapter with a bug: it fails with an exception quoting the request."""

    def models(self) -> list[str]:
        return ["buggy"]

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        yield Delta("partial ")
        raise RuntimeError(f"adapter bug on {request.messages[-1]['content']}\nline two")


def test_an_unexpected_failure_reaches_the_user_as_a_plain_sentence(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    app.extensions["relay"].upstream = _CrashingUpstream()
    logs.install(caplog.handler)
    client = app.test_client()
    ticket = client.post("/new", json={"prompt": PROMPT, "model": "buggy"}).get_json()
    body = client.get(f"/sse/{ticket['id']}").get_data(as_text=True)
    done: dict[str, Any] = json.loads(body.rsplit("data: ", 1)[1])
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "internal_error", "message": "The relay failed while generating this answer.",
    }
    assert 'data: {"delta":"partial "}' in body
    shown = client.get(f"/tickets/{ticket['id']}").get_json()
    assert PROMPT not in json.dumps(shown) and "adapter bug" not in json.dumps(shown)
    crash = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crash) == 1
    logged = caplog.handler.format(crash[0])
    assert "\n" not in logged and PROMPT not in logged and "line two" not in logged
    assert "| Traceback: RuntimeError at " in logged and "test_generation_failures.py" in logged
