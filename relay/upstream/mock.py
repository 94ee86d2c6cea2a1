"""The built-in upstream: no network, deterministic, with a configurable pause between chunks.

`mock-chat` (listed first, so the default of a run without a key) answers like a chat model, in
Markdown that shows what the page renders; `mock-echo` streams the last user message back
verbatim, which the tests rely on. Any other model name gets the chat answer too.
"""

from __future__ import annotations

import math
import re

import gevent

from .base import ChatRequest, Chunks, Delta, Finish

CHAT_MODEL = "mock-chat"
ECHO_MODEL = "mock-echo"
_MAX_ECHO_CHUNKS = 2000
_TOPIC_WORDS = 12
# Escaped so that a prompt quoted in the answer reads as typed, not as Markdown or HTML.
_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]<>|~#!])")


class MockUpstream:
    """`mock-echo` streams the last user message back verbatim; other models a generated answer."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_seconds = max(delay_ms, 0.0) / 1000.0

    def models(self) -> list[str]:
        return [CHAT_MODEL, ECHO_MODEL]

    def stream(self, request: ChatRequest) -> Chunks:
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
    """Split text into word-sized chunks (each keeps its trailing space) that join to it."""
    pieces: list[str] = []
    for line in text.splitlines(keepends=True):
        pieces.extend(word + " " for word in line.split(" ")[:-1])
        pieces.append(line.split(" ")[-1])
    return [piece for piece in pieces if piece]


def _topic(prompt: str) -> str:
    words = prompt.split()
    topic = " ".join(words[:_TOPIC_WORDS]).rstrip(".,;:!?")
    if len(words) > _TOPIC_WORDS:
        topic += "…"
    return _escape(topic) or "nothing in particular"


def _escape(text: str) -> str:
    return _MARKDOWN_ACTIVE.sub(r"\\\1", text)


def _generated_answer(prompt: str, model: str) -> str:
    return (
        "## A mock answer\n\n"
        f"You asked: *{_topic(prompt)}*. This is **{_escape(model)}**, "
        "relay's built-in stand-in for a model: it calls nothing and gives the same answer to "
        "the same question, streamed a word at a time, so that you can see how the page shows "
        "one.\n\n"
        "What a real answer can hold:\n\n"
        "1. **Emphasis**, *italics* and `inline code`.\n"
        "2. Lists, numbered like this one or with bullets.\n"
        "3. Code blocks, highlighted, each with its own copy button:\n\n"
        "```python\n"
        "def greet(name: str) -> str:\n"
        '    """Say hello to someone by name."""\n'
        '    return f"Hello, {name}!"\n'
        "\n\n"
        'print(greet("relay"))\n'
        "```\n\n"
        "To go further:\n\n"
        f"- choose **{ECHO_MODEL}** to have your message streamed back verbatim;\n"
        "- set `OPENAI_API_KEY` (and `OPENAI_BASE_URL` for a server other than OpenAI's) "
        "to talk to a real model."
    )
