"""Conversations: the history a new turn sends upstream, regenerate, and list, show, rename,
delete. Must not use `request` or `g`, nor claim or finish tickets (`tickets` does, and calls in
here to store a turn or an answer in the same transaction)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select

from . import sql
from .db import db
from .errors import ConversationNotFound, InvalidRequest
from .ids import is_valid_id
from .models import (
    ACTIVE_STATUSES,
    Conversation,
    Message,
    Reservation,
    Ticket,
    TicketEvent,
    TicketStatus,
)
from .validation import NewTicket

_conversations = Conversation.__table__

_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
)
_TOUCH_CONVERSATION = "UPDATE conversations SET updated_at = ? WHERE id = ?"
_INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, position, role, content, ticket_id, status, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_LAST_POSITION = "SELECT COALESCE(MAX(position), -1) FROM messages WHERE conversation_id = ?"
_LAST_PROMPT = (
    "SELECT role, position FROM messages WHERE conversation_id = ? AND role <> 'assistant' "
    "ORDER BY position DESC LIMIT 1"
)
_DROP_AFTER = "DELETE FROM messages WHERE conversation_id = ? AND position > ?"
# Earlier answers are sent upstream again, but not a failed one, nor an empty cancelled one.
_SENT_UPSTREAM = (
    "conversation_id = ? AND (status IS NULL OR status IN ('completed', 'cancelled')) "
    "AND (role <> 'assistant' OR content <> '')"
)
_NEWEST_SENT = (
    f"SELECT position, role, content FROM messages WHERE {_SENT_UPSTREAM} "
    "ORDER BY position DESC LIMIT ?"
)
_FIRST_SENT = (
    f"SELECT position, role, content FROM messages WHERE {_SENT_UPSTREAM} "
    "ORDER BY position LIMIT 1"
)
_PASSED_ON = ("model", "temperature", "max_tokens")


@dataclass
class Turn:
    """What one `POST /new` adds to its conversation, and the options it sends upstream."""

    conversation_id: str
    is_new: bool
    regenerate: bool
    options: dict[str, Any]
    added: list[dict[str, str]] = field(default_factory=list)


def owns(conversation_id: str, owner: str) -> bool:
    """Whether `owner` has a conversation with this id."""
    with db.engine.connect() as conn:
        found = conn.execute(
            select(_conversations.c.owner).where(_conversations.c.id == conversation_id)
        ).scalar()
    return found == owner


def plan_turn(conversation_id: str, is_new: bool, spec: NewTicket) -> Turn:
    """The turn `spec` adds to the conversation (new, or stored and not generating)."""
    options = {"model": spec.model, "temperature": spec.temperature,
               "max_tokens": spec.max_tokens, "system": spec.system}
    added = [] if spec.regenerate else (
        spec.messages or [{"role": "user", "content": spec.prompt or ""}])
    return Turn(conversation_id, is_new, spec.regenerate,
                {name: value for name, value in options.items() if value is not None}, added)


def create_conversation(tx: sql.Transaction, turn: Turn, owner: str, now: float) -> None:
    """Insert a new turn's conversation in `tx`."""
    tx.execute(_INSERT_CONVERSATION,
               (turn.conversation_id, owner, _title(turn.added[-1]["content"]), now, now))


def store_turn(tx: sql.Transaction, turn: Turn, now: float) -> None:
    """Write the turn's messages (or, to regenerate, drop the answers after the last prompt) in
    `tx`, which already holds the conversation's one unfinished ticket: nothing else writes in
    the conversation meanwhile."""
    if not turn.is_new:
        tx.execute(_TOUCH_CONVERSATION, (now, turn.conversation_id))
    if turn.regenerate:
        last = tx.execute(_LAST_PROMPT, (turn.conversation_id,)).fetchone()
        if last is None or last[0] != "user":
            raise InvalidRequest("There is no user message to regenerate an answer for.")
        tx.execute(_DROP_AFTER, (turn.conversation_id, last[1]))
        return
    first = 0 if turn.is_new else _last_position(tx, turn.conversation_id) + 1
    tx.executemany(_INSERT_MESSAGE, [
        (turn.conversation_id, first + offset, m["role"], m["content"], None, None, now)
        for offset, m in enumerate(turn.added)
    ])


def store_answer(
    tx: sql.Transaction, conversation_id: str, ticket_id: str, text: str, status: TicketStatus
) -> None:
    """Append a ticket's answer to its conversation in `tx`."""
    position = _last_position(tx, conversation_id) + 1
    tx.execute(_INSERT_MESSAGE, (
        conversation_id, position, "assistant", text, ticket_id, str(status), time.time(),
    ))


