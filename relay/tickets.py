"""Tickets in the store: create, load with an owner check, claim, store events, finish, cancel.

Must not use `request` or `g`. The statements on the hot paths (create, claim, event batches,
leases, finish) are plain SQL in short `sql.Transaction`s; reads and the rarer writes go through
SQLAlchemy Core, and only the conversation views' rename and delete use the ORM session.
Read-then-write paths start with their write (claim, finish), so SQLite takes the write lock
first and never has to upgrade a read snapshot.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, select, update

from . import sql
from .db import db
from .errors import Conflict, ConversationNotFound, InvalidRequest, TicketNotFound
from .models import FINISHED_STATUSES, Conversation, Message, Ticket, TicketEvent

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_tickets = Ticket.__table__
_events = TicketEvent.__table__
_messages = Message.__table__
_conversations = Conversation.__table__

_SELECT_TICKET = select(_tickets).where(_tickets.c.id == bindparam("tid"))

# The hot paths' statements, as plain SQL (sql.py says why). `status = 'running'` is written
# out, so that the planner can use the partial index of running claims.
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
)
_TOUCH_CONVERSATION = "UPDATE conversations SET updated_at = ? WHERE id = ?"
_INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, position, role, content, ticket_id, status, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TICKET = (
    "INSERT INTO tickets (id, owner, conversation_id, request, model, status, last_seq, "
    "cancel_requested, created_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
)
_CLAIM_TICKET = (
    "UPDATE tickets SET status = 'running', claimed_by = ?, started_at = ?, lease_expires_at = ? "
    "WHERE id = ? AND owner = ? AND status = 'pending' RETURNING request"
)
_RENEW_LEASES = (
    "UPDATE tickets SET lease_expires_at = ? "
    "WHERE claimed_by = ? AND status = 'running' AND cancel_requested = ?"
)
_SELECT_CANCELLED = (
    "SELECT id FROM tickets WHERE claimed_by = ? AND status = 'running' AND cancel_requested = ?"
)
_SELECT_CLAIMS = "SELECT id, status, claimed_by, cancel_requested FROM tickets WHERE id IN ({})"
_INSERT_EVENTS = "INSERT INTO ticket_events (ticket_id, seq, kind, data) VALUES (?, ?, ?, ?)"
_FINISH = (
    "UPDATE tickets SET status = ?, finished_at = ?, finish_reason = ?, usage = ?, "
    "error_code = ?, error_message = ?, lease_expires_at = NULL, "
    "last_seq = COALESCE(?, last_seq) WHERE id = ? AND {} RETURNING conversation_id"
)
# Who may write `done`: the producer holding the claim, the reaper of an expired lease, or a
# cancel of a ticket nobody started.
_FINISH_BY_PRODUCER = _FINISH.format("status = 'running' AND claimed_by = ?")
_FINISH_BY_REAPER = _FINISH.format("status = 'running' AND lease_expires_at < ?")
_FINISH_PENDING = _FINISH.format("status = 'pending'")
_SET_DONE_SEQ = "UPDATE tickets SET last_seq = ? WHERE id = ?"
_LAST_STORED_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM ticket_events WHERE ticket_id = ?"
_STORED_DELTAS = (
    "SELECT data FROM ticket_events WHERE ticket_id = ? AND kind = 'delta' ORDER BY seq"
)
_LAST_POSITION = "SELECT COALESCE(MAX(position), -1) FROM messages WHERE conversation_id = ?"

StoredEvent = tuple[int, str, str]
"""(seq, kind, data): kind is `delta` or `done`, data the JSON text of the event's payload."""

# Consecutive deltas are stored as one row, a run: its `seq` is the id of the run's last event
# and its `data` the events' JSON texts joined by newlines (JSON text has no raw line break). A
# row per token was the largest single cost of relaying an answer. A row of one event is a run of
# one, as every row was before runs.
_MAX_RUN = 256


