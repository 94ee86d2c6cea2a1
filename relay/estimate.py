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

_PIECES = re.compile(
    r"'(?:[sdmt]|ll|ve|re)"  # contractions
    r"| ?[^\W\d_]+"  # a word, with its leading space
    r"| ?\d{1,3}"  # digits, three at most
    r"| ?(?:[^\s\w]|_)+"  # punctuation and symbols
    r"|\s+(?!\S)|\s+",  # whitespace
    re.IGNORECASE,
)
_CONTRACTION = re.compile(r"'(?:[sdmt]|ll|ve|re)", re.IGNORECASE)
_ASCII_WORD = 6  # characters of an ASCII word per token (most English words are one)
_SYMBOLS = 2  # characters of a punctuation run per token
_SPACES = 8  # characters of a whitespace run per token
_WIDE = 0x800  # from here on, a letter is a token of its own
PER_MESSAGE = 4
PER_REQUEST = 3


def count_tokens(text: str) -> int:
    """The estimated tokens of `text`."""
    return sum(_piece_tokens(piece) for piece in _PIECES.findall(text))


def count_prompt(messages: Iterable[Mapping[str, str]]) -> int:
    """The estimated prompt tokens of a chat request with these messages."""
    total = 0
    for message in messages:
        total += PER_MESSAGE + count_tokens(str(message.get("content") or ""))
    return total + PER_REQUEST if total else 0


def _piece_tokens(piece: str) -> int:
    word = piece.lstrip(" ")
    if not word:
        return 1 if piece else 0
    first = word[0]
    if first.isspace():
        return math.ceil(len(piece) / _SPACES)
    if first.isdigit() or _CONTRACTION.fullmatch(word):
        return 1
    if not first.isalpha():
        return math.ceil(len(word) / _SYMBOLS)
    if word.isascii():
        return math.ceil(len(word) / _ASCII_WORD)
    wide = sum(1 for char in word if ord(char) >= _WIDE)
    narrow = len(word) - wide
    return wide + math.ceil(narrow / _ASCII_WORD * 1.5)
