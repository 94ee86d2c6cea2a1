"""The producer: reads the upstream, stores its chunks in batches, signals readers, writes `done`.

One producer runs per ticket, in the worker that won the claim. A pump greenlet iterates the
upstream into a queue; the producer loop owns every deadline (flush, upstream silence, lease
renewal) and every way of ending (finish, upstream error, cancel, lost claim), and it writes
exactly one `done`. Killing the pump closes the upstream call. Must not count readers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import gevent
import gevent.queue
from flask import Flask

from . import metrics, tickets
from .broker import Broker
from .upstream import ChatRequest, Delta, Finish, Upstream, UpstreamError

log = logging.getLogger("relay.generation")

_CANCEL = object()
_producers: dict[str, gevent.Greenlet] = {}
_worker_ids: dict[int, str] = {}


def worker_id() -> str:
    """This process's identity in ticket claims (host and pid, unique per fork)."""
    pid = os.getpid()
    if pid not in _worker_ids:
        _worker_ids[pid] = f"{socket.gethostname()[:40]}:{pid}:{os.urandom(3).hex()}"
    return _worker_ids[pid]


def is_local(ticket_id: str) -> bool:
    """True when this process is generating ticket_id."""
    return ticket_id in _producers


def start_generation(app: Flask, ticket_id: str) -> None:
    """Spawn the producer of a ticket this worker has just claimed."""
    _producers[ticket_id] = gevent.spawn(_Producer(app, ticket_id).run)


def stop_all(reason: str) -> None:
    """Fail every ticket this worker is generating (the worker is shutting down)."""
    for greenlet in list(_producers.values()):
        greenlet.kill(exception=_Shutdown(reason), block=False)
    gevent.joinall(list(_producers.values()), timeout=5)


class _Shutdown(Exception):
    pass


class _Producer:
    def __init__(self, app: Flask, ticket_id: str) -> None:
        self.app = app
        self.ticket_id = ticket_id
        state = app.extensions["relay"]
        self.upstream: Upstream = state.upstream
        self.broker: Broker = state.broker
        self.worker_id = worker_id()
        self.flush_seconds = app.config["FLUSH_MS"] / 1000.0
        self.lease_seconds = app.config["LEASE_SECONDS"]
        self.upstream_timeout = app.config["UPSTREAM_TIMEOUT_SECONDS"]
        self.queue: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self.pending: list[tickets.StoredEvent] = []
        self.text_parts: list[str] = []
        self.seq = 0
        self.last_flush = 0.0
        self.started = time.monotonic()

    def run(self) -> None:
        pump: gevent.Greenlet | None = None
        outcome: dict[str, Any] = {"status": "failed"}
        try:
            with self.app.app_context():
                request = tickets.db.session.get(tickets.Ticket, self.ticket_id).request
                tickets.db.session.remove()
                pump = gevent.spawn(self._pump, ChatRequest.from_stored(request))
                self.broker.on_cancel(self.ticket_id, lambda: self.queue.put(_CANCEL))
                outcome = self._drive()
        except _Shutdown as exc:
            outcome = _failed("server_shutdown", f"The relay shut down ({exc}).")
        except Exception as exc:
            log.exception("producer of ticket %s crashed", self.ticket_id)
            outcome = _failed("internal_error", f"The relay failed while generating: {exc}")
        finally:
            if pump is not None:
                pump.kill(block=True, timeout=5)
            self.broker.off_cancel(self.ticket_id)
            if outcome.get("status") != "lost":
                self._finish(outcome)
            _producers.pop(self.ticket_id, None)
            log.info(
                "ticket %s %s after %.2fs, %d chunks", self.ticket_id, outcome["status"],
                time.monotonic() - self.started, self.seq,
            )

    def _pump(self, request: ChatRequest) -> None:
        try:
            for item in self.upstream.stream(request):
                self.queue.put(item)
        except UpstreamError as exc:
            self.queue.put(exc)
        except Exception as exc:
            log.exception("upstream of ticket %s raised", self.ticket_id)
            self.queue.put(UpstreamError("upstream_error", f"The upstream call failed: {exc}"))

    def _drive(self) -> dict[str, Any]:
        now = time.monotonic()
        upstream_deadline = now + self.upstream_timeout
        renew_at = now + self.lease_seconds / 3
        while True:
            deadline = min(upstream_deadline, renew_at)
            if self.pending:
                deadline = min(deadline, self.last_flush + self.flush_seconds)
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except gevent.queue.Empty:
                item = None
            now = time.monotonic()
            if isinstance(item, Delta):
                if item.text:
                    if self.seq == 0:
                        metrics.TIME_TO_FIRST_CHUNK.observe(now - self.started)
                    self.seq += 1
                    self.pending.append(
                        (self.seq, "delta", json.dumps({"delta": item.text}, ensure_ascii=False))
                    )
                    self.text_parts.append(item.text)
                upstream_deadline = now + self.upstream_timeout
            elif isinstance(item, Finish):
                return {
                    "status": "completed", "finish_reason": item.finish_reason,
                    "usage": item.usage,
                }
            elif isinstance(item, UpstreamError):
                return _failed(item.code, item.message)
            elif item is _CANCEL:
                return {"status": "cancelled", "finish_reason": "cancelled"}
            elif now >= upstream_deadline:
                return _failed(
                    "upstream_timeout",
                    f"The upstream sent nothing for {self.upstream_timeout:g} seconds.",
                )
            flush_due = self.pending and now - self.last_flush >= self.flush_seconds
            if flush_due or now >= renew_at:
                result = self._flush(now)
                renew_at = now + self.lease_seconds / 3
                if result == "cancelled":
                    return {"status": "cancelled", "finish_reason": "cancelled"}
                if result == "lost":
                    log.warning("ticket %s: claim lost, stopping", self.ticket_id)
                    return {"status": "lost"}

    def _flush(self, now: float) -> str:
        batch = self.pending
        result = tickets.append_events(self.ticket_id, self.worker_id, batch, self.lease_seconds)
        self.last_flush = now
        if result == "ok":
            self.pending = []
            metrics.CHUNKS_RELAYED.inc(len(batch))
            if batch:
                self.broker.notify(self.ticket_id)
        return result

    def _finish(self, outcome: dict[str, Any]) -> None:
        try:
            with self.app.app_context():
                done_seq = tickets.finish_ticket(
                    self.ticket_id,
                    status=outcome["status"],
                    pending_events=self.pending,
                    text="".join(self.text_parts),
                    finish_reason=outcome.get("finish_reason"),
                    usage=outcome.get("usage"),
                    error=outcome.get("error"),
                    worker_id=self.worker_id,
                )
        except Exception:
            log.exception("could not store the end of ticket %s", self.ticket_id)
            return
        if done_seq is None:
            log.warning("ticket %s was already finished elsewhere", self.ticket_id)
        else:
            error = outcome.get("error") or {}
            metrics.CHUNKS_RELAYED.inc(len(self.pending))
            metrics.TICKETS_FINISHED.labels(outcome["status"], error.get("code", "")).inc()
        self.broker.notify(self.ticket_id)


def _failed(code: str, message: str) -> dict[str, Any]:
    error = {"code": code, "message": message}
    return {"status": "failed", "finish_reason": "error", "error": error}
