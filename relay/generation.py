"""The producer: reads the upstream, fans chunks out in memory, hands them to the batch writer;
and `cancel`, the one way every entry point stops a generation.

One producer greenlet runs per ticket, in the worker that won the claim. Each chunk is encoded
once into the ticket's in-memory `LiveLog`, which readers in this process stream from, and queued
for the worker's BatchWriter, which commits every producer's chunks together and only then makes
them visible in the log. The producer writes exactly one `done`. Cancels, lost claims and
shutdown stop it by raising `Stop` at the point where it waits for the upstream, which closes the
upstream call. Must not count readers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import orjson
from flask import Flask, current_app

from . import estimate, events, metrics, quotas, sse, tickets, usage
from .broker import Broker
from .db import storage_failure
from .errors import ErrorCode
from .events import Outcome, StoredEvent
from .livelog import LiveLog
from .models import TicketStatus
from .state import relay_state
from .tickets import Verdict, worker_id
from .upstream import ChatRequest, Delta, Finish, Upstream, UpstreamError
from .writer import STORE_FAILED, BatchWriter

log = logging.getLogger("relay.generation")

_producers: dict[str, Producer] = {}
_stopping = False  # this worker shuts down: it starts no more producers



class Stop(BaseException):
    """Raised inside a producer to end it: `reason` is cancelled, lost, or a shutdown note.

    A BaseException, like GreenletExit, so that no upstream adapter's error handling swallows it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def live_log(ticket_id: str) -> LiveLog | None:
    """The in-memory log of a ticket this process is generating, else None."""
    producer = _producers.get(ticket_id)
    return producer.log if producer is not None else None


def producer_greenlet(ticket_id: str) -> gevent.Greenlet | None:
    """The greenlet generating a ticket in this process (it ends when `done` is stored)."""
    producer = _producers.get(ticket_id)
    return producer.greenlet if producer is not None else None


def claim_and_start(app: Flask, ticket_id: str, owner: str) -> bool:
    """Claim `owner`'s pending ticket for this worker and start its producer; False when it is
    not theirs to start (unknown, someone else's, or already started).

    The producer is made, and with it the upstream request sent, before the claim commits: the
    upstream works on it meanwhile. Should the commit fail, the call is closed and the ticket
    stays pending.
    """
    producer: Producer | None = None
    lease_seconds = app.config["LEASE_SECONDS"]
    admission = quotas.admission(app)  # None unless a limit may apply
    try:
        with tickets.claiming(ticket_id, owner, worker_id(), lease_seconds, admission) as request:
            if request is None:
                return False
            reserved = admission is not None and admission.reserved
            producer = Producer(app, ticket_id, ChatRequest.from_stored(request), reserved,
                                admission.cap if reserved and admission is not None else None)
    except BaseException:
        if producer is not None:
            producer.chunks.close()
        raise
    run(producer)
    # The upstream already works on the request (sent as the producer was made, on an idle
    # pooled connection): let the producer start waiting for the answer while the stream's
    # response headers are written.
    gevent.sleep(0)
    return True


def run(producer: Producer) -> None:
    """Generate `producer`'s ticket in a greenlet of its own, known to this worker."""
    _producers[producer.ticket_id] = producer
    producer.greenlet = gevent.spawn(producer.run)


