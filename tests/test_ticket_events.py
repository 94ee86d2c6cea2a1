"""Stored events: runs of consecutive deltas in one row each, read back event by event."""

from __future__ import annotations

import orjson
from flask import Flask

from relay import events, sql, tickets
from relay.db import db
from relay.validation import NewTicket


def _delta(seq: int) -> events.StoredEvent:
    return (seq, "delta", orjson.dumps({"delta": f"t{seq}\n"}).decode())


def _stored_ticket(app: Flask, batches: list[list[events.StoredEvent]]) -> str:
    spec = NewTicket(prompt="hi", messages=None, conversation_id=None, model="m",
                             system=None, temperature=None, max_tokens=None, regenerate=False)
    with app.app_context():
        ticket = tickets.create_ticket("owner", spec)
        for batch in batches:  # one commit per batch, as the writer and finish_ticket do
            with sql.Transaction(db.engine) as tx:
                events.insert_events(tx, events.event_rows(ticket.id, batch))
    return ticket.id


def test_consecutive_deltas_share_a_row_and_done_has_its_own() -> None:
    rows = events.event_rows("t", [_delta(1), _delta(2), _delta(3), (4, "done", "{}")])
    assert [(seq, kind, data.count("\n") + 1) for _, seq, kind, data in rows] == [
        (3, "delta", 3), (4, "done", 1)]


def test_a_gap_or_a_long_run_starts_a_new_row() -> None:
    rows = events.event_rows("t", [_delta(1), _delta(2), _delta(5)])
    assert [seq for _, seq, _, _ in rows] == [2, 5]
    long_run = events.event_rows("t", [_delta(seq) for seq in range(1, 601)])
    assert [seq for _, seq, _, _ in long_run] == [256, 512, 600]


def test_events_after_any_id_are_exact_across_runs(app: Flask) -> None:
    batches = [[_delta(1)], [_delta(seq) for seq in range(2, 300)],
               [*[_delta(seq) for seq in range(300, 306)], (306, "done", '{"status": "x"}')]]
    ticket_id = _stored_ticket(app, batches)
    every = [event for batch in batches for event in batch]
    with app.app_context():
        for after in range(0, 308):
            assert events.events_after(ticket_id, after) == every[after:], after
        text, last = events.ticket_progress(ticket_id)
    assert last == 306
    assert text == "".join(f"t{seq}\n" for seq in range(1, 306))
