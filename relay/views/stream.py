"""`GET /sse/<id>`: everything that can fail fails before the first byte; then the event stream.

The body is a plain generator handed plain values (never the `request` proxy). It sends
`retry:`, then the committed events after the client's last id (from this worker's LiveLog while
it generates the ticket, else from the database), waiting on the broker in between and sending
`: ping` when the heartbeat interval passes in silence, until it has sent `done`. Whether a
disconnect stops generation is decided here, in `_reader_left`. `/v1/chat/completions` streams
through the same generator, rendering the frames as OpenAI's chunks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gevent
from flask import Blueprint, Flask, Response, current_app, request

from .. import generation, metrics, sse, tickets
from ..application import PreparedResponse
from ..broker import Broker
from ..errors import InvalidRequest
from ..identity import current_owner
from ..models import FINISHED_STATUSES

bp = Blueprint("stream", __name__)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_local_readers: Counter[str] = Counter()


@dataclass(frozen=True)
class StreamSettings:
    heartbeat: float
    poll: float
    retry_frame: bytes | None
    cancel_on_disconnect: bool
    disconnect_grace: float


_SETTINGS_KEY = "relay.stream_settings"


def stream_settings(app: Flask) -> StreamSettings:
    """The app's stream settings, made on its first stream and kept in its extensions."""
    settings: StreamSettings | None = app.extensions.get(_SETTINGS_KEY)
    if settings is not None:
        return settings
    config = app.config
    settings = app.extensions[_SETTINGS_KEY] = StreamSettings(
        heartbeat=config["HEARTBEAT_SECONDS"],
        poll=config["POLL_MS"] / 1000.0,
        retry_frame=sse.encode(retry=config["RETRY_MS"]),
        cancel_on_disconnect=config["CANCEL_ON_DISCONNECT"],
        disconnect_grace=config["DISCONNECT_GRACE_SECONDS"],
    )
    return settings


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
        raise InvalidRequest(str(exc), code="invalid_last_event_id") from exc
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # The first reader claims with one statement; everyone else reads the row. A HEAD (which
    # Flask answers with this view) gets the GET's status and headers without starting a call.
    if environ["REQUEST_METHOD"] == "HEAD" or not generation.claim_and_start(
        app, ticket_id, owner
    ):
        ticket = tickets.load_ticket(ticket_id, owner)
        if ticket.status in FINISHED_STATUSES:
            if last_seen == ticket.last_seq:
                return Response(status=204)
            # An id past `done` was never sent by relay; answer `done`, not an endless stream.
            last_seen = min(last_seen, ticket.last_seq - 1)
    settings = stream_settings(app)
    body = event_stream(app, app.extensions["relay"].broker, ticket_id, last_seen, settings)
    # direct_passthrough: the body already yields bytes; werkzeug's re-encoding generator
    # would be one more layer per frame.
    return PreparedResponse(
        body, status=200, content_type="text/event-stream; charset=utf-8", headers=STREAM_HEADERS,
        direct_passthrough=True,
    )


def event_stream(
    app: Flask, broker: Broker, ticket_id: str, last_seen: int, settings: StreamSettings,
    render: Callable[[list[bytes]], bytes] = b"".join,
) -> Iterator[bytes]:
    """The committed events after `last_seen`, each batch of frames as `render` makes it bytes,
    with heartbeats in between, until `done`."""
    _local_readers[ticket_id] += 1
    metrics.soon(metrics.STREAMS_OPEN.inc)
    broker.watch(ticket_id)
    try:
        if settings.retry_frame is not None:
            yield settings.retry_frame
        last_write = time.monotonic()
        live: generation.LiveLog | None = None
        while True:
            version = broker.version(ticket_id)
            # Kept once seen: a finished log still holds its committed `done`.
            live = generation.live_log(ticket_id) or live
            from_memory = live.read_after(last_seen) if live is not None else None
            if from_memory is None:
                # Not generated here, or this reader is behind what the LiveLog keeps.
                live = None
                from_memory = stored_frames(app, ticket_id, last_seen)
            frames, done = from_memory
            if frames:
                yield render(frames)
                last_seen += len(frames)
                last_write = time.monotonic()
                if done:
                    return
            elif time.monotonic() - last_write >= settings.heartbeat:
                yield sse.PING
                last_write = time.monotonic()
            timeout = settings.heartbeat - (time.monotonic() - last_write)
            if live is None and not broker.crosses_processes:
                timeout = min(timeout, settings.poll)
            if not broker.wait(ticket_id, version, max(timeout, 0.0)) and live is None:
                final = _done_if_abandoned(app, broker, ticket_id, last_seen)
                if final:
                    yield render(final)
                    return
    finally:
        broker.unwatch(ticket_id)
        metrics.soon(metrics.STREAMS_OPEN.dec)
        _reader_left(app, broker, ticket_id, settings)


def stored_frames(app: Flask, ticket_id: str, last_seen: int) -> tuple[list[bytes], bool]:
    """Encoded events after `last_seen` from the database, and whether they end with `done`."""
    with app.app_context():
        events = tickets.events_after(ticket_id, last_seen)
    frames = [
        sse.encode(data, id=seq, event="done" if kind == "done" else None)
        for seq, kind, data in events
    ]
    return frames, bool(events) and events[-1][1] == "done"


def _done_if_abandoned(
    app: Flask, broker: Broker, ticket_id: str, last_seen: int
) -> list[bytes]:
    """Reap a ticket whose worker died; resend `done` to a client whose id is already past it.

    Readers only ever see committed events, so a client can only be past `done` by sending an id
    it never received; it gets `done` rather than a stream that never ends. A ticket deleted with
    its conversation ends its readers' streams as cancelled.
    """
    with app.app_context():
        state = tickets.read_state(ticket_id)
        expired = (state is not None and state.lease_expires_at is not None
                   and state.lease_expires_at < time.time())
        if expired and state.status == "running" and tickets.reap_if_expired(ticket_id):
            broker.notify(ticket_id)
            state = tickets.read_state(ticket_id)
    if state is None:
        payload = tickets.done_payload("cancelled", "cancelled", None, None)
        return [sse.encode(payload, event="done", id=last_seen + 1)]
    if state.status in FINISHED_STATUSES and 0 < state.done_seq <= last_seen:
        return stored_frames(app, ticket_id, state.done_seq - 1)[0]
    return []


def _reader_left(app: Flask, broker: Broker, ticket_id: str, settings: StreamSettings) -> None:
    _local_readers[ticket_id] -= 1
    if _local_readers[ticket_id] > 0:
        return
    del _local_readers[ticket_id]
    if settings.cancel_on_disconnect and generation.live_log(ticket_id) is not None:
        gevent.spawn(_cancel_if_abandoned, app, broker, ticket_id, settings.disconnect_grace)


def _cancel_if_abandoned(app: Flask, broker: Broker, ticket_id: str, grace: float) -> None:
    gevent.sleep(grace)
    if _local_readers[ticket_id] == 0 and generation.live_log(ticket_id) is not None:
        with app.app_context():
            tickets.request_cancel(ticket_id)
        broker.cancel(ticket_id)
