"""Open streams per user and per client address: one more than the limit is refused before it
starts (`429` `too_many_streams`), so one client cannot hold thousands of sockets.

A stream takes a slot when it is admitted and gives it back when its response is closed (the
client left, `done` was sent, or the view failed after admitting it). Slots are counted on every
worker and host together: with `REDIS_URL` in one sorted set per scope (`user:<owner>`,
`address:<address>`) of slot ids scored by when they expire, admitted by a Lua script (drop the
expired, count, refuse or add, atomically); without Redis in the store's `open_streams` table,
one row per slot, admitted in one transaction that inserts first and counts after (SQLite's
write lock, or PostgreSQL's advisory lock per scope, serialises them). No library counts
concurrent holders this way (`limits` counts hits in windows, which a stream's end cannot give
back). Every worker renews its slots' expiry every third of `RELAY_LEASE_SECONDS`, so the slots
of a killed worker stop counting within a lease. A signed-in user's limit is their override
(`relay users limits --max-streams`, `quotas.max_streams`, seen within a second) when they have
one, else the setting: an override only changes the limit an admission checks (with Redis, the
script's argument), so a user's streams opened while no per-user limit applied to them took no
place and do not count against it. When neither limit is set and no user or key has an
override, nothing runs. Must not use `request` or `g`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import gevent
import redis
from flask import Flask
from sqlalchemy.engine import Engine

from . import quotas, sql
from .errors import ErrorCode, TooManyRequests
from .signin import client_address
from .state import relay_state
from .tickets import worker_id

log = logging.getLogger("relay.openstreams")

RETRY_SECONDS = 5  # a refused stream's Retry-After: streams end all the time
_KEY = "relay:streams:{}"
# KEYS: the scopes' sets; ARGV: now, expiry, slot id, "1" to add it (else only count), limits.
# Returns 0 (admitted), else the 1-based index of the first scope at its limit.
_ADMIT = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then return i end
end
if ARGV[4] == '1' then
  local ttl = math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1
  for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, ARGV[2], ARGV[3])
    redis.call('EXPIRE', key, ttl)
  end
end
return 0
"""
_INSERT = "INSERT INTO open_streams (id, owner, address, worker, expires_at) VALUES (?, ?, ?, ?, ?)"
_COUNT = "SELECT COUNT(*) FROM open_streams WHERE {} = ? AND expires_at > ?"
_DELETE = "DELETE FROM open_streams WHERE id = ?"
_RENEW = "UPDATE open_streams SET expires_at = ? WHERE worker = ?"
_PURGE = "DELETE FROM open_streams WHERE expires_at < ?"
_LOCK = "SELECT pg_advisory_xact_lock(?)"


class Slot:
    """One admitted stream's place; `release` gives it back (once, however often called)."""

    __slots__ = ("id", "scopes", "_limiter")

    def __init__(self, limiter: StreamLimiter, slot_id: str, scopes: list[str]) -> None:
        self.id = slot_id
        self.scopes = scopes
        self._limiter: StreamLimiter | None = limiter

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.release(self)


