"""The stream engine: one reader's events from the store or the worker's LiveLog, heartbeats,
the readers counted per ticket, reaping a dead worker's ticket, and cancel when the last reader
leaves (if configured).

A reader is a plain generator handed plain values (never the `request` proxy). It sends
`retry:`, then the committed events after the client's last id (from this worker's LiveLog while
it generates the ticket, else from the database), waiting on the broker in between and sending
`: ping` when the heartbeat interval passes in silence, until it has sent `done`. Whether a
disconnect stops generation is decided here, in `_reader_left`. Must not know HTTP.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import gevent
import orjson
from flask import Flask

from . import dispatch, events, fairqueue, generation, metrics, sse, tickets
from .broker import Broker
from .livelog import LiveLog
from .models import FINISHED_STATUSES, TicketStatus
from .state import relay_state

_local_readers: Counter[str] = Counter()  # this worker's open readers, per ticket
# Stored rows (each up to events.MAX_RUN events) a reader reads and sends at a time: what one
# reader of a long finished answer holds stays bounded, however long the answer.
REPLAY_PAGE_ROWS = 4


@dataclass(frozen=True)
class StreamSettings:
    heartbeat: float
    poll: float
    retry_frame: bytes | None
    cancel_on_disconnect: bool
    disconnect_grace: float
    queue: bool = False  # an upstream cap is set: a ticket may wait in the queue
    queued_events: bool = True  # tell a queued reader its position (`event: queued`)

    @classmethod
    def of(cls, app: Flask) -> StreamSettings:
        """An EventSource stream's settings, from the app's config."""
        config = app.config
        return cls(
            heartbeat=config["HEARTBEAT_SECONDS"],
            poll=config["POLL_MS"] / 1000.0,
            retry_frame=sse.encode(retry=config["RETRY_MS"]),
            cancel_on_disconnect=config["CANCEL_ON_DISCONNECT"],
            disconnect_grace=config["DISCONNECT_GRACE_SECONDS"],
            queue=config["UPSTREAM_MAX_CONCURRENCY"] is not None,
        )

    def for_one_request(self) -> StreamSettings:
        """For a client that cannot resume (`/v1`): no `retry:`, and its leaving cancels."""
        return replace(self, retry_frame=None, cancel_on_disconnect=True, disconnect_grace=0.0,
                       queued_events=False)


def readers(ticket_id: str) -> int:
    """How many readers of the ticket this worker has open."""
    return _local_readers[ticket_id]


def event_stream(
    app: Flask, ticket_id: str, last_seen: int, settings: StreamSettings,
    render: Callable[[list[bytes]], bytes] = b"".join,
) -> Iterator[bytes]:
    """The committed events after `last_seen`, each batch of frames as `render` makes it bytes,
    with heartbeats in between, until `done`."""
    broker = relay_state(app).broker
    _local_readers[ticket_id] += 1
    metrics.soon(metrics.STREAMS_OPEN.inc)
    broker.watch(ticket_id)
    try:
        if settings.retry_frame is not None:
            yield settings.retry_frame
        last_write = time.monotonic()
        live: LiveLog | None = None
        queued = _QueuedReader(app, ticket_id) if settings.queue and last_seen == 0 else None
        while True:
            version = broker.version(ticket_id)
            # Kept once seen: a finished log still holds its committed `done`.
            live = generation.live_log(ticket_id) or live
            from_memory = live.read_after(last_seen) if live is not None else None
            more = False
            if from_memory is not None:
                frames, done = from_memory
            else:
                # Not generated here, or this reader is behind what the LiveLog keeps.
                live = None
                frames, done, more = stored_frames(app, ticket_id, last_seen)
            if frames:
                yield render(frames)
                last_seen += len(frames)
                last_write = time.monotonic()
                if done:
                    return
                if more:
                    continue
            elif queued is not None and live is None and (frame := queued.check()):
                if settings.queued_events:
                    yield frame
                    last_write = time.monotonic()
            elif time.monotonic() - last_write >= settings.heartbeat:
                yield sse.PING
                last_write = time.monotonic()
            if queued is not None and queued.position is None:
                queued = None  # started (or ended): never queued again
            timeout = settings.heartbeat - (time.monotonic() - last_write)
            if live is None and not broker.crosses_processes:
                timeout = min(timeout, settings.poll)
            if queued is not None:
                timeout = min(timeout, _QUEUED_POLL)  # a killed worker notifies nobody
            if not broker.wait(ticket_id, version, max(timeout, 0.0)) and live is None:
                final = _done_if_abandoned(app, broker, ticket_id, last_seen)
                if final:
                    yield render(final)
                    return
    finally:
        broker.unwatch(ticket_id)
        metrics.soon(metrics.STREAMS_OPEN.dec)
        _reader_left(app, ticket_id, settings)


_QUEUED_POLL = 1.0  # seconds between a queued reader's looks at the queue, at most


class _QueuedReader:
    """A reader's view of its ticket in the upstream queue: the `queued` frame to send when its
    position changed; a free slot seen makes it dispatch the queue."""

    __slots__ = ("app", "ticket_id", "position", "sent")

    def __init__(self, app: Flask, ticket_id: str) -> None:
        self.app = app
        self.ticket_id = ticket_id
        self.position: int | None = 0  # None once the ticket is no longer queued
        self.sent: int | None = None

    def check(self) -> bytes | None:
        self.position, free = fairqueue.position(self.app, self.ticket_id)
        if self.position is not None and free:
            dispatch.dispatch_for_reader(self.app)
            self.position, _ = fairqueue.position(self.app, self.ticket_id)
        if self.position is None or self.position == self.sent:
            return None
        self.sent = self.position
        return sse.encode(orjson.dumps({"position": self.position}).decode(), event="queued")


def wait_while_queued(app: Flask, ticket_id: str) -> None:
    """Until the ticket is no longer waiting in the queue (started or ended), dispatching the
    queue when a slot is free."""
    reader = _QueuedReader(app, ticket_id)
    while True:
        reader.check()
        if reader.position is None:
            return
        gevent.sleep(min(_QUEUED_POLL, relay_state(app).stream_settings.poll * 2.5))


def wait_for_end(app: Flask, ticket_id: str) -> None:
    """Until the ticket is finished (or deleted), generated on any worker: read from the store."""
    poll = relay_state(app).stream_settings.poll
    while True:
        with app.app_context():
            state = tickets.read_state(ticket_id)
        if state is None or state.status in FINISHED_STATUSES:
            return
        if not reap_if_expired(app, state, ticket_id):
            gevent.sleep(poll)


def stored_frames(
    app: Flask, ticket_id: str, last_seen: int
) -> tuple[list[bytes], bool, bool]:
    """One page of encoded events after `last_seen` from the database: the frames, whether
    they end with `done`, and whether more may follow at once (the page was full)."""
    with app.app_context():
        stored, full = events.events_page(ticket_id, last_seen, REPLAY_PAGE_ROWS)
    frames = [
        sse.encode(data, id=seq, event="done") if kind == "done"
        else sse.encode_json(data.encode(), id=seq)  # JSON text: no line break to split on
        for seq, kind, data in stored
    ]
    done = bool(stored) and stored[-1][1] == "done"
    return frames, done, full and not done


def committed_events(app: Flask, ticket_id: str) -> int:
    """How many events of an unfinished ticket are committed: its LiveLog's count when this
    worker generates it, else the database's."""
    live = generation.live_log(ticket_id)
    if live is not None:
        return live.visible
    with app.app_context():
        return events.committed_count(ticket_id)


