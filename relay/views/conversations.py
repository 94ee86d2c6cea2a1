"""The caller's conversations: list, show (with messages), rename, delete."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from .. import conversations, deletion
from ..errors import InvalidRequest
from ..identity import current_owner
from ..validation import read_json_object

bp = Blueprint("conversations", __name__)


@bp.get("/conversations")
def list_conversations() -> Response:
    """The caller's conversations, most recently updated first."""
    return jsonify({"conversations": conversations.list_conversations(current_owner())})


@bp.get("/conversations/<conversation_id>")
def show_conversation(conversation_id: str) -> Response:
    """One conversation with its messages and the ticket still generating in it, if any."""
    conversation = conversations.load_conversation(conversation_id, current_owner())
    detail, active = conversations.conversation_detail(conversation)
    active_ticket = (
        {"id": active, "stream_url": url_for("stream.stream", ticket_id=active)}
        if active else None
    )
    return jsonify({**detail, "active_ticket": active_ticket})


@bp.patch("/conversations/<conversation_id>")
def rename_conversation(conversation_id: str) -> Response:
    """Rename a conversation: JSON `{"title": "..."}`."""
    conversation = conversations.load_conversation(conversation_id, current_owner())
    # Read as POST /new reads its body: werkzeug's get_json stopped a chunked body at the size
    # limit without a word, so an oversized rename failed as invalid JSON, not 413.
    title = read_json_object(request).get("title")
    if not isinstance(title, str):
        raise InvalidRequest("Send JSON `{\"title\": ...}` with 1 to 200 characters.")
    conversations.rename_conversation(conversation, title)
    return jsonify(conversations.summary(conversation))


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    """Delete a conversation, its messages and its tickets; an answer being generated is stopped
    first (its upstream call closed)."""
    conversation = conversations.load_conversation(conversation_id, current_owner())
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    deletion.delete_conversation(app, conversation)
    return "", 204
