"""Token counts estimated without a tokenizer, for upstreams that report no usage.

No tokenizer can be fetched at run time (tiktoken downloads its BPE files), so text is cut the
way GPT-style pre-tokenizers cut it (a word with its leading space, digits in threes, a run of
punctuation, whitespace) and each piece is counted by its kind. Pure: no I/O, no state.

Intentional divergences from a real tokenizer (do not fix):
- It errs high. A quota reserves a prompt by this estimate, so an estimate below the upstream's
  count could let a quota be overdrawn; one above it only reserves a little more for a while.
- Letters outside ASCII count one token per character from U+0800 on (CJK, most scripts that
  need three UTF-8 bytes), as byte-level BPEs mostly give them one or more each.
- A text longer than `SAMPLE` is counted from its two ends and scaled to its length, and never
  below a token per five UTF-8 bytes: a long text of one kind in the middle may be misjudged.
- A message costs 4 tokens besides its content, and a request 3 more, as OpenAI's cookbook
  counts chat formatting (other models' templates differ by a few tokens); the line break that
  joins two messages' texts costs one more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

# One group per kind of piece, so that a match says its kind (`lastindex`) without more work.
_PIECES = re.compile(
    r"('(?:[sdmt]|ll|ve|re))"  # 1: a contraction
    r"| ?([A-Za-z]+)"  # 2: an ASCII word, with its leading space
    r"| ?([^\W\d_]+)"  # 3: another word
    r"| ?(\d{1,3})"  # 4: digits, three at most
    r"| ?((?:[^\s\w]|_)+)"  # 5: punctuation and symbols
    r"|(\s+(?!\S)|\s+)",  # 6: whitespace
    re.IGNORECASE,
)
_ASCII_WORD = 6  # characters of an ASCII word per token (most English words are one)
_SYMBOLS = 2  # characters of a punctuation run per token
_SPACES = 8  # characters of a whitespace run per token
_WIDE = 0x800  # from here on, a letter is a token of its own
PER_MESSAGE = 4
PER_REQUEST = 3
SAMPLE = 32 * 1024  # characters counted piece by piece at most (about 10 ms)


def count_tokens(text: str) -> int:
    """The estimated tokens of `text`: counted piece by piece up to `SAMPLE` characters; a
    longer text from its first and last `SAMPLE // 2`, scaled to its length (a 4 MiB prompt
    would otherwise hold the worker for a second)."""
    if len(text) <= SAMPLE:
        return _counted(text)
    half = SAMPLE // 2
    sampled = _counted(text[:half]) + _counted(text[-half:])
    return max(math.ceil(sampled * len(text) / SAMPLE), math.ceil(len(text.encode()) / 5))


def _counted(text: str) -> int:
    total = 0
    for match in _PIECES.finditer(text):
        kind = match.lastindex
        if kind == 2:
            total += -(-len(match.group(2)) // _ASCII_WORD)
        elif kind == 5:
            total += -(-len(match.group(5)) // _SYMBOLS)
        elif kind == 6:
            total += -(-len(match.group(6)) // _SPACES)
        elif kind == 3:
            total += _word_tokens(match.group(3))
        else:
            total += 1
    return total


def count_prompt(messages: Iterable[Mapping[str, str]]) -> int:
    """The estimated prompt tokens of a chat request with these messages (their texts counted
    as one, a line break between two, so that a long history is sampled like a long text)."""
    texts = [str(message.get("content") or "") for message in messages]
    if not texts:
        return 0
    return PER_REQUEST + PER_MESSAGE * len(texts) + count_tokens("\n".join(texts))


def _word_tokens(word: str) -> int:
    wide = sum(1 for char in word if ord(char) >= _WIDE)
    return wide + math.ceil((len(word) - wide) / _ASCII_WORD * 1.5)
