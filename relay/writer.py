"""One batch writer per worker: every producer's new chunks go to the database in one transaction.

A SQLite commit blocks every greenlet of the worker, so commits are per worker, not per stream:
each FLUSH_MS the writer takes the pending chunks of every producer and inserts them with one
statement; without Redis it also looks up the cancel flags of this worker's tickets every
POLL_MS (one indexed query); every third of the lease it checks every claim (a claim lost to the
reaper stops its producer) and renews them all with one UPDATE. Only after the commit are the
chunks visible to readers. A producer flushes its stream's first chunk itself, at once, and any
chunk after FLUSH_MS without a commit is committed at once. Finishing a ticket takes the same
lock, so its `done` is never committed ahead of its last chunks.

When the store refuses writes (a full disk, an I/O error), the chunks stay pending and the
writer retries with a growing pause, logging once when writes start failing and once when they
work again. A producer's chunks wait at most STALL_SECONDS (or MAX_PENDING chunks): then it is
stopped with STORE_FAILED, which ends its ticket failed, so memory stays bounded.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import gevent
import gevent.event
import gevent.lock
from flask import Flask
from sqlalchemy.engine import Engine

from . import events, sql, tickets
from .db import storage_failure
from .events import StoredEvent
from .state import relay_state
from .tickets import Verdict, worker_id

log = logging.getLogger("relay.writer")

# The reason a producer is stopped with when its chunks could not be stored.
STORE_FAILED = "store_failed"
# How long a producer's chunks may wait for a store that refuses writes, and how many.
STALL_SECONDS = 5.0
MAX_PENDING = 2000
MAX_RETRY_SECONDS = 1.0


class Producer(Protocol):
    """What the writer asks of a ticket's producer (`generation.Producer`)."""

    ticket_id: str

    pending: list[StoredEvent]

    def take_pending(self) -> list[StoredEvent]: ...

    def give_back(self, batch: list[StoredEvent]) -> None: ...

    def committed(self, upto: int) -> None: ...

    def stop(self, reason: str) -> None: ...


class BatchWriter:
    """Group-commits the chunks of every producer in this worker and keeps their leases alive."""

    def __init__(self, app: Flask, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.flush_seconds = app.config["FLUSH_MS"] / 1000.0
        self.lease_seconds = app.config["LEASE_SECONDS"]
        # Without Redis, a cancel sent to another worker arrives only through the database.
        self.poll_cancels = app.config["REDIS_URL"] is None
        self.idle_seconds = app.config["POLL_MS"] / 1000.0 if self.poll_cancels else (
            self.lease_seconds / 3
        )
        self.lock = gevent.lock.RLock()
        self._producers: dict[str, Producer] = {}
        self._dirty: set[str] = set()
        self._wake = gevent.event.Event()
        self._loop: gevent.Greenlet | None = None
        self._renew_at = 0.0
        self._poll_at = 0.0
        self._failing_since: float | None = None  # when the store started refusing writes
        self._retry_at = 0.0
        self._pause = self.flush_seconds

    def register(self, producer: Producer) -> None:
        self._producers[producer.ticket_id] = producer
        if self._loop is None or self._loop.dead:
            self._loop = gevent.spawn(self._run)

    def unregister(self, ticket_id: str) -> None:
        self._producers.pop(ticket_id, None)
        self._dirty.discard(ticket_id)

    def mark_dirty(self, ticket_id: str) -> None:
        """A producer has new chunks: they are committed within FLUSH_MS."""
        if ticket_id not in self._dirty:
            self._dirty.add(ticket_id)
            self._wake.set()

    def commit_now(self, ticket_id: str) -> None:
        """Commit a producer's pending chunks now (with every other producer's); the lease
        renewal and cancel poll wait for the loop's next flush, off the first token's path."""
        self._dirty.add(ticket_id)
        if self._failing_since is not None and time.monotonic() < self._retry_at:
            # The store refused the last write: the writer's loop retries when due.
            self._wake.set()
            return
        try:
            self.flush(maintenance=False)
        except Exception as exc:  # the chunks stay pending; the writer's loop retries them
            self._write_failed(exc)
            self._wake.set()

    def _run(self) -> None:
        last_flush = 0.0
        while True:
            self._wake.wait(timeout=self.idle_seconds)
            self._wake.clear()
            if not (self._producers or self._dirty):
                # Ends at a wake that finds no producer, not when the last one goes: a worker
                # serving one stream after another keeps one loop, not one started per stream.
                break
            deadline = max(last_flush + self.flush_seconds, self._retry_at)
            if (self._dirty or self._failing_since is not None) and time.monotonic() < deadline:
                gevent.sleep(deadline - time.monotonic())
            if self._dirty:
                last_flush = time.monotonic()
            try:
                self.flush()
            except Exception as exc:
                self._write_failed(exc)
        self._loop = None

    def _write_failed(self, exc: Exception) -> None:
        """Pause before the next try, twice as long each time; log a failure of the store once
        (a bug every time); stop the producers whose chunks waited too long."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._pause = self.flush_seconds
        else:
            self._pause = min(self._pause * 2, MAX_RETRY_SECONDS)
        self._retry_at = now + self._pause
        self._wake.set()  # the loop retries even if no chunk arrives
        if storage_failure(exc) is None:
            log.exception("batch write failed; retrying in %.2fs", self._pause)
        elif now == self._failing_since:
            log.warning("the store refuses writes (%s): chunks wait, retrying",
                        str(getattr(exc, "orig", exc)).splitlines()[0][:200])
        for producer in list(self._producers.values()):
            if producer.pending and (now - self._failing_since >= STALL_SECONDS
                                     or len(producer.pending) >= MAX_PENDING):
                producer.stop(STORE_FAILED)

    def _write_worked(self) -> None:
        if self._failing_since is not None:
            log.warning("the store takes writes again after %.1fs",
                        time.monotonic() - self._failing_since)
            self._failing_since = None
            self._retry_at = 0.0

    def flush(self, maintenance: bool = True) -> None:
        """Commit every pending chunk; with `maintenance`, renew the leases and poll the cancel
        flags when due, and stop producers whose claim was cancelled or lost."""
        with self.lock:
            batch = {tid: self._producers[tid].take_pending() for tid in self._dirty
                     if tid in self._producers}
            self._dirty.clear()
            now = time.monotonic()
            renew = maintenance and now >= self._renew_at
            poll = maintenance and self.poll_cancels and now >= self._poll_at
            if not (batch or renew or poll):
                return
            try:
                verdicts = self._commit(batch, renew, poll)
            except self.engine.dialect.loaded_dbapi.IntegrityError:
                # A ticket whose rows were deleted meanwhile (its conversation was): commit each
                # ticket alone, so the chunks of the others are not held back with its own.
                verdicts = self._commit_each(batch)
                renew = poll = False
            except Exception:
                for tid, rows in batch.items():
                    self._give_back(tid, rows)
                raise
            self._write_worked()
            if renew:
                self._renew_at = now + self.lease_seconds / 3
            if poll:
                self._poll_at = now + self.idle_seconds
        for tid, verdict in verdicts.items():
            producer = self._producers.get(tid)
            if producer is not None:
                self._give_back(tid, batch.get(tid, []))
                producer.stop(verdict)
        committed = [tid for tid, rows in batch.items() if rows and tid not in verdicts]
        broker = relay_state(self.app).broker
        for tid in committed:
            producer = self._producers.get(tid)
            if producer is not None:
                producer.committed(batch[tid][-1][0])
            broker.wake_local(tid)
        if committed:
            broker.publish_many(committed)

    def _commit(
        self, batch: dict[str, list[StoredEvent]], renew: bool, poll: bool
    ) -> dict[str, Verdict]:
        me = worker_id()
        with sql.Transaction(self.engine) as tx:
            # A claim can only be lost after this worker missed renewing it for a whole lease,
            # and then a renewal is due: checking at renewal time is enough. The renewal counts
            # the claims still held and not cancelled; only a shortfall needs a look at each.
            verdicts: dict[str, Verdict] = {}
            if renew:
                held = tickets.renew_leases(tx, me, time.time() + self.lease_seconds)
                if held != len(self._producers):
                    verdicts = tickets.check_claims(tx, list(self._producers), me)
            if poll:
                for tid in tickets.cancelled_claims(tx, me):
                    verdicts.setdefault(tid, Verdict.CANCELLED)
            rows: list[events.EventRow] = []
            for tid, stored in batch.items():
                if tid not in verdicts:
                    rows.extend(events.event_rows(tid, stored))
            events.insert_events(tx, rows)
        return verdicts

    def _commit_each(self, batch: dict[str, list[StoredEvent]]) -> dict[str, Verdict]:
        """Commit each ticket's rows in its own transaction; a ticket that is gone is `lost`."""
        verdicts: dict[str, Verdict] = {}
        items = list(batch.items())
        for index, (tid, stored) in enumerate(items):
            try:
                with sql.Transaction(self.engine) as tx:
                    events.insert_events(tx, events.event_rows(tid, stored))
            except self.engine.dialect.loaded_dbapi.IntegrityError:
                log.warning("ticket %s is gone from the store; its producer stops", tid)
                verdicts[tid] = Verdict.LOST
            except Exception:
                for left, rows in items[index:]:  # not committed: retried at the next flush
                    self._give_back(left, rows)
                raise
        return verdicts

    def _give_back(self, ticket_id: str, rows: list[StoredEvent]) -> None:
        producer = self._producers.get(ticket_id)
        if producer is not None and rows:
            producer.give_back(rows)
            self._dirty.add(ticket_id)

