"""The caller's conversations: list, show (with messages), rename, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import select

from .. import tickets
from ..db import db
from ..errors import InvalidRequest
from ..identity import current_owner
from ..models import Conversation, Ticket
from ..validation import read_json_object

bp = Blueprint("conversations", __name__)


@bp.get("/conversations")
def list_conversations() -> Response:
    """The caller's conversations, most recently updated first."""
    rows = db.session.scalars(
        select(Conversation)
        .where(Conversation.owner == current_owner())
        .order_by(Conversation.updated_at.desc())
        .limit(500)
    )
    return jsonify({"conversations": [_summary(c) for c in rows]})


@bp.get("/conversations/<conversation_id>")
def show_conversation(conversation_id: str) -> Response:
    """One conversation with its messages and the ticket still generating in it, if any."""
    conversation = tickets.load_conversation(conversation_id, current_owner())
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
    active = next((row.id for row in ticket_rows if row.status in ("pending", "running")), None)
    messages: list[dict[str, Any]] = []
    for message in tickets.conversation_messages(conversation.id):
        item: dict[str, Any] = {
            "role": message.role, "content": message.content,
            "ticket_id": message.ticket_id, "status": message.status,
        }
        if message.ticket_id in errors:
            item["error"] = errors[message.ticket_id]
        messages.append(item)
    active_ticket = (
        {"id": active, "stream_url": url_for("stream.stream", ticket_id=active)}
        if active else None
    )
    return jsonify({**_summary(conversation), "messages": messages, "active_ticket": active_ticket})


@bp.patch("/conversations/<conversation_id>")
def rename_conversation(conversation_id: str) -> Response:
    """Rename a conversation: JSON `{"title": "..."}`."""
    conversation = tickets.load_conversation(conversation_id, current_owner())
    # Read as POST /new reads its body: werkzeug's get_json stopped a chunked body at the size
    # limit without a word, so an oversized rename failed as invalid JSON, not 413.
    title = read_json_object(request).get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise InvalidRequest("Send JSON `{\"title\": ...}` with 1 to 200 characters.")
    conversation.title = title.strip()
    db.session.commit()
    return jsonify(_summary(conversation))


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    """Delete a conversation, its messages and its tickets; an answer being generated is stopped
    first (its upstream call closed)."""
    conversation = tickets.load_conversation(conversation_id, current_owner())
    broker = current_app.extensions["relay"].broker
    for ticket in tickets.active_tickets(conversation.id):
        tickets.request_cancel(ticket.id)
        broker.cancel(ticket.id)
    tickets.delete_conversation(conversation)
    return "", 204


def _summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }
