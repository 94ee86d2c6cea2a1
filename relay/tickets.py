"""Tickets in the store: create, load with an owner check, claim, leases, finish, cancel flags.

Must not use `request` or `g`. The statements on the hot paths (create, claim, leases, finish)
are plain SQL in short `sql.Transaction`s (sql.py says why); reads go through SQLAlchemy Core.
Read-then-write paths start with their write (claim, finish), so SQLite takes the write lock
first and never has to upgrade a read snapshot; a claim reads its upstream request before, in
a transaction of its own. `status = 'running'` is written out in the statements so that the
planner can use the partial index of running claims. Over 300 lines: every write of a ticket's
status is here, where the rules they share (one unfinished ticket per conversation, who may
write `done`) can be read together.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, cast

from flask import current_app
from sqlalchemy import Table, bindparam, select, update

from . import conversations, events, sql, usage
from .db import db
from .errors import Conflict, ConversationNotFound, ErrorCode, InvalidRequest, TicketNotFound
from .events import Outcome, StoredEvent
from .ids import is_valid_id, new_id
from .models import ACTIVE_STATUSES, Ticket, TicketStatus
from .validation import NewTicket

_tickets = cast(Table, Ticket.__table__)
# Every column but the stored request options, which only a claim needs.
_SELECT_TICKET = select(*(c for c in _tickets.c if c.name != "request")).where(
    _tickets.c.id == bindparam("tid")
)

_INSERT_TICKET = (
    "INSERT INTO tickets (id, owner, conversation_id, request, model, status, last_seq, "
    "cancel_requested, created_at, key_id) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
)
_PENDING_REQUEST = (
    "SELECT conversation_id, request, key_id FROM tickets "
    "WHERE id = ? AND owner = ? AND status = 'pending'"
)
_CLAIMED_REQUEST = (
    "SELECT conversation_id, request FROM tickets "
    "WHERE id = ? AND status = 'running' AND claimed_by = ?"
)
_CLAIM_TICKET = (
    "UPDATE tickets SET status = 'running', claimed_by = ?, started_at = ?, lease_expires_at = ? "
    "WHERE id = ? AND owner = ? AND status = 'pending'"
)
_RENEW_LEASES = (
    "UPDATE tickets SET lease_expires_at = ? "
    "WHERE claimed_by = ? AND status = 'running' AND cancel_requested = ?"
)
_SELECT_CANCELLED = (
    "SELECT id FROM tickets WHERE claimed_by = ? AND status = 'running' AND cancel_requested = ?"
)
_SELECT_CLAIMS = "SELECT id, status, claimed_by, cancel_requested FROM tickets WHERE id IN ({})"
_FINISH = (
    "UPDATE tickets SET status = ?, finished_at = ?, finish_reason = ?, usage = ?, "
    "error_code = ?, error_message = ?, lease_expires_at = NULL, "
    "last_seq = COALESCE(?, last_seq) WHERE id = ? AND {} "
    "RETURNING conversation_id, owner, key_id, model"
)
# Who may write `done`: the producer holding the claim, the reaper of an expired lease, or a
# cancel of a ticket nobody started.
_FINISH_BY_PRODUCER = _FINISH.format("status = 'running' AND claimed_by = ?")
_FINISH_BY_REAPER = _FINISH.format("status = 'running' AND lease_expires_at < ?")
_FINISH_PENDING = _FINISH.format("status = 'pending'")
_FINISH_FOR_DELETION = _FINISH.format("status = 'running'")
_SET_DONE_SEQ = "UPDATE tickets SET last_seq = ? WHERE id = ?"
_STORED_OPTIONS = "SELECT request FROM tickets WHERE id = ?"

WORKER_LOST = Outcome(
    TicketStatus.FAILED, "error",
    error={"code": ErrorCode.WORKER_LOST, "message": "The worker generating this answer stopped."},
)
CANCELLED = Outcome(TicketStatus.CANCELLED, "cancelled")
# Why a ticket was cancelled when its owner did not ask: what its `done` tells the reader.
_CANCEL_MESSAGES = {
    ErrorCode.SESSION_ENDED: "You were signed out, so this answer was stopped.",
    ErrorCode.USER_DISABLED: "This account was disabled, so this answer was stopped.",
    ErrorCode.KEY_REVOKED: "The API key that made this request was revoked, so this answer "
                           "was stopped.",
}


class Verdict(StrEnum):
    """Why a worker must stop generating a ticket it claimed."""

    CANCELLED = "cancelled"  # its cancel was requested: end it cancelled
    LOST = "lost"  # the claim is gone (reaped, or the ticket deleted): someone else ends it


@dataclass(frozen=True)
class CreatedTicket:
    id: str
    conversation_id: str


@dataclass(frozen=True)
class TicketState:
    """The columns a stream needs to decide what to do next."""

    status: TicketStatus
    lease_expires_at: float | None
    done_seq: int

    @classmethod
    def of(cls, row: Any) -> TicketState:
        """The state of a loaded ticket row."""
        return cls(TicketStatus(row.status), row.lease_expires_at, row.last_seq)


def worker_id() -> str:
    """This process's identity in ticket claims (host and pid, unique per fork)."""
    pid = os.getpid()
    if pid not in _worker_ids:
        _worker_ids[pid] = f"{socket.gethostname()[:40]}:{pid}:{os.urandom(3).hex()}"
    return _worker_ids[pid]


_worker_ids: dict[int, str] = {}


def create_ticket(owner: str, spec: NewTicket, key_id: str | None = None) -> CreatedTicket:
    """Store the request (and its conversation turn) as a pending ticket owned by `owner`, made
    with the API key `key_id` if any."""
    conversation_id = spec.conversation_id
    if conversation_id is not None:
        if not (is_valid_id(conversation_id) and conversations.owns(conversation_id, owner)):
            raise ConversationNotFound("No such conversation.")
        _settle_active_tickets(conversation_id)
        turn = conversations.plan_turn(conversation_id, False, spec)
    elif spec.regenerate:
        raise InvalidRequest("`regenerate` needs the `conversation_id` to regenerate in.")
    else:
        turn = conversations.plan_turn(new_id(), True, spec)
    ticket_id = new_id()
    now = time.time()
    with sql.Transaction(db.engine, durable=True) as tx:
        if turn.is_new:
            conversations.create_conversation(tx, turn, owner, now)
        # The ticket first: a turn that lost the race to another ends here, before it wrote.
        try:
            tx.execute(_INSERT_TICKET, (
                ticket_id, owner, turn.conversation_id, sql.json_text(turn.options), spec.model,
                False, now, key_id,
            ))
        except Exception as exc:
            if _is_unique_violation(exc):
                raise _busy() from exc
            raise
        conversations.store_turn(tx, turn, now)
    return CreatedTicket(ticket_id, turn.conversation_id)


def _busy() -> Conflict:
    return Conflict(
        "This conversation is still generating an answer; wait for it or cancel it.",
        code=ErrorCode.CONVERSATION_BUSY,
    )


def _is_unique_violation(exc: Exception) -> bool:
    """Whether a driver's error is a unique index refusing a row (sqlite3 and psycopg)."""
    integrity_error = db.engine.dialect.loaded_dbapi.IntegrityError
    return isinstance(exc, integrity_error) and (
        getattr(exc, "sqlstate", None) == "23505" or "UNIQUE constraint" in str(exc)
    )


def _settle_active_tickets(conversation_id: str) -> None:
    """Refuse a new turn while one is generating; cancel tickets that were never opened."""
    for ticket in active_tickets(conversation_id):
        expired = (ticket.lease_expires_at or 0) < time.time()
        if ticket.status == TicketStatus.RUNNING and not (expired and reap_if_expired(ticket.id)):
            raise _busy()
        if ticket.status == TicketStatus.PENDING:
            cancel_pending(ticket.id)


def load_ticket(ticket_id: str, owner: str) -> Any:
    """The caller's ticket row; unknown, malformed and not-yours ids all raise the same 404."""
    ticket = None
    if is_valid_id(ticket_id):
        with db.engine.connect() as conn:
            ticket = conn.execute(_SELECT_TICKET, {"tid": ticket_id}).first()
    if ticket is None or ticket.owner != owner:
        raise TicketNotFound("No such ticket.")
    return ticket


