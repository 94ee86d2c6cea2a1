"""`GET /sse/<id>`: everything that can fail fails before the first byte; then the event stream
(`streams.event_stream`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from .. import dispatch, openstreams, sse, tickets
from ..errors import ErrorCode, InvalidRequest
from ..identity import current_owner
from ..models import FINISHED_STATUSES
from ..state import relay_state
from ..streams import committed_events, event_stream

bp = Blueprint("stream", __name__)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Referrer-Policy": "no-referrer",  # the URL may carry an access token
}


@bp.get("/sse/<ticket_id>")
def stream(ticket_id: str) -> Response:
    """Stream a ticket's events after the client's Last-Event-ID, starting generation once."""
    owner = current_owner()
    environ = request.environ  # not request.headers and request.args: both are built on use
    raw_last = environ.get("HTTP_LAST_EVENT_ID")
    if (raw_last is None or raw_last.strip() == "") and environ.get("QUERY_STRING"):
        raw_last = request.args.get("last_event_id")
    try:
        last_seen = sse.parse_last_event_id(raw_last) or 0
    except ValueError as exc:
        tickets.load_ticket(ticket_id, owner)  # an unknown ticket is 404 first
        raise InvalidRequest(str(exc), code=ErrorCode.INVALID_LAST_EVENT_ID) from exc
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # Before anything starts (a HEAD only checks); given back when the response closes.
    slot = openstreams.open_stream(app, owner, environ,
                                   take=environ["REQUEST_METHOD"] != "HEAD")
    try:
        return _stream(app, ticket_id, owner, environ, last_seen, slot)
    except BaseException:
        if slot is not None:
            slot.release()
        raise


def _stream(
    app: Flask, ticket_id: str, owner: str, environ: dict[str, Any], last_seen: int,
    slot: openstreams.Slot | None,
) -> Response:
    # The first reader claims with one statement; everyone else reads the row. A HEAD (which
    # Flask answers with this view) gets the GET's status and headers without starting a call,
    # and a resume never starts one: a ticket with an event to resume from has started. With
    # an upstream cap, the first reader queues it instead (`fairqueue`).
    if environ["REQUEST_METHOD"] == "HEAD" or last_seen > 0 or not dispatch.start_or_queue(
        app, ticket_id, owner
    ):
        ticket = tickets.load_ticket(ticket_id, owner)
        if ticket.status in FINISHED_STATUSES:
            if last_seen == ticket.last_seq:
                if slot is not None:
                    slot.release()
                return Response(status=204)
            # An id past `done` was never sent by relay; answer `done`, not an endless stream.
            last_seen = min(last_seen, ticket.last_seq - 1)
        elif last_seen > committed_events(app, ticket_id):
            # Never sent by relay (readers only get committed events), and no event or `done`
            # can be its successor yet.
            raise InvalidRequest(
                f"Last-Event-ID {last_seen} is past the last event of this ticket so far.",
                code=ErrorCode.INVALID_LAST_EVENT_ID,
            )
    body = openstreams.held(
        event_stream(app, ticket_id, last_seen, relay_state(app).stream_settings), slot
    )
    # direct_passthrough: the body already yields bytes; werkzeug's re-encoding generator
    # would be one more layer per frame.
    return Response(
        body, status=200, content_type="text/event-stream; charset=utf-8", headers=STREAM_HEADERS,
        direct_passthrough=True,
    )
