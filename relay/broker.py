"""Signals that "ticket X has new events" and "cancel ticket X", never the events themselves.

Readers in this process are woken in memory (a gevent Waiter per waiting reader). With Redis
configured, signals also cross to other workers and hosts over pub/sub; without it, readers whose
producer runs elsewhere poll the database (the truth) every RELAY_POLL_MS. The Redis listener is
started lazily, after gunicorn forked and patched, never at import.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import redis
from gevent.hub import Waiter, get_hub

log = logging.getLogger("relay.broker")

_EVENTS_CHANNEL = "relay:events"
_CANCEL_CHANNEL = "relay:cancel"


@dataclass(slots=True)
class _Watch:
    version: int = 0
    readers: int = 0
    sleepers: list[Waiter[bool]] = field(default_factory=list)


class Broker:
    """In-process wake-ups and cancel callbacks, mirrored over Redis pub/sub when configured."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self._watches: dict[str, _Watch] = {}
        self._cancel_callbacks: dict[str, Callable[[], None]] = {}
        self._origin = secrets.token_hex(6)
        self._redis: redis.Redis | None = None
        self._listener: gevent.Greenlet[[redis.client.PubSub | None], None] | None = None
        self._pid = os.getpid()

    @property
    def crosses_processes(self) -> bool:
        return self.redis_url is not None

    def version(self, ticket_id: str) -> int:
        """A counter that changes whenever `notify(ticket_id)` runs in this process."""
        watch = self._watches.get(ticket_id)
        return watch.version if watch else 0

    def watch(self, ticket_id: str) -> None:
        """Register interest in ticket_id, so no notify between `version` and `wait` is lost;
        every `watch` needs its `unwatch`."""
        self._ensure_listener()
        watch = self._watches.get(ticket_id)
        if watch is None:
            watch = self._watches[ticket_id] = _Watch()
        watch.readers += 1

    def unwatch(self, ticket_id: str) -> None:
        watch = self._watches[ticket_id]
        watch.readers -= 1
        if watch.readers == 0:
            del self._watches[ticket_id]

    def wait(self, ticket_id: str, seen_version: int, timeout: float) -> bool:
        """While watching: block until notified after `seen_version` (True) or `timeout` passes.

        A Waiter and a bare timer, not an Event with a timeout: that built a Timeout exception
        object on every wait, twice the cost, and readers wait once per token.
        """
        watch = self._watches[ticket_id]
        if watch.version != seen_version:
            return True
        hub = get_hub()
        waiter: Waiter[bool] = Waiter(hub)
        timer = hub.loop.timer(timeout)
        timer.start(waiter.switch, False)
        watch.sleepers.append(waiter)
        try:
            return bool(waiter.get())
        finally:
            timer.close()
            if waiter in watch.sleepers:  # timed out (or killed) before a wake
                watch.sleepers.remove(waiter)

    def notify(self, ticket_id: str) -> None:
        """Wake every reader of ticket_id, here and (with Redis) on other workers and hosts."""
        self.wake_local(ticket_id)
        self._publish(_EVENTS_CHANNEL, ticket_id)

    def publish_many(self, ticket_ids: list[str]) -> None:
        """Tell other workers and hosts (with Redis) that these tickets have new stored events."""
        if self.redis_url is None:
            return
        try:
            pipeline = self._client().pipeline(transaction=False)
            for ticket_id in ticket_ids:
                pipeline.publish(_EVENTS_CHANNEL, f"{self._origin}:{ticket_id}")
            pipeline.execute()
        except Exception as exc:
            log.warning("redis publish failed: %s", exc)

    def on_cancel(self, ticket_id: str, callback: Callable[[], None]) -> None:
        """Register the local producer's cancel callback for ticket_id."""
        self._ensure_listener()
        self._cancel_callbacks[ticket_id] = callback

    def off_cancel(self, ticket_id: str) -> None:
        self._cancel_callbacks.pop(ticket_id, None)

    def cancel(self, ticket_id: str) -> None:
        """Tell the producer of ticket_id to stop, wherever it runs."""
        self._cancel_local(ticket_id)
        self._publish(_CANCEL_CHANNEL, ticket_id)

    def wake_local(self, ticket_id: str) -> None:
        """Wake the readers of ticket_id in this process."""
        watch = self._watches.get(ticket_id)
        if watch is not None:
            watch.version += 1
            if watch.sleepers:
                sleepers, watch.sleepers = watch.sleepers, []
                run_callback = get_hub().loop.run_callback
                for waiter in sleepers:
                    run_callback(waiter.switch, True)

    def _cancel_local(self, ticket_id: str) -> None:
        callback = self._cancel_callbacks.get(ticket_id)
        if callback is not None:
            callback()

    def _publish(self, channel: str, ticket_id: str) -> None:
        if self.redis_url is None:
            return
        try:
            self._client().publish(channel, f"{self._origin}:{ticket_id}")
        except Exception as exc:  # Redis is an accelerator; the database stays the truth.
            log.warning("redis publish failed: %s", exc)

    def _client(self) -> redis.Redis:
        if self._redis is None or self._pid != os.getpid():
            assert self.redis_url is not None
            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            self._pid = os.getpid()
        return self._redis

    def _ensure_listener(self) -> None:
        """Subscribe now, in the caller, so that no signal published once it has returned is
        missed (pub/sub keeps nothing for late subscribers); then listen in a greenlet."""
        if self.redis_url is None or (self._listener is not None and not self._listener.dead):
            return
        try:
            pubsub = self._subscribe()
        except Exception as exc:  # the listener keeps trying; the database stays the truth
            log.warning("redis subscribe failed, retrying in the background: %s", exc)
            pubsub = None
        self._listener = gevent.spawn(self._listen, pubsub)

    def _subscribe(self) -> redis.client.PubSub:
        pubsub: redis.client.PubSub = self._client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(_EVENTS_CHANNEL, _CANCEL_CHANNEL)
        return pubsub

    def _listen(self, pubsub: redis.client.PubSub | None) -> None:
        while True:
            try:
                pubsub = pubsub or self._subscribe()
                for message in pubsub.listen():
                    self._dispatch(message["channel"], message["data"])
            except Exception as exc:
                log.warning("redis listener failed, retrying in 1s: %s", exc)
                pubsub = None
                gevent.sleep(1.0)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        origin, _, ticket_id = data.decode().partition(":")
        if origin == self._origin:
            return
        if channel.decode() == _EVENTS_CHANNEL:
            self.wake_local(ticket_id)
        else:
            self._cancel_local(ticket_id)
