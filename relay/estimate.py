"""Token counts estimated without a tokenizer, for upstreams that report no usage.

No tokenizer can be fetched at run time (tiktoken downloads its BPE files), so text is cut the
way GPT-style pre-tokenizers cut it (a word with its leading space, digits in threes, a run of
punctuation, whitespace) and each piece is counted by its kind. Pure: no I/O, no state.

Intentional divergences from a real tokenizer (do not fix):
- It errs high. A quota reserves a prompt by this estimate, so an estimate below the upstream's
  count could let a quota be overdrawn; one above it only reserves a little more for a while.
- Letters outside ASCII count one token per character from U+0800 on (CJK, most scripts that
  need three UTF-8 bytes), as byte-level BPEs mostly give them one or more each.
- A message costs 4 tokens besides its content, and a request 3 more, as OpenAI's cookbook
  counts chat formatting; other models' templates differ by a few tokens.
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


def count_tokens(text: str) -> int:
    """The estimated tokens of `text`."""
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
    """The estimated prompt tokens of a chat request with these messages."""
    total = 0
    for message in messages:
        total += PER_MESSAGE + count_tokens(str(message.get("content") or ""))
    return total + PER_REQUEST if total else 0


def _word_tokens(word: str) -> int:
    wide = sum(1 for char in word if ord(char) >= _WIDE)
    return wide + math.ceil((len(word) - wide) / _ASCII_WORD * 1.5)
