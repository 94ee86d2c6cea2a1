"""Starting the upstream queue's tickets: with `RELAY_UPSTREAM_MAX_CONCURRENCY` set, a ticket's
first reader queues it (`fairqueue.enqueue`) and `dispatch` gives free upstream slots to queued
tickets, starting their producers in this worker. Whoever calls `dispatch` first serves the
queue, on any worker or host: the request that queued a ticket, every queued ticket's producer
when it ends, queued readers that see a free slot, and each worker's watcher once a second (a
killed worker tells nobody). Without a cap, `start_or_queue` is `generation.claim_and_start`.
Must not use `request` or `g`.
"""

from __future__ import annotations

import logging
import time

import gevent
from flask import Flask

from . import fairqueue, generation, tickets, usage
from .errors import ErrorCode
from .state import relay_state
from .tickets import worker_id
from .upstream import ChatRequest

log = logging.getLogger("relay.dispatch")

_READER_DISPATCH_SECONDS = 0.2  # how often this worker's queued readers may dispatch
_last_reader_dispatch = 0.0
_QUEUE_WATCH_SECONDS = 1.0


def start_or_queue(app: Flask, ticket_id: str, owner: str) -> bool:
    """`claim_and_start`, or with an upstream cap: queue `owner`'s pending ticket (reserving
    its quota) and dispatch the queue; False when it is not theirs to start or queue."""
    if fairqueue.cap(app) is None:
        return generation.claim_and_start(app, ticket_id, owner)
    if not fairqueue.enqueue(app, ticket_id, owner):
        return False
    dispatch(app)
    return True


def dispatch(app: Flask) -> None:
    """Give the upstream's free slots to queued tickets (fair order) and generate them here.

    Called when a ticket is queued, when a producer ends, by queued readers and by every
    worker's watcher (a killed worker tells nobody): whoever calls it first serves the queue,
    on any worker or host."""
    if generation.stopping():
        return
    try:
        with app.app_context():
            claimed, reaped = fairqueue.claim_queued(app, worker_id())
    except Exception:
        log.exception("could not dispatch the upstream queue")
        return
    broker = relay_state(app).broker
    for ticket_id in reaped:
        broker.notify(ticket_id)
    for ticket in claimed:
        _start_claimed(app, ticket)


def watch_queue(app: Flask) -> None:
    """Look at the upstream queue each second in this worker (started with it) and dispatch
    when a slot is free: the waiting tickets of a worker that died may have no reader left."""
    gevent.spawn(_watch_queue, app)


def _watch_queue(app: Flask) -> None:
    complained = 0.0
    while not generation.stopping():
        gevent.sleep(_QUEUE_WATCH_SECONDS)
        try:
            taken = fairqueue.snapshot(app)
            if taken.positions and taken.free > 0:
                dispatch(app)
        except Exception as exc:  # the store is down: said once a minute, not every second
            if time.monotonic() - complained > 60:
                complained = time.monotonic()
                log.warning("could not read the upstream queue (%s)", type(exc).__name__)


def dispatch_for_reader(app: Flask) -> None:
    """`dispatch` on behalf of a queued reader that saw a free slot, at most every 0.2 s per
    worker, however many readers wait here."""
    global _last_reader_dispatch
    now = time.monotonic()
    if now - _last_reader_dispatch >= _READER_DISPATCH_SECONDS:
        _last_reader_dispatch = now
        dispatch(app)


def _start_claimed(app: Flask, ticket: fairqueue.Claimed) -> None:
    """Start the producer of a queued ticket this worker just claimed; should that fail, end
    the ticket failed (its claim would otherwise be renewed by this worker for ever)."""
    producer: generation.Producer | None = None
    try:
        with app.app_context():
            request = tickets.claimed_request(ticket.ticket_id, worker_id())
        if request is None:  # cancelled or deleted meanwhile: ended by whoever did that
            return
        if ticket.reserved and not request.get("max_tokens"):
            # The answer's cap its reservation counted (`quotas.Admission.admit`).
            request["max_tokens"] = app.config["DEFAULT_MAX_TOKENS_RESERVED"]
        cap = request["max_tokens"] if ticket.reserved else None  # tokens were reserved
        producer = generation.Producer(
            app, ticket.ticket_id, ChatRequest.from_stored(request), ticket.reserved is not None,
            cap, on_end=lambda: dispatch(app),  # its slot is free: the next queued ticket
        )
    except Exception:
        log.exception("could not start queued ticket %s", ticket.ticket_id)
        outcome = generation.failed(ErrorCode.INTERNAL_ERROR,
                                    "The relay failed to start this answer.")
        try:
            with app.app_context():
                tickets.finish_generation(ticket.ticket_id, worker_id(), outcome, [], "", 1,
                                          usage.NOTHING_SENT, ticket.reserved is not None)
        except Exception:
            log.exception("could not end queued ticket %s", ticket.ticket_id)
        relay_state(app).broker.notify(ticket.ticket_id)
        return
    generation.run(producer)
