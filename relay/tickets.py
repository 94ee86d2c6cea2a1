"""Tickets in the store: create, load with an owner check, claim, store events, finish, cancel.

Must not use `request` or `g`. Tickets and events go through short Core transactions on
`db.engine` with statements built once; read-then-write paths start with their write (claim,
finish), so SQLite takes the write lock first and never has to upgrade a read snapshot. Only the
conversation views' rename and delete use the ORM session.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, delete, func, insert, select, update

from .db import db
from .errors import Conflict, ConversationNotFound, InvalidRequest, TicketNotFound
from .models import FINISHED_STATUSES, Conversation, Message, Ticket, TicketEvent

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_tickets = Ticket.__table__
_events = TicketEvent.__table__
_messages = Message.__table__
_conversations = Conversation.__table__

# Statements on the hot paths are built once, so SQLAlchemy compiles and caches them once.
_INSERT_CONVERSATION = insert(_conversations)
_TOUCH_CONVERSATION = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("cid"))
    .values(updated_at=bindparam("updated_at"))
)
_INSERT_MESSAGE = insert(_messages)
_INSERT_TICKET = insert(_tickets)
_SELECT_TICKET = select(_tickets).where(_tickets.c.id == bindparam("tid"))
_CLAIM_TICKET = (
    update(_tickets)
    .where(
        _tickets.c.id == bindparam("tid"), _tickets.c.owner == bindparam("for_owner"),
        _tickets.c.status == "pending",
    )
    .values(
        status="running", claimed_by=bindparam("worker"), started_at=bindparam("now"),
        lease_expires_at=bindparam("until"),
    )
    .returning(_tickets.c.request)
)
_SELECT_CLAIMS = select(
    _tickets.c.id, _tickets.c.status, _tickets.c.claimed_by, _tickets.c.cancel_requested
).where(_tickets.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_CANCELLED = select(_tickets.c.id).where(
    _tickets.c.claimed_by == bindparam("worker"), _tickets.c.status == "running",
    _tickets.c.cancel_requested.is_(True),
)
_RENEW_LEASES = (
    update(_tickets)
    .where(
        _tickets.c.claimed_by == bindparam("worker"), _tickets.c.status == "running",
        _tickets.c.cancel_requested.is_(False),
    )
    .values(lease_expires_at=bindparam("until"))
)


def _finish_statement(*condition: Any) -> Any:
    return (
        update(_tickets)
        .where(_tickets.c.id == bindparam("tid"), *condition)
        .values(
            status=bindparam("b_status"), finished_at=bindparam("b_now"),
            finish_reason=bindparam("b_finish_reason"),
            usage=bindparam("b_usage", type_=_tickets.c.usage.type),
            error_code=bindparam("b_error_code"), error_message=bindparam("b_error_message"),
            lease_expires_at=None,
            last_seq=func.coalesce(bindparam("b_last_seq", type_=Integer), _tickets.c.last_seq),
        )
        .returning(_tickets.c.conversation_id)
    )


# Who may write `done`: the producer holding the claim, the reaper of an expired lease, or a
# cancel of a ticket nobody started.
_FINISH_BY_PRODUCER = _finish_statement(
    _tickets.c.status == "running", _tickets.c.claimed_by == bindparam("b_worker")
)
_FINISH_BY_REAPER = _finish_statement(
    _tickets.c.status == "running", _tickets.c.lease_expires_at < bindparam("b_expired_before")
)
_FINISH_PENDING = _finish_statement(_tickets.c.status == "pending")
_LAST_ANSWER_POSITION = select(func.coalesce(func.max(_messages.c.position), -1)).where(
    _messages.c.conversation_id == bindparam("cid")
)

StoredEvent = tuple[int, str, str]
"""(seq, kind, data): kind is `delta` or `done`, data the JSON text of the event's payload."""


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
    with db.engine.begin() as conn:
        if spec.conversation_id is None:
            conn.execute(_INSERT_CONVERSATION, {
                "id": conversation_id, "owner": owner, "title": _title(added[-1]["content"]),
                "created_at": now, "updated_at": now,
            })
        else:
            conn.execute(_TOUCH_CONVERSATION, {"cid": conversation_id, "updated_at": now})
        if dropped:
            conn.execute(delete(_messages).where(_messages.c.id.in_(dropped)))
        if added:
            conn.execute(_INSERT_MESSAGE, added)
        conn.execute(_INSERT_TICKET, {
            "id": ticket_id, "owner": owner, "conversation_id": conversation_id,
            "request": request, "model": spec.model, "status": "pending", "last_seq": 0,
            "cancel_requested": False, "created_at": now,
        })
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
    with db.engine.connect() as conn:
        active = conn.execute(
            select(_tickets.c.id, _tickets.c.status, _tickets.c.lease_expires_at).where(
                _tickets.c.conversation_id == conversation_id,
                _tickets.c.status.in_(("pending", "running")),
            )
        ).all()
    for ticket in active:
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


def read_state(ticket_id: str) -> TicketState:
    """Status, lease and (once finished) `done` id of a ticket, in one short read."""
    with db.engine.connect() as conn:
        row = conn.execute(
            select(_tickets.c.status, _tickets.c.lease_expires_at, _tickets.c.last_seq).where(
                _tickets.c.id == ticket_id
            )
        ).one()
    return TicketState(row.status, row.lease_expires_at, row.last_seq)


def claim_ticket(
    ticket_id: str, owner: str, worker_id: str, lease_seconds: float
) -> dict[str, Any] | None:
    """Atomically move `owner`'s pending ticket to running for `worker_id`.

    Returns the stored request to the one winner, None to everyone else (including for unknown,
    not-yours, and already started tickets, which `load_ticket` then tells apart).
    """
    if not is_valid_id(ticket_id):
        return None
    now = time.time()
    with db.engine.begin() as conn:
        return conn.execute(_CLAIM_TICKET, {
            "tid": ticket_id, "for_owner": owner, "worker": worker_id, "now": now,
            "until": now + lease_seconds,
        }).scalar()


