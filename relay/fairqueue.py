"""The fair upstream queue: with `RELAY_UPSTREAM_MAX_CONCURRENCY` set, a ticket's first reader
enqueues it (pending, `queued_at` set, its quota reserved) and `claim_queued` hands free upstream
slots to queued tickets, round-robin by owner; and the queue positions its readers are told.

The queue is the store's: every worker and host enqueues, claims and counts in the same rows, so
nothing of it lives in a worker that may die. An enqueue and a claim of queued tickets each run in
one short transaction that first writes a lock row (an upsert, as `quotas` locks a user's
totals: on PostgreSQL it locks that row, on SQLite the write takes the database's lock), so two
workers never give out the same free slot nor overfill the queue.

Fairness is start-time fair queueing: a ticket is queued with a round (`next_round`), the queue's
current round (that of the ticket dispatched last) or, when its owner already has tickets queued
or running, one after the owner's latest; slots go by round, then age (`fair_order`). So owners
take turns: one with a batch of ten gets rounds 0..9, one arriving later with a single ticket
the current round, ahead of the batch's rest. (Ranking by the owner's running count alone, as
first designed, forgets what an owner was just served: once a batch's first two ended together,
its third ranked with a newcomer's ticket and won on age.) Must not use `request` or
`g`, nor start producers (`dispatch.dispatch` does, with what `claim_queued` returns).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from . import quotas, sql, tickets, usage
from .db import db
from .errors import ErrorCode, TooManyRequests
from .ids import is_valid_id

_LOCK = usage.ADD_TOTALS.format("('queue', 'lock', 0)")
# The lock row's count is the queue's round: that of the ticket dispatched last.
_ROUND = "SELECT tokens FROM usage_totals WHERE scope = 'queue' AND period = 'lock'"
_ADVANCE = (
    "UPDATE usage_totals SET tokens = ? WHERE scope = 'queue' AND period = 'lock' AND tokens < ?"
)
_OWNERS_LAST = (
    "SELECT MAX(queue_round) FROM tickets "
    "WHERE owner = ? AND status IN ('pending', 'running') AND queue_round IS NOT NULL"
)
_ENQUEUE = (
    "UPDATE tickets SET queued_at = ?, queue_round = ? "
    "WHERE id = ? AND owner = ? AND status = 'pending' AND queued_at IS NULL"
)
_QUEUED_COUNT = "SELECT COUNT(*) FROM tickets WHERE status = 'pending' AND queued_at IS NOT NULL"
_QUEUED = (
    "SELECT id, queue_round, queued_at FROM tickets "
    "WHERE status = 'pending' AND queued_at IS NOT NULL"
)
_ANY_QUEUED = "SELECT 1 FROM tickets WHERE status = 'pending' AND queued_at IS NOT NULL LIMIT 1"
_RUNNING = "SELECT COUNT(*) FROM tickets WHERE status = 'running'"
_LIVE = "SELECT COUNT(*) FROM tickets WHERE status = 'running' AND lease_expires_at >= ?"
_EXPIRED = "SELECT id FROM tickets WHERE status = 'running' AND lease_expires_at < ?"
_CLAIM = (
    "UPDATE tickets SET status = 'running', claimed_by = ?, started_at = ?, lease_expires_at = ? "
    "WHERE id = ? AND status = 'pending' AND queued_at IS NOT NULL"
)
_RESERVED = "SELECT ticket_id, tokens FROM reservations WHERE ticket_id IN ({})"
_RETRY_FULL = 5  # seconds: a queue drains by a few answers in that time
_SNAPSHOT_SECONDS = 0.25  # how stale the positions this worker's readers are told may be


def next_round(current: int, owners_last: int | None) -> int:
    """The round of an owner's newly queued ticket: the queue's current round (that of the
    ticket dispatched last), or one after the owner's latest queued or running ticket."""
    return current if owners_last is None else max(current, owners_last + 1)


def fair_order(queued: Sequence[tuple[str, int, float]]) -> list[str]:
    """The ids of queued tickets (id, round, queued_at) in the order they get a slot: by round,
    then by age (then id, so that every worker agrees)."""
    return [row[0] for row in sorted(queued, key=lambda row: (row[1], row[2], row[0]))]


def cap(app: Flask) -> int | None:
    """The upstream concurrency cap (None: no queue)."""
    value: int | None = app.config["UPSTREAM_MAX_CONCURRENCY"]
    return value


