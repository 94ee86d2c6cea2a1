"""What an upstream's error answer becomes: the contract's code and a sentence of relay's own
for users, machine words only for the log; never the upstream's message."""

from __future__ import annotations

import logging

import orjson
import pytest

from relay.upstream.openai_compat import _status_error

LEAK = "Incorrect API key provided: sk-proj-****abcd (org-Leaky42, request req_9f3e2)"

STATUSES = [
    (401, "upstream_error", "The upstream refused the relay's credentials (HTTP 401)."),
    (403, "upstream_error", "The upstream refused the relay's credentials (HTTP 403)."),
    (404, "upstream_error", "The upstream does not offer this model or endpoint (HTTP 404)."),
    (400, "upstream_error", "The upstream rejected the request (HTTP 400)."),
    (413, "upstream_error", "The request is too large for the upstream (HTTP 413)."),
    (429, "upstream_rate_limited", "The upstream is rate limiting requests (HTTP 429)."),
    (500, "upstream_error", "The upstream failed (HTTP 500)."),
    (503, "upstream_error", "The upstream failed (HTTP 503)."),
    (302, "upstream_error", "The upstream answered with an unexpected status (HTTP 302)."),
]


@pytest.mark.parametrize(("status", "code", "sentence"), STATUSES)
def test_a_status_becomes_a_sentence_of_our_own(
    caplog: pytest.LogCaptureFixture, status: int, code: str, sentence: str
) -> None:
    body = {"error": {"message": LEAK, "type": "invalid_request_error", "code": "invalid_api_key"}}
    with caplog.at_level(logging.WARNING, logger="relay.upstream"):
        error = _status_error(status, orjson.dumps(body))
    assert (error.code, error.message) == (code, sentence)
    assert caplog.messages == [
        f"upstream answered HTTP {status} (type=invalid_request_error, code=invalid_api_key)"
    ]


@pytest.mark.parametrize(("body", "summary"), [
    (b"<html>Bad gateway for org-Leaky42</html>", ""),
    (b'{"error": "sk-proj-****abcd is not valid"}', ""),
    (b'{"error": {"type": "a\\nforged log line", "code": "sk-proj-****abcd is bad"}}', ""),
    (b'{"error": {"type": "server_error", "code": 1234}}', " (type=server_error, code=1234)"),
    (b'{"error": {"type": "' + b"x" * 65 + b'", "code": null}}', ""),
    (b"[1, 2]", ""),
])
def test_the_log_gets_machine_words_only(
    caplog: pytest.LogCaptureFixture, body: bytes, summary: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="relay.upstream"):
        _status_error(502, body)
    assert caplog.messages == [f"upstream answered HTTP 502{summary}"]
