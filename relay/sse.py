"""Pure, byte-exact Server-Sent Events encoding and Last-Event-ID parsing.

Must not touch the database or the network. Intentional choices (do not "fix"):
- Data is split on `\\r\\n`, `\\r` and `\\n`, one `data:` line per piece, so no raw line break
  ever lands inside a field; relay itself only sends single-line JSON.
- `id` and `event` values may not contain line breaks or NUL (the HTML spec would ignore or
  misparse them): passing one is a programming error and raises ValueError.
- A comment is sent as `: text`, with its own line breaks turned into further comment lines.
"""

from __future__ import annotations

import re

PING = b": ping\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_EVENT_ID = 2**53


def encode(
    data: str | None = None,
    *,
    event: str | None = None,
    id: int | str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event-stream block (terminated by a blank line) as UTF-8 bytes."""
    lines: list[str] = []
    if comment is not None:
        lines.extend(f": {part}" if part else ":" for part in _LINE_BREAK.split(comment))
    if event is not None:
        lines.append(f"event: {_single_line('event', event)}")
    if id is not None:
        lines.append(f"id: {_single_line('id', str(id))}")
    if retry is not None:
        if retry < 0:
            raise ValueError("retry must be >= 0")
        lines.append(f"retry: {int(retry)}")
    if data is not None:
        lines.extend(f"data: {part}" for part in _LINE_BREAK.split(data))
    if not lines:
        raise ValueError("an event needs at least one field")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def encode_json(data: bytes, *, id: int) -> bytes:
    """`encode(data, id=id)` for JSON text, which has no raw line breaks: nothing to split."""
    return b"id: %d\ndata: %s\n\n" % (id, data)


def event_and_data(frame: bytes) -> tuple[str | None, bytes]:
    """The event name (None for the default `message`) and the data of one block relay encoded
    itself, whose data is one line (JSON text)."""
    event = None
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            event = line[7:].decode()
        elif line.startswith(b"data: "):
            return event, line[6:]
    raise ValueError("an event block without data")


def _single_line(field: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{field} may not contain line breaks or NUL")
    return value


def parse_last_event_id(raw: str | None) -> int | None:
    """Parse a Last-Event-ID value into a non-negative int; None if absent or blank."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"Last-Event-ID must be a non-negative integer, got {raw[:40]!r}")
    value = int(text)
    if value > _MAX_EVENT_ID:
        raise ValueError("Last-Event-ID is out of range")
    return value
