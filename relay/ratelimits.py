"""Requests per minute on `POST /new` and `POST /v1/chat/completions`, per user, per API key and
per client address; and `check_new_request`, every limit such a request meets before it is stored.

A fixed window: a scope's minute starts at its first request, and every request checked counts
in its user's, its key's and its address's window, admitted or refused; one that takes a window
over its limit is refused until the window ends. With `REDIS_URL` the `limits` library counts (its
FixedWindowRateLimiter: an INCR whose first sets the key's expiry), shared by every worker and
host. Without Redis the store counts, by hand, because no library can: relay's gevent workers
are separate processes, and `limits` shares counts between processes only through a server
(Redis, Memcached, MongoDB); its `memory://` storage would let each worker admit the whole
limit. So each request runs one upsert ... RETURNING per scope in one short transaction on
`request_counts` (SQLite's write lock, or PostgreSQL's row lock, serialises them), the same
window as `limits` keeps in Redis. When no setting and no override applies, nothing runs.
Must not use `request` or `g`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from . import quotas, sql
from .db import db
from .errors import ErrorCode, TooManyRequests
from .signin import client_address
from .state import relay_state

WINDOW_SECONDS = 60
_WHO = {"key": "this API key", "address": "your address"}
_COUNT = (
    "INSERT INTO request_counts (scope, window_start, requests) VALUES (?, ?, 1) "
    "ON CONFLICT (scope) DO UPDATE SET "
    "requests = CASE WHEN request_counts.window_start <= ? THEN 1 "
    "ELSE request_counts.requests + 1 END, "
    "window_start = CASE WHEN request_counts.window_start <= ? THEN ? "
    "ELSE request_counts.window_start END "
    "RETURNING requests, window_start"
)
_PURGE = "DELETE FROM request_counts WHERE window_start <= ?"


@dataclass(frozen=True)
class Count:
    """A scope's window after this request: admitted or not, and when it ends."""

    scope: str  # `user:<owner>`, `key:<key_id>` or `address:<address>`
    limit: int
    admitted: bool
    reset_at: float


def retry_after(reset_at: float, now: float) -> int:
    """Whole seconds until a window ending at `reset_at` has ended (1 to a minute)."""
    return max(1, min(WINDOW_SECONDS, math.ceil(reset_at - now)))


def refusal(counts: list[Count], now: float) -> TooManyRequests | None:
    """The 429 for the first window these counts took over its limit, else None."""
    for count in counts:
        if not count.admitted:
            who = _WHO.get(count.scope.split(":", 1)[0], "you")
            wait = retry_after(count.reset_at, now)
            return TooManyRequests(
                f"Too many requests for {who} (at most {count.limit} a minute); try again in "
                f"{wait} s.", retry_after=wait, code=ErrorCode.RATE_LIMITED)
    return None


def check_new_request(
    app: Flask, owner: str, key_id: str | None, environ: dict[str, Any]
) -> None:
    """Every limit a new request (`POST /new`, `/v1/chat/completions`) meets before anything is
    stored: its requests per minute counted, then its quotas checked (429 when over)."""
    check_requests(app, owner, key_id, environ)
    # A page's EventSource cannot read the claim's 429 on /sse: the quotas refuse here first.
    quotas.precheck(app, owner, key_id)


def check_requests(app: Flask, owner: str, key_id: str | None, environ: dict[str, Any]) -> None:
    """Count a request against its user's, key's and address's requests per minute; raise 429
    `rate_limited` when one is over."""
    config = app.config
    overrides = quotas.any_override(app)
    per_address = config["ADDRESS_REQUESTS_PER_MINUTE"]
    if (config["REQUESTS_PER_MINUTE"] is None and config["KEY_REQUESTS_PER_MINUTE"] is None
            and per_address is None and not overrides):
        return
    state = relay_state(app)
    limits = state.credentials.get(("requests_per_minute", owner, key_id),
                                   lambda: _limits(config, owner, key_id, overrides))
    if per_address is not None:
        address = client_address(environ, config["TRUSTED_PROXIES"])
        limits = [*limits, (f"address:{address}", per_address)]
    if not limits:
        return
    now = time.time()
    error = refusal(state.request_counter.count(limits, now), now)
    if error is not None:
        raise error


def _limits(
    config: dict[str, Any], owner: str, key_id: str | None, overrides: bool
) -> list[tuple[str, int]]:
    """The (scope, requests per minute) of the user and key that have one."""
    if not overrides:
        scopes = [(f"user:{owner}", config["REQUESTS_PER_MINUTE"])]
        if key_id is not None:
            scopes.append((f"key:{key_id}", config["KEY_REQUESTS_PER_MINUTE"]))
    else:
        with sql.Transaction(db.engine) as tx:
            scopes = [(scope.name, scope.limits.requests_per_minute)
                      for scope in quotas.effective_scopes(tx, config, owner, key_id)]
    return [(scope, limit) for scope, limit in scopes if limit is not None]


class RequestCounter:
    """Counts requests in Redis (with `limits`) when configured, else in the store."""

    def __init__(self, redis_url: str | None) -> None:
        self._redis_url = redis_url
        self._limiter: FixedWindowRateLimiter | None = None  # made on first use, not at import
        self._purged = 0.0

    def count(self, limits: list[tuple[str, int]], now: float) -> list[Count]:
        """Count one request in each scope's window."""
        if self._redis_url is not None:
            return [self._count_in_redis(scope, limit, now) for scope, limit in limits]
        purge = now - self._purged > WINDOW_SECONDS
        ended = now - WINDOW_SECONDS
        counts = []
        with sql.Transaction(db.engine) as tx:
            if purge:  # windows of scopes that stopped asking, once a minute per worker
                tx.execute(_PURGE, (ended,))
            for scope, limit in limits:
                requests, start = tx.execute(_COUNT, (scope, now, ended, ended, now)).fetchone()
                counts.append(Count(scope, limit, requests <= limit, start + WINDOW_SECONDS))
        if purge:
            self._purged = now
        return counts

    def _count_in_redis(self, scope: str, limit: int, now: float) -> Count:
        if self._limiter is None:
            self._limiter = FixedWindowRateLimiter(storage_from_string(self._redis_url or ""))
        item = RateLimitItemPerMinute(limit)
        if self._limiter.hit(item, "relay-requests", scope):
            return Count(scope, limit, True, now + WINDOW_SECONDS)
        reset_at = self._limiter.get_window_stats(item, "relay-requests", scope).reset_time
        return Count(scope, limit, False, reset_at)
