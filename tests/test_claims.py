"""The claim: one winner per ticket, holding the ticket until its block ends, and a commit that
fails closing the upstream call it started (real SQLite)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from flask import Flask

from relay import generation, tickets
from relay.db import db
from relay.validation import NewTicket

from .helpers import wal_cannot_grow

_CLAIM_BEHIND_ITS_BACK = "UPDATE tickets SET status = 'running' WHERE id = ? AND status = 'pending'"


def _pending_ticket(app: Flask) -> str:
    spec = NewTicket(prompt="hi", messages=None, conversation_id=None, model="m",
                             system=None, temperature=None, max_tokens=None, regenerate=False)
    with app.app_context():
        return tickets.create_ticket("owner", spec).id


def _other_worker(app: Flask) -> sqlite3.Connection:
    """A connection of another process's kind: its own, with no patience for locks."""
    with app.app_context():
        path = db.engine.url.database
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_the_winner_holds_the_ticket_until_its_block_ends(app: Flask) -> None:
    # The winner sends its upstream request inside the block: until the claim commits, no one
    # else may take the ticket, or two upstream calls would run for it.
    ticket_id = _pending_ticket(app)
    other = _other_worker(app)
    with app.app_context():
        with tickets.claiming(ticket_id, "owner", "worker-a", 30) as request:
            assert request is not None and request["messages"][-1]["content"] == "hi"
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute(_CLAIM_BEHIND_ITS_BACK, (ticket_id,))
        assert other.execute(_CLAIM_BEHIND_ITS_BACK, (ticket_id,)).rowcount == 0
        with tickets.claiming(ticket_id, "owner", "worker-b", 30) as again:
            assert again is None
        assert tickets.load_ticket(ticket_id, "owner").claimed_by == "worker-a"
    other.close()


def test_a_block_that_raises_leaves_the_ticket_pending(app: Flask) -> None:
    ticket_id = _pending_ticket(app)
    with app.app_context():
        with pytest.raises(RuntimeError), tickets.claiming(ticket_id, "owner", "a", 30) as first:
            assert first is not None
            raise RuntimeError("the upstream request could not be made")
        assert tickets.load_ticket(ticket_id, "owner").status == "pending"
        with tickets.claiming(ticket_id, "owner", "b", 30) as second:
            assert second is not None
        assert tickets.load_ticket(ticket_id, "owner").claimed_by == "b"


@pytest.mark.parametrize("ticket_id, owner", [("not an id!", "owner"), (None, "someone else")])
def test_no_claim_for_a_bad_id_or_another_owner(app: Flask, ticket_id: str | None,
                                                owner: str) -> None:
    real = _pending_ticket(app)
    with app.app_context():
        with tickets.claiming(ticket_id or real, owner, "a", 30) as request:
            assert request is None
        assert tickets.load_ticket(real, "owner").status == "pending"


class _StartedCall:
    """What an Upstream's `stream` returns: an iterator whose close closes the upstream call."""

    closed = False

    def __iter__(self) -> _StartedCall:
        return self

    def __next__(self) -> None:
        raise StopIteration

    def close(self) -> None:
        self.closed = True


class _Upstream:
    def __init__(self) -> None:
        self.calls: list[_StartedCall] = []

    def stream(self, request: Any) -> _StartedCall:
        self.calls.append(_StartedCall())
        return self.calls[-1]


def test_a_claim_whose_commit_fails_closes_its_upstream_call_and_stays_pending(
    app: Flask,
) -> None:
    ticket_id = _pending_ticket(app)
    upstream = app.extensions["relay"].upstream = _Upstream()
    with app.app_context():
        with wal_cannot_grow(app), pytest.raises(sqlite3.OperationalError):
            generation.claim_and_start(app, ticket_id, "owner")
        assert len(upstream.calls) == 1 and upstream.calls[0].closed
        assert generation.live_log(ticket_id) is None
        assert tickets.load_ticket(ticket_id, "owner").status == "pending"
        with tickets.claiming(ticket_id, "owner", "b", 30) as request:
            assert request is not None
