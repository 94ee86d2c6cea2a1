"""The built-in upstream: no network, deterministic, with a configurable pause between chunks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import gevent

from .base import ChatRequest, Delta, Finish

ECHO_MODEL = "mock-echo"
CHAT_MODEL = "mock-chat"
_MAX_ECHO_CHUNKS = 2000


class MockUpstream:
    """`mock-echo` streams the last user message back verbatim; other models a generated answer."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_seconds = max(delay_ms, 0.0) / 1000.0

    def models(self) -> list[str]:
        return [ECHO_MODEL, CHAT_MODEL]

    def stream(self, request: ChatRequest) -> Iterator[Delta | Finish]:
        prompt = _last_user_message(request.messages)
        if request.model == ECHO_MODEL:
            size = max(4, math.ceil(len(prompt) / _MAX_ECHO_CHUNKS))
            chunks = [prompt[i : i + size] for i in range(0, len(prompt), size)]
        else:
            chunks = _words(_generated_answer(prompt, request.model))
        limit = request.max_tokens
        finish_reason = "stop"
        if limit is not None and len(chunks) > limit:
            chunks, finish_reason = chunks[:limit], "length"
        for chunk in chunks:
            gevent.sleep(self.delay_seconds)
            yield Delta(chunk)
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        yield Finish(
            finish_reason,
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(chunks),
                "total_tokens": prompt_tokens + len(chunks),
            },
        )


def _last_user_message(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return ""


def _words(text: str) -> list[str]:
    pieces: list[str] = []
    for line in text.splitlines(keepends=True):
        pieces.extend(word + " " for word in line.split(" ")[:-1])
        pieces.append(line.split(" ")[-1])
    return [piece for piece in pieces if piece]


def _generated_answer(prompt: str, model: str) -> str:
    topic = " ".join(prompt.split()[:8]).rstrip(".,;:!?") or "nothing in particular"
    return (
        f"This is **{model}**, relay's built-in mock upstream, answering: *{topic}*.\n\n"
        "No model was called; set `OPENAI_API_KEY` and `OPENAI_BASE_URL` to use a real one. "
        "Meanwhile, here is some Markdown to render:\n\n"
        "- a list item\n- another, with `inline code`\n\n"
        "```python\ndef greet(name: str) -> str:\n    return f\"Hello, {name}!\"\n```\n\n"
        f"Your message had {len(prompt)} characters."
    )