def upstream_request(
    tx: sql.Transaction, conversation_id: str | None, options: dict[str, Any], cap: int
) -> dict[str, Any]:
    """What a ticket with these stored options sends upstream: at most `cap` messages, the
    system message (the ticket's, else its conversation's first message if it is one), then the
    conversation's newest. A ticket without a conversation sends the messages stored with it."""
    system = options.get("system")
    if conversation_id is None:
        history = options.get("messages", [])
    else:
        newest = tx.execute(_NEWEST_SENT, (conversation_id, cap)).fetchall()[::-1]
        if len(newest) < cap:  # the whole conversation
            first = newest[0] if newest else None
        else:
            first = tx.execute(_FIRST_SENT, (conversation_id,)).fetchone()
        if system is None and first is not None and first[1] == "system":
            system = first[2]
            newest = [row for row in newest if row[0] != first[0]]
        history = [{"role": role, "content": content} for _, role, content in newest]
    leading = [] if system is None else [{"role": "system", "content": system}]
    request = {name: options[name] for name in _PASSED_ON if name in options}
    request["messages"] = leading + history[-max(cap - len(leading), 1):]
    return request


def load_conversation(conversation_id: str, owner: str) -> Conversation:
    """Return the caller's conversation, or a 404 that does not tell unknown from not-yours."""
    conversation = (
        db.session.get(Conversation, conversation_id) if is_valid_id(conversation_id) else None
    )
    if conversation is None or conversation.owner != owner:
        raise ConversationNotFound("No such conversation.")
    return conversation


def list_conversations(owner: str, limit: int = 500) -> list[dict[str, Any]]:
    """The owner's conversations, most recently updated first."""
    rows = db.session.scalars(
        select(Conversation)
        .where(Conversation.owner == owner)
        .order_by(Conversation.updated_at.desc())
        .limit(limit)
    )
    return [summary(c) for c in rows]


def conversation_detail(conversation: Conversation) -> tuple[dict[str, Any], str | None]:
    """The conversation with its messages (a failed answer with its error), and the id of the
    ticket still generating in it, if any."""
    ticket_rows = db.session.execute(
        select(Ticket.id, Ticket.status, Ticket.error_code, Ticket.error_message).where(
            Ticket.conversation_id == conversation.id
        )
    ).all()
    errors = {
        row.id: {"code": row.error_code, "message": row.error_message}
        for row in ticket_rows
        if row.error_code
    }
    active = next((row.id for row in ticket_rows if row.status in ACTIVE_STATUSES), None)
    messages: list[dict[str, Any]] = []
    for message in db.session.scalars(
        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.position)
    ):
        item: dict[str, Any] = {
            "role": message.role, "content": message.content,
            "ticket_id": message.ticket_id, "status": message.status,
        }
        if message.ticket_id in errors:
            item["error"] = errors[message.ticket_id]
        messages.append(item)
    return {**summary(conversation), "messages": messages}, active


def rename_conversation(conversation: Conversation, title: str) -> None:
    """Give a conversation a new title (1 to 200 characters once stripped)."""
    title = title.strip()
    if not title or len(title) > 200:
        raise InvalidRequest("Send JSON `{\"title\": ...}` with 1 to 200 characters.")
    conversation.title = title
    db.session.commit()


def delete_conversation(conversation: Conversation) -> bool:
    """Delete a conversation with its messages, tickets and their events; False (nothing
    deleted) while one of its tickets is generating, which must first end and leave its usage
    row (`deletion.delete_conversation`)."""
    # The tickets first: on SQLite this takes the write lock; on PostgreSQL a claim racing it
    # holds its ticket's row, which then is running and stays.
    deleted = db.session.scalars(
        delete(Ticket)
        .where(Ticket.conversation_id == conversation.id, Ticket.status != TicketStatus.RUNNING)
        .returning(Ticket.id)
        .execution_options(synchronize_session=False)
    ).all()
    if db.session.scalar(select(func.count()).where(Ticket.conversation_id == conversation.id)):
        db.session.rollback()
        return False
    if deleted:  # a queued ticket holds a reservation before it runs
        db.session.execute(delete(Reservation).where(Reservation.ticket_id.in_(deleted)))
    db.session.execute(delete(TicketEvent).where(TicketEvent.ticket_id.in_(deleted)))
    db.session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    db.session.delete(conversation)
    db.session.commit()
    return True


def summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }


def _last_position(tx: sql.Transaction, conversation_id: str) -> int:
    return int(tx.execute(_LAST_POSITION, (conversation_id,)).fetchone()[0])


def _title(text: str) -> str:
    words = " ".join(text.split())
    return words[:60] + ("…" if len(words) > 60 else "") or "New chat"
