"""Limits: token quotas per day and month and concurrent generations, per user and per API key,
reserved by a ticket's claim and settled by its finish; and the per-user/per-key overrides.

A claim that a limit applies to runs `Admission.admit` in its own transaction: first a write
that serialises every claim of the same user (or key) -- on PostgreSQL the upsert of its
`usage_totals` row locks that row, on SQLite the claim's first write already holds the database's
write lock -- then it reads what was used (`usage_totals`) and what is reserved (`reservations`),
and refuses (raising, which rolls the claim back) or inserts its reservation. The finish of every
ticket deletes it (`usage.record`). When no limit is configured and no override exists, claims
run nothing of this. Must not use `request` or `g`.
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, fields
from typing import Any, cast

from flask import Flask
from sqlalchemy import Table, null, select

from . import estimate, sql, usage
from .db import db
from .errors import ErrorCode, InvalidRequest, NotFound, TooManyRequests
from .models import ApiKey, User
from .state import relay_state

LIMIT_NAMES = ("tokens_per_day", "tokens_per_month", "max_generations", "requests_per_minute",
               "max_streams")
_CLAIM_LIMITS = LIMIT_NAMES[:3]  # what a claim checks (requests per minute: ratelimits.py)
# Open streams count per user (with all their keys) and per address (openstreams.py), never per
# key: a key's ticket is its user's, and its streams are theirs.
KEY_LIMIT_NAMES = LIMIT_NAMES[:4]
_RETRY_GENERATIONS = 5  # seconds: a generation usually ends within that
_ADJECTIVES = {"day": "daily", "month": "monthly"}
_ANY_OVERRIDE = (
    "SELECT 1 FROM users WHERE limits IS NOT NULL "
    "UNION ALL SELECT 1 FROM api_keys WHERE limits IS NOT NULL"
)
_USER_LIMITS = "SELECT limits FROM users WHERE id = ?"
_KEY_LIMITS = "SELECT limits FROM api_keys WHERE id = ?"
_USED = "SELECT period, tokens FROM usage_totals WHERE scope = ? AND period IN (?, ?)"
_RESERVED = "SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM reservations WHERE {} = ?"
_RESERVE = (
    "INSERT INTO reservations (ticket_id, owner, key_id, tokens, created_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
_LOCK = usage.ADD_TOTALS.format("(?, ?, 0)")


@dataclass(frozen=True)
class Limits:
    """One scope's limits (None: none)."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_generations: int | None = None
    requests_per_minute: int | None = None
    max_streams: int | None = None  # open streams (openstreams.py); of a user only

    def any(self) -> bool:
        """Whether a claim has a limit of these to check."""
        return any(getattr(self, name) is not None for name in _CLAIM_LIMITS)

    def tokens(self) -> bool:
        return self.tokens_per_day is not None or self.tokens_per_month is not None

    def overridden(self, overrides: Any) -> Limits:
        """These limits with a stored override's non-null values instead."""
        if not isinstance(overrides, dict):
            return self
        return Limits(**{name: overrides.get(name) if overrides.get(name) is not None
                         else getattr(self, name) for name in LIMIT_NAMES})

    def json(self) -> dict[str, int | None]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def user_defaults(config: dict[str, Any]) -> Limits:
    return Limits(config["TOKENS_PER_DAY"], config["TOKENS_PER_MONTH"], config["MAX_GENERATIONS"],
                  config["REQUESTS_PER_MINUTE"], config["MAX_STREAMS_PER_USER"])


def key_defaults(config: dict[str, Any]) -> Limits:
    return Limits(config["KEY_TOKENS_PER_DAY"], config["KEY_TOKENS_PER_MONTH"],
                  config["MAX_GENERATIONS"], config["KEY_REQUESTS_PER_MINUTE"])


def admission(app: Flask) -> Admission | None:
    """The admission a claim runs, or None when no limit can apply (no setting, no override;
    overrides are looked for once a second)."""
    config = app.config
    if user_defaults(config).any() or key_defaults(config).any() or any_override(app):
        return Admission(config)
    return None


def any_override(app: Flask) -> bool:
    """Whether any user or key has a limit override (looked for once a second)."""
    return bool(relay_state(app).credentials.get(("limits", "any"), _any_override))


def max_streams(app: Flask, owner: str) -> int | None:
    """The open streams `owner` may have: their override, else `RELAY_MAX_STREAMS_PER_USER`
    (looked up once a second)."""
    config = app.config
    if not owner.startswith("user:"):
        return cast("int | None", config["MAX_STREAMS_PER_USER"])
    return cast("int | None", relay_state(app).credentials.get(
        ("max_streams", owner), lambda: _user_limits(config, owner).max_streams))