class StreamLimiter:
    """Admits and releases this worker's streams against the open-stream limits."""

    def __init__(self, config: dict[str, Any], engine: Engine) -> None:
        self._engine = engine  # a stream's body is closed outside the app's context
        self.per_user: int | None = config["MAX_STREAMS_PER_USER"]
        self.per_address: int | None = config["MAX_STREAMS_PER_ADDRESS"]
        self.trusted: tuple[str, ...] = config["TRUSTED_PROXIES"]
        self.lease = float(config["LEASE_SECONDS"])
        self._redis_url: str | None = config["REDIS_URL"]
        self._redis: redis.Redis | None = None  # made on first use, in the worker
        self._script: Any = None
        self._pid = 0
        self._held: dict[str, Slot] = {}  # this worker's open slots
        self._renewer: gevent.Greenlet | None = None

    @property
    def enabled(self) -> bool:
        return self.per_user is not None or self.per_address is not None

    def admit(self, owner: str, address: str, *, take: bool = True,
              per_user: int | None = None) -> Slot | None:
        """A slot for one more stream of `owner` from `address`, or 429 `too_many_streams`;
        with `take` False (a HEAD) only the check. None when no slot was taken. `per_user`:
        the owner's limit (their override), else the setting's."""
        scopes = self._scopes(owner, address, self.per_user if per_user is None else per_user)
        if not scopes:
            return None
        slot_id = secrets.token_hex(16)
        now = time.time()
        if self._redis_url is not None:
            full = self._admit_in_redis(scopes, slot_id, now, take)
        else:
            full = self._admit_in_store(scopes, slot_id, owner, address, now, take)
        if full is not None:
            raise _refusal(full)
        if not take:
            return None
        slot = Slot(self, slot_id, [scope for scope, _, _ in scopes])
        self._held[slot_id] = slot
        if self._renewer is None or self._renewer.dead:
            self._renewer = gevent.spawn(self._renew_while_held)
        return slot

    def release(self, slot: Slot) -> None:
        """Give a slot back now (a failure leaves it to expire with its lease)."""
        self._held.pop(slot.id, None)
        try:
            if self._redis_url is not None:
                pipeline = self._client().pipeline(transaction=False)
                for scope in slot.scopes:
                    pipeline.zrem(_KEY.format(scope), slot.id)
                pipeline.execute()
            else:
                with sql.Transaction(self._engine) as tx:
                    tx.execute(_DELETE, (slot.id,))
        except Exception as exc:
            log.warning("an open stream's slot could not be released (it expires): %s",
                        type(exc).__name__)

    def _scopes(self, owner: str, address: str, per_user: int | None
                ) -> list[tuple[str, str, int]]:
        """(scope name, store column, limit) of each limit that applies."""
        scopes = []
        if per_user is not None:
            scopes.append((f"user:{owner}", "owner", per_user))
        if self.per_address is not None:
            scopes.append((f"address:{address}", "address", self.per_address))
        return scopes

    def _admit_in_redis(
        self, scopes: list[tuple[str, str, int]], slot_id: str, now: float, take: bool
    ) -> tuple[str, int] | None:
        client = self._client()
        if self._script is None:
            self._script = client.register_script(_ADMIT)
        keys = [_KEY.format(scope) for scope, _, _ in scopes]
        args = [now, now + self.lease, slot_id, "1" if take else "0",
                *(limit for _, _, limit in scopes)]
        full = int(self._script(keys=keys, args=args))
        return None if full == 0 else (scopes[full - 1][0], scopes[full - 1][2])

    def _admit_in_store(
        self, scopes: list[tuple[str, str, int]], slot_id: str, owner: str, address: str,
        now: float, take: bool,
    ) -> tuple[str, int] | None:
        engine = self._engine
        owner, address = owner[:128], address[:64]
        try:
            with sql.Transaction(engine) as tx:
                if engine.dialect.name == "postgresql":
                    for scope, _, _ in scopes:  # users before addresses, always: no deadlock
                        tx.execute(_LOCK, (_lock_key(scope),))
                if take:  # on SQLite, this write takes the lock the counts below rely on
                    tx.execute(_INSERT, (slot_id, owner, address, worker_id(), now + self.lease))
                for scope, column, limit in scopes:
                    value = owner if column == "owner" else address
                    count = tx.execute(_COUNT.format(column), (value, now)).fetchone()[0]
                    if count > limit or (not take and count >= limit):
                        raise _Full(scope, limit)  # rolls the insert back
        except _Full as full:
            return full.scope, full.limit
        return None

    def _renew_while_held(self) -> None:
        """Every third of the lease, push the expiry of every slot this worker holds; ends
        when it holds none."""
        while self._held:
            gevent.sleep(self.lease / 3)
            if not self._held:
                break
            try:
                self._renew(time.time())
            except Exception as exc:  # tried again in a third of the lease
                log.warning("open stream slots could not be renewed: %s", type(exc).__name__)

    def _renew(self, now: float) -> None:
        until = now + self.lease
        if self._redis_url is not None:
            pipeline = self._client().pipeline(transaction=False)
            ttl = math.ceil(self.lease) + 1
            for slot in list(self._held.values()):
                for scope in slot.scopes:
                    pipeline.zadd(_KEY.format(scope), {slot.id: until}, xx=True)
                    pipeline.expire(_KEY.format(scope), ttl)
            pipeline.execute()
            return
        with sql.Transaction(self._engine) as tx:
            tx.execute(_RENEW, (until, worker_id()))
            tx.execute(_PURGE, (now,))  # slots of workers that died

    def _client(self) -> redis.Redis:
        if self._redis is None or self._pid != os.getpid():
            assert self._redis_url is not None
            self._redis = redis.Redis.from_url(self._redis_url, socket_timeout=5)
            self._script = None
            self._pid = os.getpid()
        return self._redis


class _Full(Exception):
    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(scope)
        self.scope, self.limit = scope, limit


def _refusal(full: tuple[str, int]) -> TooManyRequests:
    scope, limit = full
    who = "your address" if scope.startswith("address:") else "you"
    return TooManyRequests(
        f"Too many streams open at once for {who} (at most {limit}); close one, or wait for "
        "one to end.", retry_after=RETRY_SECONDS, code=ErrorCode.TOO_MANY_STREAMS)


def _lock_key(scope: str) -> int:
    """A scope's PostgreSQL advisory lock (a signed 64-bit hash; a collision only serialises)."""
    return int.from_bytes(hashlib.blake2b(scope.encode(), digest_size=8).digest(), "big",
                          signed=True)


def open_stream(app: Flask, owner: str, environ: dict[str, Any], *, take: bool = True
                ) -> Slot | None:
    """Admit one more stream of `owner` from the request's client address (429 when a limit
    is reached); its slot, to be released when the stream's response closes. None (and nothing
    run) when no limit is set and no override exists."""
    limiter = relay_state(app).open_streams
    overrides = quotas.any_override(app)  # looked for once a second
    if not limiter.enabled and not overrides:
        return None
    per_user = quotas.max_streams(app, owner) if overrides else limiter.per_user
    return limiter.admit(owner, client_address(environ, limiter.trusted), take=take,
                         per_user=per_user)


def held(body: Iterator[bytes], slot: Slot | None) -> Iterator[bytes]:
    """`body`, releasing `slot` when the server closes it (however the stream ended)."""
    return body if slot is None else _Held(body, slot)


class _Held:
    """A stream's body that gives its slot back on `close`, which the WSGI server calls after
    the last byte, on a disconnect, and even when the body was never started (a generator's
    `finally` would not run then)."""

    __slots__ = ("_body", "_slot")

    def __init__(self, body: Iterator[bytes], slot: Slot) -> None:
        self._body = body
        self._slot = slot

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> bytes:
        return next(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._slot.release()