def read_state(ticket_id: str) -> TicketState | None:
    """Status, lease and (once finished) `done` id of a ticket, in one short read; None once it
    is deleted (with its conversation)."""
    with db.engine.connect() as conn:
        row = conn.execute(
            select(_tickets.c.status, _tickets.c.lease_expires_at, _tickets.c.last_seq).where(
                _tickets.c.id == ticket_id
            )
        ).first()
    return None if row is None else TicketState.of(row)


def active_tickets(conversation_id: str) -> list[Any]:
    """The conversation's pending and generating tickets: rows of id, status, lease."""
    with db.engine.connect() as conn:
        return list(conn.execute(
            select(_tickets.c.id, _tickets.c.status, _tickets.c.lease_expires_at).where(
                _tickets.c.conversation_id == conversation_id,
                _tickets.c.status.in_([str(status) for status in ACTIVE_STATUSES]),
            )
        ).all())


class Admission(Protocol):
    """What a claim runs in its transaction before it commits: reserve, or refuse by raising
    (`prepare` runs before the transaction, for what needs no lock)."""

    def prepare(self, request: dict[str, Any]) -> None: ...

    def admit(self, tx: sql.Transaction, ticket_id: str, owner: str, key_id: str | None,
              request: dict[str, Any]) -> None: ...


@contextmanager
def claiming(
    ticket_id: str, owner: str, worker_id: str, lease_seconds: float,
    admission: Admission | None = None,
) -> Iterator[dict[str, Any] | None]:
    """Atomically move `owner`'s pending ticket to running for `worker_id`.

    Yields the request to send upstream to the one winner, None to everyone else (including
    for unknown, not-yours, and already started tickets, which `load_ticket` then tells apart),
    inside the claim's transaction: it commits when the block ends and rolls back if the block
    raises. Until then it holds the ticket (SQLite's write lock, PostgreSQL's row lock), so the
    winner may send its upstream request first. The block must not wait: on SQLite, every other
    writer waits for it. The request is read before that, while the ticket is pending: its
    conversation cannot change until the ticket ends. An `admission` (limits) runs in the
    claim's transaction once it won: its refusal rolls the claim back (the ticket stays pending).
    """
    pending = pending_request(ticket_id, owner) if is_valid_id(ticket_id) else None
    if pending is None:
        yield None
        return
    request, key_id = pending
    if admission is not None:
        admission.prepare(request)
    now = time.time()
    with sql.Transaction(db.engine) as tx:
        claimed = tx.execute(
            _CLAIM_TICKET, (worker_id, now, now + lease_seconds, ticket_id, owner)
        ).rowcount
        if claimed == 1 and admission is not None:
            admission.admit(tx, ticket_id, owner, key_id, request)
        yield request if claimed == 1 else None


def pending_request(ticket_id: str, owner: str) -> tuple[dict[str, Any], str | None] | None:
    """What the ticket sends upstream and the key that made it, read in a transaction of its
    own (it writes nothing); None unless it is `owner`'s and pending."""
    with sql.Transaction(db.engine) as tx:
        row = tx.execute(_PENDING_REQUEST, (ticket_id, owner)).fetchone()
        if row is None:  # not a pending ticket of `owner` (or deleted meanwhile)
            return None
        return _upstream_request(tx, row), row[2]


def claimed_request(ticket_id: str, worker_id: str) -> dict[str, Any] | None:
    """What a ticket the queue just dispatched to `worker_id` sends upstream (its conversation
    cannot change until it ends); None once it is no longer that worker's (cancelled, deleted)."""
    with sql.Transaction(db.engine) as tx:
        row = tx.execute(_CLAIMED_REQUEST, (ticket_id, worker_id)).fetchone()
        return None if row is None else _upstream_request(tx, row)


