"""Conversations: the history a new turn sends upstream, regenerate, and list, show, rename,
delete. Must not use `request` or `g`, nor claim or finish tickets (`tickets` does, and calls in
here to store a turn or an answer in the same transaction)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select

from . import sql
from .db import db
from .errors import ConversationNotFound, InvalidRequest
from .ids import is_valid_id
from .models import ACTIVE_STATUSES, Conversation, Message, Ticket, TicketEvent, TicketStatus
from .validation import NewTicket

_messages = Message.__table__
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
# Earlier answers sent upstream again: not a failed one, nor an empty cancelled one.
_ANSWERS_KEPT = (None, TicketStatus.COMPLETED, TicketStatus.CANCELLED)


@dataclass
class Turn:
    """What one `POST /new` adds to its conversation, and the request it sends upstream."""

    conversation_id: str
    is_new: bool
    request: dict[str, Any]
    first_position: int = 0  # of the messages added
    added: list[dict[str, str]] = field(default_factory=list)
    dropped_message_ids: list[int] = field(default_factory=list)


def owns(conversation_id: str, owner: str) -> bool:
    """Whether `owner` has a conversation with this id."""
    with db.engine.connect() as conn:
        found = conn.execute(
            select(_conversations.c.owner).where(_conversations.c.id == conversation_id)
        ).scalar()
    return found == owner


def plan_turn(conversation_id: str, is_new: bool, spec: NewTicket) -> Turn:
    """The turn `spec` adds to the conversation (new, or stored and not generating)."""
    history = [] if is_new else _history(conversation_id)
    turn = Turn(conversation_id, is_new, {})
    if spec.regenerate:
        while history and history[-1]["role"] == "assistant":
            turn.dropped_message_ids.append(history.pop()["id"])
        if not history or history[-1]["role"] != "user":
            raise InvalidRequest("There is no user message to regenerate an answer for.")
    else:
        turn.added = spec.messages or [{"role": "user", "content": spec.prompt or ""}]
        turn.first_position = history[-1]["position"] + 1 if history else 0
        history += [{**message, "status": None} for message in turn.added]
    messages = [{"role": "system", "content": spec.system}] if spec.system else []
    messages += [
        {"role": m["role"], "content": m["content"]}
        for m in history
        if m["status"] in _ANSWERS_KEPT and (m["content"] or m["role"] != "assistant")
    ]
    turn.request = {"model": spec.model, "messages": messages}
    if spec.temperature is not None:
        turn.request["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        turn.request["max_tokens"] = spec.max_tokens
    return turn


def store_turn(tx: sql.Transaction, turn: Turn, owner: str, now: float) -> None:
    """Write the turn's conversation, dropped answers and new messages in `tx`."""
    if turn.is_new:
        tx.execute(_INSERT_CONVERSATION,
                   (turn.conversation_id, owner, _title(turn.added[-1]["content"]), now, now))
    else:
        tx.execute(_TOUCH_CONVERSATION, (now, turn.conversation_id))
    if turn.dropped_message_ids:
        tx.execute(
            f"DELETE FROM messages WHERE id IN "
            f"({sql.placeholders(len(turn.dropped_message_ids))})",
            turn.dropped_message_ids,
        )
    tx.executemany(_INSERT_MESSAGE, [
        (turn.conversation_id, turn.first_position + offset, m["role"], m["content"], None, None,
         now)
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


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation with its messages, tickets and their events."""
    ticket_ids = select(Ticket.id).where(Ticket.conversation_id == conversation.id)
    db.session.execute(delete(TicketEvent).where(TicketEvent.ticket_id.in_(ticket_ids)))
    db.session.execute(delete(Ticket).where(Ticket.conversation_id == conversation.id))
    db.session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    db.session.delete(conversation)
    db.session.commit()


def summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }


def _history(conversation_id: str) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(_messages.c.id, _messages.c.position, _messages.c.role, _messages.c.content,
                   _messages.c.status)
            .where(_messages.c.conversation_id == conversation_id)
            .order_by(_messages.c.position)
        ).mappings()
        return [dict(row) for row in rows]


def _last_position(tx: sql.Transaction, conversation_id: str) -> int:
    return int(tx.execute(_LAST_POSITION, (conversation_id,)).fetchone()[0])


def _title(text: str) -> str:
    words = " ".join(text.split())
    return words[:60] + ("…" if len(words) > 60 else "") or "New chat"
