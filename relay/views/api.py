"""`POST /new`, `GET /tickets/<id>` and `POST /sse/<id>/cancel`."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request

from .. import events, generation, metrics, ratelimits, tickets
from ..identity import AuthKind, current_owner, current_principal
from ..models import FINISHED_STATUSES
from ..state import relay_state
from ..streams import reap_if_expired
from ..streamtokens import make_token
from ..validation import parse_new_ticket, read_body

bp = Blueprint("api", __name__)


@bp.post("/new")
def new_ticket() -> Response:
    """Store a prompt and return the ticket to stream it with."""
    owner = current_owner()
    principal = current_principal()
    body = read_body(request)
    spec = parse_new_ticket(
        body, relay_state().default_model, current_app.config["MAX_MESSAGES"]
    )
    principal.check_model(spec.model)
    key_id = principal.key.id if principal.key is not None else None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ratelimits.check_new_request(app, owner, key_id, request.environ)
    ticket = tickets.create_ticket(owner, spec, key_id)
    metrics.soon(metrics.TICKETS_CREATED.inc)
    # What url_for("stream.stream") gives, without the URL map on the hot path.
    location = f"{request.script_root}/sse/{ticket.id}"
    stream_url = location
    if principal.kind == AuthKind.KEY and key_id is not None:
        # For a client that cannot send the key on its GET.
        token = make_token(current_app.secret_key or "", ticket.id, key_id)
        stream_url = f"{location}?access_token={token}"
    payload = {"id": ticket.id, "stream_url": stream_url, "conversation_id": ticket.conversation_id}
    return Response(
        orjson.dumps(payload), 201, {"Location": location}, content_type="application/json"
    )


@bp.get("/tickets/<ticket_id>")
def show_ticket(ticket_id: str) -> Response:
    """A ticket's status, text so far and usage, for clients that poll."""
    ticket = tickets.load_ticket(ticket_id, current_owner())
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if reap_if_expired(app, tickets.TicketState.of(ticket), ticket.id):
        ticket = tickets.load_ticket(ticket_id, ticket.owner)
    return jsonify(ticket_json(ticket))


@bp.post("/sse/<ticket_id>/cancel")
def cancel(ticket_id: str) -> tuple[Response, int]:
    """Stop generation: the upstream call is closed and the stream ends with `cancelled`."""
    ticket = tickets.load_ticket(ticket_id, current_owner())
    if ticket.status in FINISHED_STATUSES:
        return jsonify({"id": ticket.id, "status": ticket.status}), 200
    generation.cancel(ticket.id, "asked by its owner")
    ticket = tickets.load_ticket(ticket_id, ticket.owner)
    status = ticket.status if ticket.status in FINISHED_STATUSES else "cancelling"
    return jsonify({"id": ticket.id, "status": status}), 202


def ticket_json(ticket: Any) -> dict[str, Any]:
    text, last_event_id = events.ticket_progress(ticket.id)
    error = (
        {"code": ticket.error_code, "message": ticket.error_message} if ticket.error_code else None
    )
    return {
        "id": ticket.id,
        "status": ticket.status,
        "model": ticket.model,
        "conversation_id": ticket.conversation_id,
        "text": text,
        "last_event_id": last_event_id,
        "finish_reason": ticket.finish_reason,
        "usage": ticket.usage or {},
        "error": error,
        "created_at": ticket.created_at,
        "started_at": ticket.started_at,
        "finished_at": ticket.finished_at,
    }