def _upstream_request(tx: sql.Transaction, row: Any) -> dict[str, Any]:
    cap = current_app.config["MAX_HISTORY_MESSAGES"]
    return conversations.upstream_request(tx, row[0], sql.json_value(row[1]), cap)


def renew_leases(tx: sql.Transaction, worker_id: str, until: float) -> int:
    """Extend the lease of every ticket `worker_id` is generating and nobody cancelled; returns
    how many that is."""
    return int(tx.execute(_RENEW_LEASES, (until, worker_id, False)).rowcount)


def check_claims(
    tx: sql.Transaction, ticket_ids: Sequence[str], worker_id: str
) -> dict[str, Verdict]:
    """Of these tickets generated by `worker_id`, those to stop, and why."""
    verdicts: dict[str, Verdict] = {}
    for start in range(0, len(ticket_ids), 500):
        ids = ticket_ids[start : start + 500]
        rows = tx.execute(_SELECT_CLAIMS.format(sql.placeholders(len(ids))), ids).fetchall()
        verdicts.update(dict.fromkeys(set(ids) - {row[0] for row in rows}, Verdict.LOST))  # deleted
        for ticket_id, status, claimed_by, cancel_requested in rows:
            if status != TicketStatus.RUNNING or claimed_by != worker_id:
                verdicts[ticket_id] = Verdict.LOST
            elif cancel_requested:
                verdicts[ticket_id] = Verdict.CANCELLED
    return verdicts


def cancelled_claims(tx: sql.Transaction, worker_id: str) -> list[str]:
    """The tickets `worker_id` is generating whose cancel was requested."""
    return [row[0] for row in tx.execute(_SELECT_CANCELLED, (worker_id, True)).fetchall()]


def finish_generation(
    ticket_id: str, worker_id: str, outcome: Outcome, pending: Sequence[StoredEvent],
    text: str, done_seq: int, figures: usage.Figures, reserved: bool,
) -> bool:
    """Store the producer's last deltas, its `done` (id `done_seq`) and what it spent (and
    release its reservation, if it took one); False when the claim was lost (someone else
    wrote `done`)."""
    return _finish(ticket_id, _FINISH_BY_PRODUCER, worker_id, outcome, figures, reserved,
                   pending, text, done_seq) is not None


def reap_if_expired(ticket_id: str) -> int | None:
    """Fail a running ticket whose producer stopped renewing its lease (its worker died);
    returns the id of its `done`, or None if it was not expired."""
    return _finish(ticket_id, _FINISH_BY_REAPER, time.time(), WORKER_LOST, None, True)


def cancel_pending(ticket_id: str, reason: ErrorCode | None = None) -> int | None:
    """End a ticket nobody has started streaming, with `done` status cancelled (a queued one
    holds a reservation: released)."""
    return _finish(ticket_id, _FINISH_PENDING, None, cancelled_outcome(reason),
                   usage.NOTHING_SENT, True)


def end_for_deletion(ticket_id: str) -> int | None:
    """End a running ticket whose conversation is being deleted and whose producer did not end
    it in time (its worker is gone, or slow): cancelled, with its usage row made from the store,
    its reservation released. Its producer, if alive, then finds its claim lost."""
    return _finish(ticket_id, _FINISH_FOR_DELETION, None, CANCELLED, None, True)


def request_cancel(ticket_id: str, reason: ErrorCode | None = None) -> None:
    """Flag a running ticket for its producer's worker (whose writer polls the flag; a broker
    cancel is faster), or end a ticket nobody has started streaming. `reason` (when its owner
    did not ask) is what its `done` will say."""
    with db.engine.begin() as conn:
        conn.execute(
            update(_tickets)
            .where(_tickets.c.id == ticket_id, _tickets.c.status == TicketStatus.RUNNING)
            .values(cancel_requested=True, cancel_reason=reason and str(reason))
        )
    cancel_pending(ticket_id, reason)


def cancelled_outcome(reason: str | None) -> Outcome:
    """The outcome of a cancelled ticket: with an error saying why, unless its owner asked."""
    if reason not in _CANCEL_MESSAGES:
        return CANCELLED
    code = ErrorCode(reason)
    return Outcome(TicketStatus.CANCELLED, "cancelled",
                   error={"code": code, "message": _CANCEL_MESSAGES[code]})


