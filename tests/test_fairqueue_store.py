"""The queue in the store (real SQLite, no server): enqueue once, bounded, rounds that make
owners take turns, claims up to the cap in fair order, positions, and a cancel leaving it."""

from __future__ import annotations

import pytest
from flask import Flask

from relay import fairqueue, tickets
from relay.errors import ErrorCode, TooManyRequests
from relay.validation import NewTicket


def _ticket(app: Flask, owner: str) -> str:
    spec = NewTicket(prompt="hi", messages=None, conversation_id=None, model="m", system=None,
                     temperature=None, max_tokens=None, regenerate=False)
    with app.app_context():
        return tickets.create_ticket(owner, spec).id


@pytest.fixture()
def capped(app: Flask) -> Flask:
    app.config.update(UPSTREAM_MAX_CONCURRENCY=2, UPSTREAM_QUEUE_MAX=5)
    return app


def _enqueue(app: Flask, ticket_id: str, owner: str) -> bool:
    with app.test_request_context():
        return fairqueue.enqueue(app, ticket_id, owner)


def _claim(app: Flask) -> list[str]:
    with app.app_context():
        claimed, _ = fairqueue.claim_queued(app, "worker-1")
    return [ticket.ticket_id for ticket in claimed]


def test_a_ticket_is_queued_once_and_only_by_its_owner(capped: Flask) -> None:
    ticket_id = _ticket(capped, "a")
    assert not _enqueue(capped, ticket_id, "b")
    assert _enqueue(capped, ticket_id, "a")
    assert not _enqueue(capped, ticket_id, "a")
    assert not _enqueue(capped, "not-an-id", "a")


def test_slots_go_round_robin_and_positions_follow(capped: Flask) -> None:
    batch = [_ticket(capped, "a") for _ in range(4)]
    for ticket_id in batch:
        assert _enqueue(capped, ticket_id, "a")
    assert _claim(capped) == batch[:2]  # two slots, nothing else waits yet
    single = _ticket(capped, "b")
    assert _enqueue(capped, single, "b")
    taken = fairqueue.snapshot(capped, fresh=True)
    assert taken.positions == {single: 1, batch[2]: 2, batch[3]: 3}
    assert taken.free == 0
    assert _claim(capped) == []  # the cap holds
    with capped.app_context():
        tickets.cancel_pending(batch[3])  # a cancel leaves the queue at once
    assert fairqueue.snapshot(capped, fresh=True).positions == {single: 1, batch[2]: 2}


def test_a_full_queue_refuses_and_the_ticket_stays_pending_unqueued(capped: Flask) -> None:
    for _ in range(5):
        ticket_id = _ticket(capped, "a")
        assert _enqueue(capped, ticket_id, "a")
    refused = _ticket(capped, "b")
    with pytest.raises(TooManyRequests) as caught:
        _enqueue(capped, refused, "b")
    assert caught.value.code == ErrorCode.QUEUE_FULL and caught.value.retry_after > 0
    assert refused not in fairqueue.snapshot(capped, fresh=True).positions
    with capped.app_context():
        assert tickets.read_state(refused).status == "pending"  # type: ignore[union-attr]