def _user_limits(config: dict[str, Any], owner: str) -> Limits:
    with sql.Transaction(db.engine) as tx:
        return effective_scopes(tx, config, owner, None)[0].limits


def _any_override() -> bool:
    with sql.Transaction(db.engine) as tx:
        return tx.execute(_ANY_OVERRIDE).fetchone() is not None


@dataclass
class Scope:
    """A user or key as a quota sees it."""

    name: str  # usage_totals.scope
    column: str  # of reservations
    value: str
    limits: Limits


class Admission:
    """One claim's admission: `reserved` once it took a reservation, `cap` the answer's tokens
    it reserved (None: no token quota applies)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.reserved = False
        self.prompt_tokens = 0
        self.cap: int | None = None

    def prepare(self, request: dict[str, Any]) -> None:
        """Estimate the prompt before the claim's transaction, which should hold no lock for
        it."""
        self.prompt_tokens = estimate.count_prompt(request["messages"])

    def admit(self, tx: sql.Transaction, ticket_id: str, owner: str, key_id: str | None,
              request: dict[str, Any]) -> None:
        """Reserve the ticket's tokens and generation slot, or raise 429 (in the claim's
        transaction, which the raise rolls back)."""
        scopes = applying_scopes(tx, self.config, owner, key_id)
        if not scopes:
            return
        need = 0
        if any(scope.limits.tokens() for scope in scopes):
            cap = request.get("max_tokens") or self.config["DEFAULT_MAX_TOKENS_RESERVED"]
            request["max_tokens"] = cap  # what is reserved is all the upstream may answer
            need = self.prompt_tokens + cap
            self.cap = cap
        now = time.time()
        day, month = usage.day_and_month(now)
        for scope in scopes:  # users before keys, in every transaction: no deadlock
            tx.execute(_LOCK, (scope.name, f"d:{day}"))
        for scope in scopes:
            check(scope, read_state(tx, scope, day, month), need, now, self.prompt_tokens)
        tx.execute(_RESERVE, (ticket_id, owner, key_id, need, now))
        self.reserved = True


def precheck(app: Flask, owner: str, key_id: str | None) -> None:
    """Refuse a new request early (the same 429 as the claim's) when a quota of its caller is
    already used up or their generations are at the cap; read-only, and nothing at all when no
    limit can apply. The claim's reservation stays the exact check: races end there."""
    if admission(app) is None:
        return
    now = time.time()
    day, month = usage.day_and_month(now)
    with sql.Transaction(db.engine) as tx:  # reads only: no lock taken
        for scope in applying_scopes(tx, app.config, owner, key_id):
            check(scope, read_state(tx, scope, day, month), 0, now)


def applying_scopes(
    tx: sql.Transaction, config: dict[str, Any], owner: str, key_id: str | None
) -> list[Scope]:
    """The user's and the key's effective limits, those that have any a claim checks."""
    return [scope for scope in effective_scopes(tx, config, owner, key_id) if scope.limits.any()]


def effective_scopes(
    tx: sql.Transaction, config: dict[str, Any], owner: str, key_id: str | None
) -> list[Scope]:
    """The user's and (with a key) the key's effective limits: settings, then overrides."""
    user = user_defaults(config)
    if owner.startswith("user:") and owner[5:].isdigit():
        user = user.overridden(_stored(tx, _USER_LIMITS, int(owner[5:])))
    scopes = [Scope(f"user:{owner}", "owner", owner, user)]
    if key_id is not None:
        key = key_defaults(config).overridden(_stored(tx, _KEY_LIMITS, key_id))
        scopes.append(Scope(f"key:{key_id}", "key_id", key_id, key))
    return scopes


def _stored(tx: sql.Transaction, statement: str, ident: Any) -> Any:
    row = tx.execute(statement, (ident,)).fetchone()
    return None if row is None else sql.json_value(row[0])


@dataclass(frozen=True)
class State:
    used_today: int
    used_this_month: int
    generations: int
    reserved: int


def read_state(tx: sql.Transaction, scope: Scope, day: str, month: str) -> State:
    """What a scope used today and this month, and holds in reservations."""
    used = dict(tx.execute(_USED, (scope.name, f"d:{day}", f"m:{month}")).fetchall())
    generations, reserved = tx.execute(_RESERVED.format(scope.column), (scope.value,)).fetchone()
    return State(int(used.get(f"d:{day}", 0)), int(used.get(f"m:{month}", 0)),
                 int(generations), int(reserved))


def check(scope: Scope, state: State, need: int, now: float, prompt: int = 0) -> None:
    """Raise 429 unless one more generation reserving `need` tokens (`prompt` of them its
    prompt's estimate) fits the scope's limits (`need` 0: unless nothing is left)."""
    limits = scope.limits
    who = "this API key" if scope.column == "key_id" else "you"
    periods = ((limits.tokens_per_day, state.used_today, "day", _next_day(now)),
               (limits.tokens_per_month, state.used_this_month, "month", _next_month(now)))
    for limit, _, period, _ in periods:
        if limit is not None and need > limit:
            whose = "this API key's" if scope.column == "key_id" else "your"
            raise _never_fits(whose, period, limit, need, prompt)
    if limits.max_generations is not None and state.generations >= limits.max_generations:
        raise TooManyRequests(
            f"Too many answers generating at once for {who} (at most "
            f"{limits.max_generations}); wait for one to end.",
            retry_after=_RETRY_GENERATIONS, code=ErrorCode.TOO_MANY_GENERATIONS)
    for limit, used, period, until in periods:
        if limit is not None and used + state.reserved + max(need, 1) > limit:
            wants = f"this one needs up to {need}" if need else "nothing is left"
            raise TooManyRequests(
                f"The token quota of {who} for this {period} ({limit}) would be exceeded: "
                f"{used} used, {state.reserved} reserved by answers generating, {wants}.",
                retry_after=math.ceil(until - now), code=ErrorCode.QUOTA_EXCEEDED)


def _never_fits(whose: str, period: str, limit: int, need: int, prompt: int) -> TooManyRequests:
    """The refusal of a request that reserves more than the whole quota: waiting cannot help,
    so it has no Retry-After."""
    if prompt >= limit:
        advice = f"its prompt alone is about {prompt} tokens: send a shorter one"
    else:
        advice = f"ask for a smaller `max_tokens` (at most {limit - prompt})"
    return TooManyRequests(
        f"This request can never fit {whose} {_ADJECTIVES[period]} token quota ({limit}): it "
        f"reserves up to {need} tokens (its prompt, about {prompt}, and its answer's cap, "
        f"{need - prompt}), more than the whole quota; {advice}.",
        retry_after=None, code=ErrorCode.QUOTA_EXCEEDED)


def _next_day(now: float) -> float:
    return (math.floor(now / 86400) + 1) * 86400.0


def _next_month(now: float) -> float:
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def limits_report(
    config: dict[str, Any], owner: str, key_id: str | None
) -> dict[str, Any]:
    """The effective limits of a user (and key) with what is used and reserved now."""
    now = time.time()
    day, month = usage.day_and_month(now)
    report: dict[str, Any] = {}
    with sql.Transaction(db.engine) as tx:
        for scope in effective_scopes(tx, config, owner, key_id):
            state = read_state(tx, scope, day, month)
            limits = scope.limits.json()
            if scope.column == "key_id":
                del limits["max_streams"]  # not a key's limit
            report[scope.name.split(":", 1)[0]] = {**limits, **state.__dict__}
    return report


def set_limits(kind: str, ident: Any, changes: Any) -> dict[str, int | None]:
    """Change a user's (`kind` "user", by id) or key's ("key") overrides: each given name is set
    (a positive number) or cleared (0 or None); returns the overrides now stored."""
    names = LIMIT_NAMES if kind == "user" else KEY_LIMIT_NAMES
    if kind == "key" and isinstance(changes, dict) and "max_streams" in changes:
        raise InvalidRequest("`max_streams` is a user's limit, not a key's: open streams count "
                             "per user (with all their keys) and per address.")
    if not isinstance(changes, dict) or set(changes) - set(names):
        raise InvalidRequest(f"`limits` is an object of {', '.join(names)}.")
    for name, value in changes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < 2**53):
            raise InvalidRequest(f"`{name}` is a number of 0 or more (0 or null clears it).")
    table = cast(Table, (User if kind == "user" else ApiKey).__table__)
    with db.engine.begin() as conn:
        found = conn.execute(select(table.c.limits).where(table.c.id == ident)).fetchone()
        if found is None:
            raise NotFound("No such API key." if kind == "key" else "No such user.",
                           code=ErrorCode.KEY_NOT_FOUND if kind == "key"
                           else ErrorCode.USER_NOT_FOUND)
        stored = found[0]
        merged = {**(stored if isinstance(stored, dict) else {}), **changes}
        merged = {name: value for name, value in merged.items() if value}
        conn.execute(table.update().where(table.c.id == ident).values(
            limits=merged or null()))
    return {name: merged.get(name) for name in names}
