"""relay/estimate.py: the token estimate, case by case (it errs high, never low, on these)."""

from __future__ import annotations

import pytest

from relay.estimate import PER_MESSAGE, PER_REQUEST, SAMPLE, count_prompt, count_tokens

# (text, estimate); the comments show the pieces where they are not plain words.
CASES = [
    ("", 0),
    ("hello", 1),
    ("Hello, world!", 4),  # Hello , ␠world !
    (" world", 1),
    ("1234567", 3),  # digits in threes
    ("internationalization", 4),  # a long word: one token per six letters started
    ("don't", 2),  # don 't
    ("snake_case", 3),  # snake _ case
    ("    x = 1", 4),  # indentation, x, ␠=, ␠1
    ("a\n\nb", 4),  # line breaks are pieces of their own
    ("日本語", 3),  # one token per character from U+0800
    ("café", 2),  # caf é: an ASCII run, then the rest of the word
    ("```python", 3),  # a run of symbols: one token per two
    (" ", 1),
    ("\n", 1),
    ("x" * 600, 100),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_count_tokens(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_every_character_is_counted_somewhere() -> None:
    # The pieces cover the text: an unmatched character would cost nothing.
    for char in "_~`|\\\t\r\u00a0\u200b\U0001f600":
        assert count_tokens(char) >= 1, repr(char)


def test_count_prompt_adds_the_chat_formatting() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    assert count_prompt(messages) == PER_REQUEST + 2 * PER_MESSAGE + 3 + 1 + 1  # + the join
    assert count_prompt([]) == 0
    assert count_prompt([{"role": "user", "content": ""}]) == PER_REQUEST + PER_MESSAGE



@pytest.mark.parametrize(("unit", "per_unit"), [("word ", 1), ("日本", 2), ("a_b ", 3)])
def test_a_long_text_is_scaled_from_its_ends(unit: str, per_unit: int) -> None:
    # As counted in full, give or take a piece cut at the samples' edges.
    repeats = 4 * SAMPLE // len(unit)
    assert count_tokens(unit * repeats) == pytest.approx(per_unit * repeats, rel=0.01)


def test_a_long_text_costs_at_least_a_token_per_five_bytes() -> None:
    text = "x" * SAMPLE + "é" * (4 * SAMPLE) + "x" * SAMPLE  # its ends say 1 per 6 characters
    assert count_tokens(text) >= len(text.encode()) / 5


def test_a_long_history_is_sampled_as_one_text() -> None:
    messages = [{"role": "user", "content": "word " * 1000}] * 1000
    assert count_prompt(messages) == pytest.approx(
        PER_REQUEST + 1000 * PER_MESSAGE + 1000 * 1000, rel=0.01)
