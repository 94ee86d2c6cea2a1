"""The built-in mock upstream, pure: `mock-chat`'s Markdown answer and `mock-echo`'s echo."""

from __future__ import annotations

import pytest

from relay.upstream import ChatRequest, Delta, Finish, default_model
from relay.upstream.mock import CHAT_MODEL, ECHO_MODEL, MockUpstream


def run(model: str, prompt: str, **fields: int) -> tuple[list[str], Finish]:
    """The mock's chunks and its finish for one user message, with no pause between chunks."""
    items = list(MockUpstream(0).stream(
        ChatRequest(model=model, messages=[{"role": "user", "content": prompt}], **fields)))
    *deltas, finish = items
    assert all(isinstance(item, Delta) for item in deltas) and isinstance(finish, Finish)
    return [item.text for item in deltas if isinstance(item, Delta)], finish


PROMPTS = [
    pytest.param("Show me how to greet someone in Python.", id="question"),
    pytest.param("", id="empty"),
    pytest.param("   \n\t ", id="blank"),
    pytest.param("Привет, 世界! 🙂", id="unicode"),
    pytest.param("first line\r\nsecond line\n\nthird", id="multi-line"),
    pytest.param("```python\nprint('x')\n``` and *stars* _under_ <b>html</b> # [link](x)",
                 id="markdown-in-prompt"),
    pytest.param("word " * 5000, id="long"),
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("model", [CHAT_MODEL, "gpt-4o-mini"])
def test_the_chat_answer_is_markdown_the_page_renders(model: str, prompt: str) -> None:
    chunks, finish = run(model, prompt)
    answer = "".join(chunks)
    lines = answer.splitlines()
    assert any(line.startswith("## ") for line in lines), answer
    assert f"**{model}**" in answer
    assert any(line.startswith("1. ") for line in lines) and any(line.startswith("- ")
                                                                  for line in lines)
    assert "\n```python\n" in answer and "\n```\n" in answer
    assert answer.count("```") == 2, answer  # a fence in the prompt does not open another
    assert finish.finish_reason == "stop"
    assert finish.usage["completion_tokens"] == len(chunks)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_chat_answer_is_deterministic_and_streamed_in_small_chunks(prompt: str) -> None:
    chunks, _ = run(CHAT_MODEL, prompt)
    again, _ = run(CHAT_MODEL, prompt)
    assert chunks == again
    assert len(chunks) > 50
    assert all(chunk and len(chunk) <= 40 for chunk in chunks), max(chunks, key=len)
    assert "".join(chunks) == "".join(again)


@pytest.mark.parametrize(("prompt", "quoted"), [
    ("Show me how to greet someone in Python.", "*Show me how to greet someone in Python*"),
    ("", "*nothing in particular*"),
    ("a  b\n\nc", "*a b c*"),
    ("one two three four five six seven eight nine ten eleven twelve thirteen",
     "*one two three four five six seven eight nine ten eleven twelve…*"),
    ("use *stars* and `ticks`", r"*use \*stars\* and \`ticks\`*"),
    ("<script>alert(1)</script>", r"*\<script\>alert(1)\</script\>*"),
])
def test_the_chat_answer_quotes_the_prompt_briefly_and_literally(prompt: str, quoted: str) -> None:
    chunks, _ = run(CHAT_MODEL, prompt)
    assert f"You asked: {quoted}." in "".join(chunks)


@pytest.mark.parametrize("prompt", [
    pytest.param("Hello, relay!", id="short"),
    pytest.param("", id="empty"),
    pytest.param("**Hi** there\n\n```python\nprint(1)\n```\n", id="markdown"),
    pytest.param("a\r\nb\rc\n", id="line-ends"),
    pytest.param("x" * 9000, id="long"),
])
def test_echo_streams_the_last_user_message_back_verbatim(prompt: str) -> None:
    chunks, finish = run(ECHO_MODEL, prompt)
    assert "".join(chunks) == prompt
    assert all(0 < len(chunk) <= 5 for chunk in chunks)
    assert finish.finish_reason == "stop" and finish.usage["completion_tokens"] == len(chunks)


@pytest.mark.parametrize("model", [CHAT_MODEL, ECHO_MODEL])
def test_max_tokens_cuts_the_answer_with_reason_length(model: str) -> None:
    whole, _ = run(model, "a prompt long enough to need more than three chunks")
    chunks, finish = run(model, "a prompt long enough to need more than three chunks",
                         max_tokens=3)
    assert chunks == whole[:3] and finish.finish_reason == "length"


def test_each_chunk_waits_the_configured_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("relay.upstream.mock.gevent.sleep", pauses.append)
    request = ChatRequest(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    deltas = [item for item in MockUpstream(20).stream(request) if isinstance(item, Delta)]
    assert pauses == [0.02] * len(deltas)


def test_the_chat_model_is_the_default_and_echo_is_listed() -> None:
    upstream = MockUpstream(0)
    assert upstream.models() == [CHAT_MODEL, ECHO_MODEL]
    assert default_model({"DEFAULT_MODEL": None}, upstream) == CHAT_MODEL
    assert default_model({"DEFAULT_MODEL": ECHO_MODEL}, upstream) == ECHO_MODEL
