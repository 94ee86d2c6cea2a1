"""Replaying a finished answer from the store: exactly the stored events, read and sent in
pages of bounded size, whatever the answer's length."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from flask import Flask
from sqlalchemy import event

from relay import events, sql, sse, streams, tickets
from relay.db import db
from relay.state import relay_state
from relay.validation import NewTicket

ANSWER = 10_000  # deltas; stored in commits of 700, so runs end at irregular ids


@pytest.fixture()
def finished_ticket(app: Flask) -> tuple[str, list[events.StoredEvent]]:
    stored: list[events.StoredEvent] = [
        (seq, "delta", orjson.dumps({"delta": f"t{seq} "}).decode())
        for seq in range(1, ANSWER + 1)
    ]
    stored.append((ANSWER + 1, "done", '{"status": "completed", "finish_reason": "stop"}'))
    spec = NewTicket(prompt="hi", messages=None, conversation_id=None, model="m",
                     system=None, temperature=None, max_tokens=None, regenerate=False)
    with app.app_context():
        ticket = tickets.create_ticket("owner", spec)
        for start in range(0, len(stored), 700):
            with sql.Transaction(db.engine) as tx:
                events.insert_events(tx, events.event_rows(ticket.id, stored[start:start + 700]))
    return ticket.id, stored


@pytest.fixture()
def event_queries(app: Flask) -> Iterator[list[str]]:
    """The statements that read `ticket_events`, as they run."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "ticket_events" in statement:
            seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("last_seen", [0, 1, 1234, 5000, ANSWER - 1, ANSWER])
def test_a_long_finished_answer_replays_exactly_in_bounded_pages(
    app: Flask, finished_ticket: tuple[str, list[events.StoredEvent]],
    event_queries: list[str], last_seen: int,
) -> None:
    ticket_id, stored = finished_ticket
    settings = relay_state(app).stream_settings
    sent = list(streams.event_stream(app, ticket_id, last_seen, settings))
    expected = [sse.encode(data, id=seq, event="done" if kind == "done" else None)
                for seq, kind, data in stored[last_seen:]]
    assert sent[0] == settings.retry_frame
    assert b"".join(sent[1:]) == b"".join(expected)
    # Each read of the store is one page, sent before the next is read.
    pages = sent[1:]
    assert len(event_queries) == len(pages)
    per_page = [page.count(b"\n\n") for page in pages]
    assert max(per_page) <= streams.REPLAY_PAGE_ROWS * events.MAX_RUN
    assert len(pages) >= (ANSWER - last_seen) // (streams.REPLAY_PAGE_ROWS * events.MAX_RUN)