def cancel(
    ticket_id: str, why: str, app: Flask | None = None, reason: ErrorCode | None = None
) -> None:
    """Stop generating a ticket wherever it runs (its upstream call is closed) and end it
    `cancelled`; a ticket nobody started ends at once. `why` is for the log; `reason`, when its
    owner did not ask, is the error its `done` carries; `app` is the current app's unless given."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    with app.app_context():
        tickets.request_cancel(ticket_id, reason)
    broker = relay_state(app).broker
    broker.cancel(ticket_id)
    broker.notify(ticket_id)
    log.info("ticket %s cancel requested (%s)", ticket_id, why)


def stopping() -> bool:
    """Whether this worker is shutting down (it then takes no more tickets from the queue)."""
    return _stopping


def stop_all(reason: str) -> None:
    """Fail every ticket this worker is generating (the worker is shutting down); it takes no
    more from the queue."""
    global _stopping
    _stopping = True
    producers = list(_producers.values())
    for producer in producers:
        producer.stop(f"shutdown: {reason}")
    gevent.joinall([p.greenlet for p in producers if p.greenlet is not None], timeout=5)


class Producer:
    """One ticket's generation: the upstream call, its LiveLog, and the chunks not yet stored."""

    __slots__ = ("app", "ticket_id", "chunks", "upstream", "broker", "writer", "log", "pending",
                 "text_parts", "greenlet", "waiting", "stop_reason", "started", "messages",
                 "model", "reserved", "cap", "answer_chunks", "answer_estimate", "cut", "on_end")

    def __init__(
        self, app: Flask, ticket_id: str, request: ChatRequest, reserved: bool = False,
        cap: int | None = None, on_end: Callable[[], object] | None = None,
    ) -> None:
        self.app = app
        self.ticket_id = ticket_id
        self.messages = request.messages  # for the usage estimate, if the upstream gives none
        self.model = request.model
        self.reserved = reserved
        # The answer's tokens a quota reserved: an upstream that ignores `max_tokens` is
        # stopped there, so it cannot overdraw the quota.
        self.cap = cap
        self.answer_chunks = 0  # counted only under a cap
        self.answer_estimate = 0
        self.cut = False
        self.on_end = on_end  # spawned once the ticket has ended (the queue's next may start)
        state = relay_state(app)
        self.upstream: Upstream = state.upstream
        # Made in the claiming request's greenlet, which may send the request at once.
        self.chunks = self.upstream.stream(request)
        self.broker: Broker = state.broker
        self.writer: BatchWriter = state.writer
        self.log = LiveLog()
        self.pending: list[StoredEvent] = []
        self.text_parts: list[str] = []
        self.greenlet: gevent.Greenlet | None = None
        self.waiting = False  # on the upstream, the one place Stop may be raised
        self.stop_reason: str | None = None
        self.started = time.monotonic()

    # What the BatchWriter asks of a producer.

    def take_pending(self) -> list[StoredEvent]:
        """The chunks not yet handed to the writer, now handed over."""
        batch, self.pending = self.pending, []
        return batch

    def give_back(self, events: list[StoredEvent]) -> None:
        """Chunks the writer could not commit, to be taken again first."""
        self.pending[:0] = events

    def committed(self, upto: int) -> None:
        """Events up to id `upto` are stored: readers may send them."""
        self.log.commit(upto)

    def stop(self, reason: str) -> None:
        """End generation from another greenlet: at once if it waits on the upstream, else as
        soon as it is back there.

        Stop is raised only where the producer waits on the upstream, never inside a database
        call that yields (psycopg's do), which a connection does not survive.
        """
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.waiting:
            gevent.get_hub().loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        # Runs in the hub, so the producer is parked: still on the upstream, or it went on.
        if self.waiting and self.greenlet is not None and not self.greenlet.dead:
            self.greenlet.throw(Stop(self.stop_reason or "stopped"))

    def run(self) -> None:
        self.writer.register(self)
        self.broker.on_cancel(self.ticket_id, lambda: self.stop(Verdict.CANCELLED))
        try:
            outcome = self._stream()
        finally:
            self.broker.off_cancel(self.ticket_id)
        try:
            if isinstance(outcome, Outcome):
                self._finish(outcome)
        finally:
            self.writer.unregister(self.ticket_id)
            _producers.pop(self.ticket_id, None)
            # Readers still holding the log go to the database for the end: this producer's
            # `done`, or the one the claim's new holder wrote, or none (the ticket was deleted).
            self.log.finished = True
            self.broker.notify(self.ticket_id)
            status = outcome.status if isinstance(outcome, Outcome) else outcome
            log.info("ticket %s %s after %.2fs, %d chunks", self.ticket_id, status,
                     time.monotonic() - self.started, self.log.count)
            if self.on_end is not None:
                gevent.spawn(self.on_end)

    def _stream(self) -> Outcome | Verdict:
        """Relay the upstream's chunks until it finishes, fails or is stopped; the outcome, or
        `Verdict.LOST` when the claim was lost (someone else writes `done`)."""
        chunks = self.chunks
        try:
            while True:
                if self.stop_reason is not None:
                    raise Stop(self.stop_reason)
                self.waiting = True
                try:
                    item = next(chunks, None)
                finally:
                    self.waiting = False
                if item is None:
                    return failed(ErrorCode.UPSTREAM_ERROR,
                                   "The upstream ended without finishing the answer.")
                if isinstance(item, Finish):
                    return Outcome(TicketStatus.COMPLETED, item.finish_reason, item.usage)
                if item.text:
                    if self.cap is not None and self._past_cap(item.text):
                        return Outcome(TicketStatus.COMPLETED, "length")
                    self._append(item)
        except Stop as stop:
            if stop.reason == Verdict.LOST:
                return Verdict.LOST
            if stop.reason == Verdict.CANCELLED:
                with self.app.app_context():
                    return tickets.cancelled_outcome(tickets.cancel_reason(self.ticket_id))
            if stop.reason == STORE_FAILED:
                return failed(ErrorCode.STORAGE_FULL, "The answer could not be stored.")
            log.info("ticket %s stopped (%s)", self.ticket_id, stop.reason)
            return failed(ErrorCode.SERVER_SHUTDOWN,
                           "The relay was shutting down and stopped generating this answer.")
        except UpstreamError as exc:
            return failed(exc.code, exc.message)
        except Exception:
            # The user gets a sentence; the log gets the type and frames (never the text).
            log.exception("producer of ticket %s crashed", self.ticket_id)
            return failed(ErrorCode.INTERNAL_ERROR,
                           "The relay failed while generating this answer.")
        finally:
            chunks.close()

    def _past_cap(self, text: str) -> bool:
        """Whether this delta would take the answer past its reserved cap (it is then dropped,
        and the upstream call closed); else it is counted.

        By what the answer has at least: a token in each chunk (an upstream sends one or more),
        and half the estimate (which errs high, seldom twice over). An upstream that heeds
        `max_tokens` never passes that, so none is cut short by a high estimate; one sending
        many tokens a chunk is stopped at twice the cap by the estimate at the latest."""
        chunks = self.answer_chunks + 1
        tokens = self.answer_estimate + estimate.count_tokens(text)
        if self.cap is not None and max(chunks, tokens // 2) > self.cap:
            log.warning("ticket %s: the upstream went on past the answer's cap of %d tokens; "
                        "stopped", self.ticket_id, self.cap)
            self.cut = True
            return True
        self.answer_chunks, self.answer_estimate = chunks, tokens
        return False

    def _append(self, delta: Delta) -> None:
        seq = self.log.count + 1
        data = orjson.dumps({"delta": delta.text})
        self.log.append(sse.encode_json(data, id=seq))
        self.pending.append((seq, "delta", data.decode()))
        self.text_parts.append(delta.text)
        if len(self.text_parts) >= 256:
            self.text_parts = ["".join(self.text_parts)]  # one string, not hundreds
        if seq == 1:
            # Time to first token waits for one commit, never for a batch, nor for however
            # many chunks the upstream socket already holds: commit now, let readers send it.
            first_chunk_after = time.monotonic() - self.started
            self.writer.commit_now(self.ticket_id)
            gevent.sleep(0)
            metrics.TIME_TO_FIRST_CHUNK.observe(first_chunk_after)  # once the readers sent it
        else:
            self.writer.mark_dirty(self.ticket_id)

    def _finish(self, outcome: Outcome) -> None:
        done_seq = self.log.count + 1
        generated = "".join(self.text_parts)
        stored = events.storable_text(generated)
        price = (self.app.config["MODEL_PRICES"] or {}).get(self.model)
        figures = usage.measure(usage.Spent(outcome.usage, self.messages, generated),
                                outcome.status, stored, price, self.cap if self.cut else None)
        try:
            with self.writer.lock, self.app.app_context():
                written = tickets.finish_generation(
                    self.ticket_id, worker_id(), outcome, self.take_pending(), stored, done_seq,
                    figures, self.reserved,
                )
        except Exception as exc:
            failure = storage_failure(exc)
            if failure is None:
                log.exception("could not store the end of ticket %s", self.ticket_id)
            else:
                self._end_unstored(failure)
            return
        if not written:
            log.warning("ticket %s was already finished elsewhere", self.ticket_id)
            return
        error_code = outcome.error["code"] if outcome.error else ""
        metrics.CHUNKS_RELAYED.inc(done_seq - 1)
        metrics.TICKETS_FINISHED.labels(str(outcome.status), str(error_code)).inc()
        self.log.append(sse.encode(outcome.done_payload(), event="done", id=done_seq))
        self.log.commit(done_seq)
        self.log.has_done = True

    def _end_unstored(self, code: ErrorCode) -> None:
        """The store refused the end: this worker's readers get a failed `done` after the last
        committed event, which is where the reaper puts `worker_lost` once the store takes
        writes again (the ticket's lease is no longer renewed)."""
        log.warning("ticket %s: its end could not be stored (%s); its readers here end it",
                    self.ticket_id, code)
        payload = failed(code, "The answer could not be stored.").done_payload()
        self.log.end_here(lambda seq: sse.encode(payload, event="done", id=seq))


def failed(code: ErrorCode, message: str) -> Outcome:
    """A failed outcome with the contract's `code` and a plain sentence."""
    return Outcome(TicketStatus.FAILED, "error", error={"code": code, "message": message})