def check_claims(conn: Any, ticket_ids: Sequence[str], worker_id: str) -> dict[str, str]:
    """Of these tickets generated by `worker_id`, those to stop: `cancelled` or `lost`."""
    verdicts: dict[str, str] = {}
    for start in range(0, len(ticket_ids), 500):
        rows = conn.execute(_SELECT_CLAIMS, {"ids": ticket_ids[start : start + 500]}).all()
        for row in rows:
            if row.status != "running" or row.claimed_by != worker_id:
                verdicts[row.id] = "lost"
            elif row.cancel_requested:
                verdicts[row.id] = "cancelled"
    return verdicts


def cancelled_claims(conn: Any, worker_id: str) -> list[str]:
    """The tickets `worker_id` is generating whose cancel was requested."""
    return list(conn.execute(_SELECT_CANCELLED, {"worker": worker_id}).scalars())


def insert_events(conn: Any, rows: list[tuple[str, int, str, str]]) -> None:
    """Insert event rows (from `event_rows`) with one executemany of the driver.

    The driver's own statement, because SQLAlchemy's per-row parameter processing cost more than
    the insert itself for the hundreds of rows a batch can hold.
    """
    if rows:
        conn.exec_driver_sql(_insert_events_sql(conn.dialect.paramstyle), rows)


@functools.cache
def _insert_events_sql(paramstyle: str) -> str:
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}[paramstyle]
    return (f"INSERT INTO {_events.name} (ticket_id, seq, kind, data) "
            f"VALUES ({marker}, {marker}, {marker}, {marker})")


def renew_leases(conn: Any, worker_id: str, until: float) -> int:
    """Extend the lease of every ticket `worker_id` is generating and nobody cancelled; returns
    how many that is."""
    return int(conn.execute(_RENEW_LEASES, {"worker": worker_id, "until": until}).rowcount)


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
    params: dict[str, Any] = {
        "tid": ticket_id, "b_status": status, "b_now": now, "b_finish_reason": finish_reason,
        "b_usage": usage, "b_error_code": error["code"] if error else None,
        "b_error_message": error["message"] if error else None, "b_last_seq": done_seq,
    }
    if worker_id is not None:
        statement, params["b_worker"] = _FINISH_BY_PRODUCER, worker_id
    elif expired_before is not None:
        statement, params["b_expired_before"] = _FINISH_BY_REAPER, expired_before
    else:
        statement = _FINISH_PENDING
    with db.engine.begin() as conn:
        claimed = conn.execute(statement, params).first()
        if claimed is None:
            return None
        if done_seq is None:
            done_seq = _last_stored_seq(conn, ticket_id) + 1
            conn.execute(
                update(_tickets).where(_tickets.c.id == ticket_id).values(last_seq=done_seq)
            )
        done_event = (done_seq, "done", done_payload(status, finish_reason, usage, error))
        insert_events(conn, event_rows(ticket_id, [*pending_events, done_event]))
        conversation_id = claimed.conversation_id
        if text is None:
            text = _stored_text(conn, ticket_id)
        if conversation_id is not None and (status != "cancelled" or text):
            _append_answer(conn, conversation_id, ticket_id, text, status, now)
    return done_seq


def _append_answer(
    conn: Any, conversation_id: str, ticket_id: str, text: str, status: str, now: float
) -> None:
    position = conn.execute(_LAST_ANSWER_POSITION, {"cid": conversation_id}).scalar()
    conn.execute(_INSERT_MESSAGE, {
        "conversation_id": conversation_id, "position": position + 1, "role": "assistant",
        "content": text, "ticket_id": ticket_id, "status": status, "created_at": now,
    })


def event_rows(ticket_id: str, events: Sequence[StoredEvent]) -> list[tuple[str, int, str, str]]:
    """Rows for `insert_events`."""
    return [(ticket_id, seq, kind, data) for seq, kind, data in events]


def events_after(ticket_id: str, after_seq: int) -> list[StoredEvent]:
    """Stored events with seq > after_seq, in order."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(_events.c.seq, _events.c.kind, _events.c.data)
            .where(_events.c.ticket_id == ticket_id, _events.c.seq > after_seq)
            .order_by(_events.c.seq)
        ).all()
    return [(row.seq, row.kind, row.data) for row in rows]


def _last_stored_seq(conn: Any, ticket_id: str) -> int:
    return conn.execute(
        select(func.coalesce(func.max(_events.c.seq), 0)).where(_events.c.ticket_id == ticket_id)
    ).scalar()


def _stored_text(conn: Any, ticket_id: str) -> str:
    rows = conn.execute(
        select(_events.c.data)
        .where(_events.c.ticket_id == ticket_id, _events.c.kind == "delta")
        .order_by(_events.c.seq)
    ).scalars()
    return "".join(json.loads(data)["delta"] for data in rows)


def ticket_progress(ticket_id: str) -> tuple[str, int]:
    """The answer text stored so far and the id of the last stored event."""
    with db.engine.connect() as conn:
        return _stored_text(conn, ticket_id), _last_stored_seq(conn, ticket_id)


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


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation with its messages, tickets and their events."""
    ticket_ids = select(Ticket.id).where(Ticket.conversation_id == conversation.id)
    db.session.execute(delete(TicketEvent).where(TicketEvent.ticket_id.in_(ticket_ids)))
    db.session.execute(delete(Ticket).where(Ticket.conversation_id == conversation.id))
    db.session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    db.session.delete(conversation)
    db.session.commit()