def reap_if_expired(app: Flask, ticket: tickets.TicketState | None, ticket_id: str) -> bool:
    """Fail a running ticket whose worker died (its lease expired) and wake its readers."""
    if (ticket is None or ticket.status != TicketStatus.RUNNING
            or (ticket.lease_expires_at or 0) >= time.time()):
        return False
    with app.app_context():
        reaped = tickets.reap_if_expired(ticket_id) is not None
    if reaped:
        relay_state(app).broker.notify(ticket_id)
    return reaped


def wait_for_first_event(app: Flask, ticket_id: str, timeout: float) -> None:
    """Until the ticket has a committed event here, its producer has ended, or `timeout`."""
    broker = relay_state(app).broker
    deadline = time.monotonic() + timeout
    remote = generation.live_log(ticket_id) is None and fairqueue.cap(app) is not None
    broker.watch(ticket_id)
    try:
        while True:
            version = broker.version(ticket_id)
            live = generation.live_log(ticket_id)
            remaining = deadline - time.monotonic()
            if live is None and remote and remaining > 0:
                # Dispatched from the queue to another worker: its events reach the store.
                if committed_events(app, ticket_id) > 0:
                    return
                gevent.sleep(min(relay_state(app).stream_settings.poll, remaining))
                continue
            if live is None or live.visible > 0 or remaining <= 0:
                return
            broker.wait(ticket_id, version, remaining)
    finally:
        broker.unwatch(ticket_id)


def failure_before_first_token(app: Flask, ticket_id: str) -> dict[str, str] | None:
    """The error of a ticket whose only committed event is a failed `done`."""
    live = generation.live_log(ticket_id)
    committed = live.read_after(0) if live is not None else None
    if committed is None:
        committed = stored_frames(app, ticket_id, 0)[:2]
    frames, done = committed
    if not (done and len(frames) == 1):
        return None
    payload = orjson.loads(sse.event_and_data(frames[0])[1])
    error: dict[str, str] | None = payload.get("error")
    return error if payload["status"] == TicketStatus.FAILED else None


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
    if reap_if_expired(app, state, ticket_id):
        with app.app_context():
            state = tickets.read_state(ticket_id)
    if state is None:
        payload = tickets.CANCELLED.done_payload()
        return [sse.encode(payload, event="done", id=last_seen + 1)]
    if state.status in FINISHED_STATUSES and 0 < state.done_seq <= last_seen:
        return stored_frames(app, ticket_id, state.done_seq - 1)[0]
    return []


def _reader_left(app: Flask, ticket_id: str, settings: StreamSettings) -> None:
    _local_readers[ticket_id] -= 1
    if _local_readers[ticket_id] > 0:
        return
    del _local_readers[ticket_id]
    if settings.cancel_on_disconnect and generation.live_log(ticket_id) is not None:
        gevent.spawn(_cancel_if_abandoned, app, ticket_id, settings.disconnect_grace)


def _cancel_if_abandoned(app: Flask, ticket_id: str, grace: float) -> None:
    gevent.sleep(grace)
    if _local_readers[ticket_id] == 0 and generation.live_log(ticket_id) is not None:
        generation.cancel(ticket_id, "its last reader left", app)