def cancel_reason(ticket_id: str) -> str | None:
    """Why the ticket's cancel was asked (None: by its owner)."""
    with db.engine.connect() as conn:
        return conn.execute(
            select(_tickets.c.cancel_reason).where(_tickets.c.id == ticket_id)
        ).scalar()


def is_live(ticket_id: str, grace: float) -> bool:
    """Whether a ticket is unfinished, or finished less than `grace` seconds ago."""
    with db.engine.connect() as conn:
        row = conn.execute(select(_tickets.c.status, _tickets.c.finished_at)
                           .where(_tickets.c.id == ticket_id)).fetchone()
    return row is not None and (
        row.status in ACTIVE_STATUSES or (row.finished_at or 0) > time.time() - grace
    )


def running_tickets(owner: str, key_id: str | None = None, *, keyless: bool = False) -> list[str]:
    """The running tickets of `owner` (made with `key_id`, or with no key when `keyless`)."""
    query = select(_tickets.c.id).where(
        _tickets.c.status == TicketStatus.RUNNING, _tickets.c.owner == owner
    )
    if key_id is not None:
        query = query.where(_tickets.c.key_id == key_id)
    elif keyless:
        query = query.where(_tickets.c.key_id.is_(None))
    with db.engine.connect() as conn:
        return list(conn.execute(query).scalars())


def _finish(
    ticket_id: str, statement: str, holder: Any, outcome: Outcome,
    figures: usage.Figures | None, release: bool, pending: Sequence[StoredEvent] = (),
    text: str | None = None, done_seq: int | None = None,
) -> int | None:
    """Write `done` and the usage row (releasing the reservation when `release`) if `statement`
    (with `holder` as its last parameter, when not None) moves the ticket to its final status;
    returns the `done` id, or None if someone else won. `figures` None: the producer is gone
    (reaped), they are made from the store."""
    error = outcome.error
    params: list[Any] = [
        str(outcome.status), time.time(), outcome.finish_reason, sql.json_text(outcome.usage),
        str(error["code"]) if error else None, error["message"] if error else None, done_seq,
        ticket_id,
    ]
    if holder is not None:
        params.append(holder)
    with sql.Transaction(db.engine) as tx:
        claimed = tx.execute(statement, params).fetchone()
        if claimed is None:
            return None
        if done_seq is None:
            done_seq = events.last_stored_seq(tx, ticket_id) + 1
            tx.execute(_SET_DONE_SEQ, (done_seq, ticket_id))
        done_event = (done_seq, "done", outcome.done_payload())
        events.insert_events(tx, events.event_rows(ticket_id, [*pending, done_event]))
        conversation_id = claimed[0]
        if text is None:
            text = events.stored_text(tx, ticket_id)
        if figures is None:  # from the request as sent: before its answer joins the history
            figures = _spent_by_lost_producer(tx, ticket_id, conversation_id, outcome, text)
        if conversation_id is not None and (outcome.status != TicketStatus.CANCELLED or text):
            conversations.store_answer(tx, conversation_id, ticket_id, text, outcome.status)
        usage.record(tx, ticket_id, claimed[1:], outcome.status, figures, release)
    usage.count(claimed[3], figures)
    return done_seq


def _spent_by_lost_producer(
    tx: sql.Transaction, ticket_id: str, conversation_id: str | None, outcome: Outcome, text: str
) -> usage.Figures:
    """What a reaped ticket spent as far as the store knows: the request its claim sent (the
    conversation has not changed since), and the stored answer as what was generated."""
    options = sql.json_value(tx.execute(_STORED_OPTIONS, (ticket_id,)).fetchone()[0])
    cap = current_app.config["MAX_HISTORY_MESSAGES"]
    request = conversations.upstream_request(tx, conversation_id, options, cap)
    price = (current_app.config["MODEL_PRICES"] or {}).get(options.get("model"))
    spent = usage.Spent(None, request["messages"], text)
    return usage.measure(spent, outcome.status, text, price)