def enqueue(app: Flask, ticket_id: str, owner: str) -> bool:
    """Queue `owner`'s pending ticket, reserving its quota in the same transaction; False when it
    is not theirs to queue (unknown, someone else's, already queued or started). Raises 429
    `queue_full`, or a limit's 429, and then the ticket stays pending and unqueued."""
    if not is_valid_id(ticket_id):
        return False
    admission = quotas.admission(app)
    request: dict[str, Any] = {}
    key_id = None
    if admission is not None:
        pending = tickets.pending_request(ticket_id, owner)
        if pending is None:
            return False
        request, key_id = pending
        admission.prepare(request)
    with sql.Transaction(db.engine) as tx:
        tx.execute(_LOCK)  # every enqueue and claim in turn: the count and rounds stay true
        current = int(tx.execute(_ROUND).fetchone()[0])
        owners_last = tx.execute(_OWNERS_LAST, (owner,)).fetchone()[0]
        queue_round = next_round(current, None if owners_last is None else int(owners_last))
        if tx.execute(_ENQUEUE, (time.time(), queue_round, ticket_id, owner)).rowcount != 1:
            return False
        if int(tx.execute(_QUEUED_COUNT).fetchone()[0]) > app.config["UPSTREAM_QUEUE_MAX"]:
            raise TooManyRequests(
                "Too many answers are waiting for the model; try again in a moment.",
                retry_after=_RETRY_FULL, code=ErrorCode.QUEUE_FULL)
        if admission is not None:
            admission.admit(tx, ticket_id, owner, key_id, request)
    _snapshots.pop(app, None)  # its readers find it queued at once
    return True


@dataclass(frozen=True)
class Claimed:
    """A queued ticket just claimed for this worker: `reserved` its reservation's tokens (None:
    it holds none)."""

    ticket_id: str
    reserved: int | None


def claim_queued(app: Flask, worker_id: str) -> tuple[list[Claimed], list[str]]:
    """Reap running tickets whose worker died, then claim for `worker_id` as many queued tickets
    as there are free slots, in fair order; returns those and the ids reaped."""
    limit = cap(app)
    if limit is None:
        return [], []
    now = time.time()
    with sql.Transaction(db.engine) as tx:
        expired = [row[0] for row in tx.execute(_EXPIRED, (now,)).fetchall()]
        waiting = tx.execute(_ANY_QUEUED).fetchone() is not None
    reaped = [ticket_id for ticket_id in expired if tickets.reap_if_expired(ticket_id) is not None]
    if not waiting:  # nothing to claim; a ticket queued after this read is dispatched by its
        return [], reaped  # enqueuer: no write (on SQLite, a synced commit) for nothing
    lease = app.config["LEASE_SECONDS"]
    with sql.Transaction(db.engine) as tx:
        tx.execute(_LOCK)
        free = limit - int(tx.execute(_RUNNING).fetchone()[0])
        if free <= 0:
            return [], reaped
        queued = tx.execute(_QUEUED).fetchall()
        chosen = fair_order(queued)[:free]
        if not chosen:
            return [], reaped
        tx.executemany(_CLAIM, [(worker_id, now, now + lease, ticket_id) for ticket_id in chosen])
        last = max(int(row[1]) for row in queued if row[0] in chosen)
        tx.execute(_ADVANCE, (last, last))
        reserved = dict(tx.execute(_RESERVED.format(sql.placeholders(len(chosen))),
                                   chosen).fetchall())
    _snapshots.pop(app, None)
    return [Claimed(ticket_id, reserved.get(ticket_id)) for ticket_id in chosen], reaped


@dataclass
class Snapshot:
    """The queue as this worker's readers last read it."""

    taken: float
    positions: dict[str, int] = field(default_factory=dict)  # queued ticket: 1 = next
    free: int = 0  # slots not held by a running ticket with a live lease


_snapshots: dict[Flask, Snapshot] = {}


def snapshot(app: Flask, fresh: bool = False) -> Snapshot:
    """The queue's positions and free slots, read at most every quarter second per worker (all
    its queued readers share one read)."""
    now = time.monotonic()
    known = _snapshots.get(app)
    if known is not None and not fresh and now - known.taken < _SNAPSHOT_SECONDS:
        return known
    with app.app_context(), sql.Transaction(db.engine) as tx:
        live = int(tx.execute(_LIVE, (time.time(),)).fetchone()[0])
        queued = tx.execute(_QUEUED).fetchall()
    order = fair_order(queued)
    taken = Snapshot(now, {ticket_id: n for n, ticket_id in enumerate(order, 1)},
                     (cap(app) or 0) - live)
    _snapshots[app] = taken
    return taken


def position(app: Flask, ticket_id: str) -> tuple[int | None, bool]:
    """The ticket's place in the queue (None: not queued) and whether a slot is free."""
    taken = snapshot(app)
    if ticket_id not in taken.positions and time.monotonic() - taken.taken > 0.01:
        taken = snapshot(app, fresh=True)  # queued after that read, or just dispatched
    return taken.positions.get(ticket_id), taken.free > 0
