"""A ticket's stored events: `done`, or runs of consecutive deltas, written and read back.

Consecutive deltas are stored as one row, a run: its `seq` is the id of the run's last event and
its `data` the events' JSON texts joined by newlines (JSON text has no raw line break). A row per
token was the largest single cost of relaying an answer. Must not know HTTP or claims.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select

from . import sql
from .db import db
from .models import TicketEvent, TicketStatus

StoredEvent = tuple[int, str, str]
"""(seq, kind, data): kind is `delta` or `done`, data the JSON text of the event's payload."""

EventRow = tuple[str, int, str, str]
"""(ticket_id, seq, kind, data): one row of `ticket_events`."""

MAX_RUN = 256  # deltas per row at most

_events = TicketEvent.__table__
_INSERT_EVENTS = "INSERT INTO ticket_events (ticket_id, seq, kind, data) VALUES (?, ?, ?, ?)"
_LAST_STORED_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM ticket_events WHERE ticket_id = ?"
_STORED_DELTAS = (
    "SELECT data FROM ticket_events WHERE ticket_id = ? AND kind = 'delta' ORDER BY seq"
)


MAX_CODE = 64  # characters of a finish reason or an error code (their columns' size)
MAX_MESSAGE = 1000  # characters of an error message


@dataclass(frozen=True)
class Outcome:
    """How a generation ended: what its `done` event says.

    Made to fit the ticket's columns (finish reason and error code cut, text storable), since
    much of it comes from the upstream: a ticket must be able to end whatever the upstream sent.
    """

    status: TicketStatus
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def __post_init__(self) -> None:
        reason = self.finish_reason
        object.__setattr__(self, "finish_reason",
                           _fitted(reason, MAX_CODE) if isinstance(reason, str) else None)
        if not isinstance(self.usage, dict):
            object.__setattr__(self, "usage", None)
        if self.error:
            code, message = self.error["code"], self.error["message"]
            if not (isinstance(code, str) and _fitted(code, MAX_CODE) == code):
                code = _fitted(str(code), MAX_CODE)
            object.__setattr__(self, "error",
                               {"code": code, "message": _fitted(str(message), MAX_MESSAGE)})

    def done_payload(self) -> str:
        """The JSON text of the `done` event."""
        payload: dict[str, Any] = {"status": str(self.status),
                                   "finish_reason": self.finish_reason, "usage": self.usage or {}}
        if self.error:
            payload["error"] = self.error
        return json.dumps(payload, ensure_ascii=False)


def event_rows(ticket_id: str, events: Sequence[StoredEvent]) -> list[EventRow]:
    """Rows for `insert_events`: each run of consecutive deltas in one row, `done` in its own."""
    rows: list[EventRow] = []
    run: list[str] = []
    last = 0
    for seq, kind, data in events:
        if run and (kind != "delta" or seq != last + 1 or len(run) >= MAX_RUN):
            rows.append((ticket_id, last, "delta", "\n".join(run)))
            run = []
        if kind == "delta":
            run.append(data)
        else:
            rows.append((ticket_id, seq, kind, data))
        last = seq
    if run:
        rows.append((ticket_id, last, "delta", "\n".join(run)))
    return rows


def events_of_rows(rows: Sequence[tuple[int, str, str]], after_seq: int) -> list[StoredEvent]:
    """The events after `after_seq` stored in `rows` of (seq, kind, data), in seq order."""
    events: list[StoredEvent] = []
    for last, kind, data in rows:
        if kind != "delta":
            events.append((last, kind, data))
            continue
        texts = data.split("\n")
        first = last - len(texts) + 1
        events.extend(
            (first + index, kind, texts[index])
            for index in range(max(0, after_seq + 1 - first), len(texts))
        )
    return events


def insert_events(tx: sql.Transaction, rows: list[EventRow]) -> None:
    """Insert event rows (from `event_rows`) with one executemany."""
    tx.executemany(_INSERT_EVENTS, rows)


def events_after(ticket_id: str, after_seq: int) -> list[StoredEvent]:
    """Stored events with seq > after_seq, in order."""
    return events_page(ticket_id, after_seq, None)[0]


def events_page(
    ticket_id: str, after_seq: int, max_rows: int | None
) -> tuple[list[StoredEvent], bool]:
    """Stored events with seq > after_seq, in order, from at most `max_rows` rows (each up to
    MAX_RUN events); and whether that limit was reached (more rows may follow)."""
    query = (
        select(_events.c.seq, _events.c.kind, _events.c.data)
        .where(_events.c.ticket_id == ticket_id, _events.c.seq > after_seq)
        .order_by(_events.c.seq)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(query if max_rows is None else query.limit(max_rows)).all()
    full = max_rows is not None and len(rows) == max_rows
    return events_of_rows([(row[0], row[1], row[2]) for row in rows], after_seq), full


def last_stored_seq(tx: sql.Transaction, ticket_id: str) -> int:
    """The id of the ticket's newest stored event (0 before the first)."""
    return int(tx.execute(_LAST_STORED_SEQ, (ticket_id,)).fetchone()[0])


def committed_count(ticket_id: str) -> int:
    """The id of the ticket's newest stored event (0 before the first), in its own read."""
    with sql.Transaction(db.engine) as tx:
        return last_stored_seq(tx, ticket_id)


def storable_text(text: str) -> str:
    """`text` as a text column can hold it: PostgreSQL refuses NUL, here U+FFFD. (An answer's
    events keep its exact text: JSON escapes NUL as `\\u0000`.)"""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def stored_text(tx: sql.Transaction, ticket_id: str) -> str:
    """The answer text of the ticket's stored deltas, as a conversation stores it
    (`storable_text`)."""
    return storable_text(_answer_text(tx, ticket_id))


def ticket_progress(ticket_id: str) -> tuple[str, int]:
    """The exact answer text stored so far and the id of the last stored event."""
    with sql.Transaction(db.engine) as tx:
        return _answer_text(tx, ticket_id), last_stored_seq(tx, ticket_id)


def _answer_text(tx: sql.Transaction, ticket_id: str) -> str:
    rows = tx.execute(_STORED_DELTAS, (ticket_id,)).fetchall()
    return "".join(orjson.loads(text)["delta"] for row in rows for text in row[0].split("\n"))


def _fitted(text: str, limit: int) -> str:
    return storable_text(text[:limit])