@dataclass(frozen=True)
class NewTicket:
    """A validated `POST /new` body."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    conversation_id: str | None
    model: str
    system: str | None
    temperature: float | None
    max_tokens: int | None
    regenerate: bool


@dataclass(frozen=True)
class CreatedTicket:
    id: str
    conversation_id: str


@dataclass(frozen=True)
class TicketState:
    """The columns a stream needs to decide what to do next."""

    status: str
    lease_expires_at: float | None
    done_seq: int


def new_id() -> str:
    """An unguessable URL-safe id (192 random bits)."""
    return secrets.token_urlsafe(24)


def is_valid_id(value: str) -> bool:
    return bool(_ID_PATTERN.match(value))


def create_ticket(owner: str, spec: NewTicket) -> CreatedTicket:
    """Store the request (and its conversation turn) as a pending ticket owned by `owner`."""
    now = time.time()
    if spec.conversation_id is not None:
        conversation_id = spec.conversation_id
        with db.engine.connect() as conn:
            found = is_valid_id(conversation_id) and conn.execute(
                select(_conversations.c.owner).where(_conversations.c.id == conversation_id)
            ).scalar() == owner
        if not found:
            raise ConversationNotFound("No such conversation.")
        _settle_active_tickets(conversation_id)
        with db.engine.connect() as conn:
            history = _history(conn, conversation_id)
    elif spec.regenerate:
        raise InvalidRequest("`regenerate` needs the `conversation_id` to regenerate in.")
    else:
        conversation_id, history = new_id(), []

    dropped: list[int] = []
    added: list[dict[str, Any]] = []
    if spec.regenerate:
        while history and history[-1]["role"] == "assistant":
            dropped.append(history.pop()["id"])
        if not history or history[-1]["role"] != "user":
            raise InvalidRequest("There is no user message to regenerate an answer for.")
    else:
        turns = spec.messages or [{"role": "user", "content": spec.prompt or ""}]
        position = history[-1]["position"] + 1 if history else 0
        added = [
            {"conversation_id": conversation_id, "position": position + offset,
             "role": turn["role"], "content": turn["content"], "ticket_id": None,
             "status": None, "created_at": now}
            for offset, turn in enumerate(turns)
        ]
        history += added

    upstream_messages = [{"role": "system", "content": spec.system}] if spec.system else []
    upstream_messages += [
        {"role": m["role"], "content": m["content"]}
        for m in history
        if m["status"] in (None, "completed", "cancelled")
        and (m["content"] or m["role"] != "assistant")
    ]
    request: dict[str, Any] = {"model": spec.model, "messages": upstream_messages}
    if spec.temperature is not None:
        request["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        request["max_tokens"] = spec.max_tokens
    ticket_id = new_id()
    with sql.Transaction(db.engine) as tx:
        if spec.conversation_id is None:
            tx.execute(_INSERT_CONVERSATION,
                       (conversation_id, owner, _title(added[-1]["content"]), now, now))
        else:
            tx.execute(_TOUCH_CONVERSATION, (now, conversation_id))
        if dropped:
            tx.execute(f"DELETE FROM messages WHERE id IN ({sql.placeholders(len(dropped))})",
                       dropped)
        tx.executemany(_INSERT_MESSAGE, [
            (m["conversation_id"], m["position"], m["role"], m["content"], None, None, now)
            for m in added
        ])
        tx.execute(_INSERT_TICKET, (
            ticket_id, owner, conversation_id, sql.json_text(request), spec.model, False, now,
        ))
    return CreatedTicket(ticket_id, conversation_id)


def _history(conn: Any, conversation_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(_messages.c.id, _messages.c.position, _messages.c.role, _messages.c.content,
               _messages.c.status)
        .where(_messages.c.conversation_id == conversation_id)
        .order_by(_messages.c.position)
    ).mappings()
    return [dict(row) for row in rows]


def _title(text: str) -> str:
    words = " ".join(text.split())
    return words[:60] + ("…" if len(words) > 60 else "") or "New chat"


def _settle_active_tickets(conversation_id: str) -> None:
    """Refuse a new turn while one is generating; cancel tickets that were never opened."""
    for ticket in active_tickets(conversation_id):
        expired = (ticket.lease_expires_at or 0) < time.time()
        if ticket.status == "running" and not (expired and reap_if_expired(ticket.id)):
            raise Conflict(
                "This conversation is still generating an answer; wait for it or cancel it.",
                code="conversation_busy",
            )
        if ticket.status == "pending":
            cancel_ticket(ticket.id)


def load_ticket(ticket_id: str, owner: str) -> Any:
    """The caller's ticket row; unknown, malformed and not-yours ids all raise the same 404."""
    ticket = None
    if is_valid_id(ticket_id):
        with db.engine.connect() as conn:
            ticket = conn.execute(_SELECT_TICKET, {"tid": ticket_id}).first()
    if ticket is None or ticket.owner != owner:
        raise TicketNotFound("No such ticket.")
    return ticket


def load_conversation(conversation_id: str, owner: str) -> Conversation:
    """Return the caller's conversation, or a 404 that does not tell unknown from not-yours."""
    conversation = (
        db.session.get(Conversation, conversation_id) if is_valid_id(conversation_id) else None
    )
    if conversation is None or conversation.owner != owner:
        raise ConversationNotFound("No such conversation.")
    return conversation


def conversation_messages(conversation_id: str) -> list[Message]:
    return list(
        db.session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.position)
        )
    )


def read_state(ticket_id: str) -> TicketState | None:
    """Status, lease and (once finished) `done` id of a ticket, in one short read; None once it
    is deleted (with its conversation)."""
    with db.engine.connect() as conn:
        row = conn.execute(
            select(_tickets.c.status, _tickets.c.lease_expires_at, _tickets.c.last_seq).where(
                _tickets.c.id == ticket_id
            )
        ).first()
    return None if row is None else TicketState(row.status, row.lease_expires_at, row.last_seq)


@contextmanager
def claiming(
    ticket_id: str, owner: str, worker_id: str, lease_seconds: float
) -> Iterator[dict[str, Any] | None]:
    """Atomically move `owner`'s pending ticket to running for `worker_id`.

    Yields the stored request to the one winner, None to everyone else (including for unknown,
    not-yours, and already started tickets, which `load_ticket` then tells apart), inside the
    claim's transaction: it commits when the block ends and rolls back if the block raises.
    Until then it holds the ticket (SQLite's write lock, PostgreSQL's row lock), so the winner
    may send its upstream request first. The block must not wait: on SQLite, every other writer
    waits for it.
    """
    if not is_valid_id(ticket_id):
        yield None
        return
    now = time.time()
    with sql.Transaction(db.engine) as tx:
        row = tx.execute(
            _CLAIM_TICKET, (worker_id, now, now + lease_seconds, ticket_id, owner)
        ).fetchone()
        yield None if row is None else sql.json_value(row[0])


def check_claims(
    tx: sql.Transaction, ticket_ids: Sequence[str], worker_id: str
) -> dict[str, str]:
    """Of these tickets generated by `worker_id`, those to stop: `cancelled` or `lost`."""
    verdicts: dict[str, str] = {}
    for start in range(0, len(ticket_ids), 500):
        ids = ticket_ids[start : start + 500]
        rows = tx.execute(_SELECT_CLAIMS.format(sql.placeholders(len(ids))), ids).fetchall()
        verdicts.update(dict.fromkeys(set(ids) - {row[0] for row in rows}, "lost"))  # deleted
        for ticket_id, status, claimed_by, cancel_requested in rows:
            if status != "running" or claimed_by != worker_id:
                verdicts[ticket_id] = "lost"
            elif cancel_requested:
                verdicts[ticket_id] = "cancelled"
    return verdicts


def cancelled_claims(tx: sql.Transaction, worker_id: str) -> list[str]:
    """The tickets `worker_id` is generating whose cancel was requested."""
    return [row[0] for row in tx.execute(_SELECT_CANCELLED, (worker_id, True)).fetchall()]


def insert_events(tx: sql.Transaction, rows: list[tuple[str, int, str, str]]) -> None:
    """Insert event rows (from `event_rows`) with one executemany."""
    tx.executemany(_INSERT_EVENTS, rows)


def renew_leases(tx: sql.Transaction, worker_id: str, until: float) -> int:
    """Extend the lease of every ticket `worker_id` is generating and nobody cancelled; returns
    how many that is."""
    return int(tx.execute(_RENEW_LEASES, (until, worker_id, False)).rowcount)


def done_payload(
    status: str,
    finish_reason: str | None,
    usage: dict[str, Any] | None,
    error: dict[str, str] | None,
) -> str:
    """The JSON text of a `done` event."""
    payload: dict[str, Any] = {"status": status, "finish_reason": finish_reason,
                               "usage": usage or {}}
    if error:
        payload["error"] = error
    return json.dumps(payload, ensure_ascii=False)


def finish_ticket(
    ticket_id: str,
    *,
    status: str,
    pending_events: Sequence[StoredEvent] = (),
    text: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
    worker_id: str | None = None,
    expired_before: float | None = None,
    done_seq: int | None = None,
) -> int | None:
    """Write the remaining deltas and the one `done` event; returns its seq, or None if lost.

    The ticket must still be running under `worker_id` (the producer), or pending (a cancel
    before anyone streamed), or running with a lease that expired before `expired_before` (the
    reaper). Whoever's UPDATE wins writes `done`; everyone else gets None.
    """
    if status not in FINISHED_STATUSES:
        raise ValueError(f"not a final status: {status}")
    now = time.time()
    params: list[Any] = [
        status, now, finish_reason, sql.json_text(usage), error["code"] if error else None,
        error["message"] if error else None, done_seq, ticket_id,
    ]
    if worker_id is not None:
        statement = _FINISH_BY_PRODUCER
        params.append(worker_id)
    elif expired_before is not None:
        statement = _FINISH_BY_REAPER
        params.append(expired_before)
    else:
        statement = _FINISH_PENDING
    with sql.Transaction(db.engine) as tx:
        claimed = tx.execute(statement, params).fetchone()
        if claimed is None:
            return None
        if done_seq is None:
            done_seq = _last_stored_seq(tx, ticket_id) + 1
            tx.execute(_SET_DONE_SEQ, (done_seq, ticket_id))
        done_event = (done_seq, "done", done_payload(status, finish_reason, usage, error))
        insert_events(tx, event_rows(ticket_id, [*pending_events, done_event]))
        conversation_id = claimed[0]
        if text is None:
            text = _stored_text(tx, ticket_id)
        if conversation_id is not None and (status != "cancelled" or text):
            position = tx.execute(_LAST_POSITION, (conversation_id,)).fetchone()[0] + 1
            tx.execute(_INSERT_MESSAGE, (
                conversation_id, position, "assistant", text, ticket_id, status, now,
            ))
    return done_seq


def event_rows(ticket_id: str, events: Sequence[StoredEvent]) -> list[tuple[str, int, str, str]]:
    """Rows for `insert_events`: each run of consecutive deltas in one row, `done` in its own."""
    rows: list[tuple[str, int, str, str]] = []
    run: list[str] = []
    last = 0
    for seq, kind, data in events:
        if run and (kind != "delta" or seq != last + 1 or len(run) >= _MAX_RUN):
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


def events_after(ticket_id: str, after_seq: int) -> list[StoredEvent]:
    """Stored events with seq > after_seq, in order."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(_events.c.seq, _events.c.kind, _events.c.data)
            .where(_events.c.ticket_id == ticket_id, _events.c.seq > after_seq)
            .order_by(_events.c.seq)
        ).all()
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


def _last_stored_seq(tx: sql.Transaction, ticket_id: str) -> int:
    return int(tx.execute(_LAST_STORED_SEQ, (ticket_id,)).fetchone()[0])


def _stored_text(tx: sql.Transaction, ticket_id: str) -> str:
    rows = tx.execute(_STORED_DELTAS, (ticket_id,)).fetchall()
    return "".join(orjson.loads(text)["delta"] for row in rows for text in row[0].split("\n"))


def ticket_progress(ticket_id: str) -> tuple[str, int]:
    """The answer text stored so far and the id of the last stored event."""
    with sql.Transaction(db.engine) as tx:
        return _stored_text(tx, ticket_id), _last_stored_seq(tx, ticket_id)


def request_cancel(ticket_id: str) -> None:
    """Flag a running ticket for its producer's worker (whose writer polls the flag; a broker
    cancel is faster), or end a ticket nobody has started streaming."""
    with db.engine.begin() as conn:
        conn.execute(
            update(_tickets)
            .where(_tickets.c.id == ticket_id, _tickets.c.status == "running")
            .values(cancel_requested=True)
        )
    cancel_ticket(ticket_id)


def cancel_ticket(ticket_id: str) -> int | None:
    """End a ticket nobody has started streaming, with `done` status cancelled."""
    return finish_ticket(ticket_id, status="cancelled", finish_reason="cancelled")


def reap_if_expired(ticket_id: str) -> int | None:
    """Fail a running ticket whose producer stopped renewing its lease (its worker died)."""
    return finish_ticket(
        ticket_id, status="failed", expired_before=time.time(),
        error={"code": "worker_lost", "message": "The worker generating this answer stopped."},
    )


def active_tickets(conversation_id: str) -> list[Any]:
    """The conversation's pending and generating tickets: rows of id, status, lease."""
    with db.engine.connect() as conn:
        return list(conn.execute(
            select(_tickets.c.id, _tickets.c.status, _tickets.c.lease_expires_at).where(
                _tickets.c.conversation_id == conversation_id,
                _tickets.c.status.in_(("pending", "running")),
            )
        ).all())


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation with its messages, tickets and their events."""
    ticket_ids = select(Ticket.id).where(Ticket.conversation_id == conversation.id)
    db.session.execute(delete(TicketEvent).where(TicketEvent.ticket_id.in_(ticket_ids)))
    db.session.execute(delete(Ticket).where(Ticket.conversation_id == conversation.id))
    db.session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    db.session.delete(conversation)
    db.session.commit()
