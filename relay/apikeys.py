"""API keys: created (the secret shown once), listed, revoked, and looked up per request.

A key is `rk_` and 43 random URL-safe characters (256 bits). The store keeps its HMAC-SHA256
under a key derived from the app's secret (a leaked database alone checks no key) and its first
ten characters, the prefix that lists and error messages show. Revoking a key stops the answers
it is generating. Must not use `request` or `g`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select, update

from . import generation, tickets
from .db import db
from .errors import ErrorCode, InvalidRequest, NotFound
from .models import ApiKey, User
from .users import UserInfo

_keys = cast(Table, ApiKey.__table__)
_users = cast(Table, User.__table__)
KEY_START = "rk_"
_KEY_LENGTH = len(KEY_START) + 43
PREFIX_LENGTH = 10
_TOUCH_EVERY = 60.0  # seconds between two writes of a key's `last_used_at`
MAX_NAME = 100


@dataclass(frozen=True)
class KeyInfo:
    """A working key as a request sees it."""

    id: str
    prefix: str
    user: UserInfo
    models: tuple[str, ...] | None  # None: any model

    def allows(self, model: str) -> bool:
        """Whether requests made with this key may use `model`."""
        return self.models is None or model in self.models


def create_key(
    user: UserInfo, secret_key: str | bytes, name: str = "", expires_days: float | None = None,
    models: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """A new key of `user`: its listing and the key itself, which is never shown again."""
    if not isinstance(name, str) or len(name) > MAX_NAME or "\x00" in name:
        raise InvalidRequest(f"A key's name is text of at most {MAX_NAME} characters.")
    if expires_days is not None and (
        isinstance(expires_days, bool) or not isinstance(expires_days, int | float)
        or not 0 < expires_days <= 3650
    ):
        raise InvalidRequest("`expires_days` is a number of days from 1 to 3650.")
    if models is not None and (
        not isinstance(models, list) or not models
        or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in models)
    ):
        raise InvalidRequest("`models` is a non-empty list of model names.")
    secret = KEY_START + secrets.token_urlsafe(32)
    now = time.time()
    row = {
        "id": "key_" + secrets.token_urlsafe(9), "user_id": user.id, "name": name,
        "prefix": secret[:PREFIX_LENGTH], "secret_hash": _digest(secret_key, secret),
        "models": models, "created_at": now,
        "expires_at": now + expires_days * 86400 if expires_days else None,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(_keys).values(**row))
    return _listing(row | {"last_used_at": None, "revoked_at": None}, user.name), secret


def list_keys(user: UserInfo | None = None) -> list[dict[str, Any]]:
    """The keys of `user` (everyone's when None), newest first; never the keys themselves."""
    query = (select(_keys, _users.c.name.label("user_name"))
             .join(_users, _users.c.id == _keys.c.user_id)
             .order_by(_keys.c.created_at.desc()))
    if user is not None:
        query = query.where(_keys.c.user_id == user.id)
    with db.engine.connect() as conn:
        rows = conn.execute(query).mappings().fetchall()
    return [_listing(row, row["user_name"]) for row in rows]


def revoke_key(key_id: str, user: UserInfo | None = None) -> dict[str, Any]:
    """Revoke a key (of `user`, when given: anyone else's is 404) and stop its answers."""
    query = select(_keys.c.id, _keys.c.user_id).where(_keys.c.id == key_id)
    if user is not None:
        query = query.where(_keys.c.user_id == user.id)
    with db.engine.begin() as conn:
        # No id holds a NUL, and PostgreSQL cannot compare text with one.
        usable = isinstance(key_id, str) and "\x00" not in key_id
        found = conn.execute(query).fetchone() if usable else None
        if found is None:
            raise NotFound("No such API key.", code=ErrorCode.KEY_NOT_FOUND)
        conn.execute(update(_keys).where(_keys.c.id == key_id, _keys.c.revoked_at.is_(None))
                     .values(revoked_at=time.time()))
    for ticket_id in tickets.running_tickets(f"user:{found.user_id}", key_id):
        generation.cancel(ticket_id, "its API key was revoked", reason=ErrorCode.KEY_REVOKED)
    return {"id": key_id, "revoked": True}


def key_by_secret(secret_key: str | bytes, secret: str) -> KeyInfo | None:
    """The working key (not revoked or expired, its user enabled) that `secret` is, else None."""
    if len(secret) != _KEY_LENGTH or not secret.startswith(KEY_START):
        return None
    return _working_key(_keys.c.secret_hash == _digest(secret_key, secret))


def key_by_id(key_id: str) -> KeyInfo | None:
    """The working key with this id (a stream token names it), else None."""
    return _working_key(_keys.c.id == key_id)


def _working_key(where: Any) -> KeyInfo | None:
    now = time.time()
    with db.engine.connect() as conn:
        row = conn.execute(
            select(_keys.c.id, _keys.c.prefix, _keys.c.models, _keys.c.last_used_at,
                   _users.c.id.label("user_id"), _users.c.name, _users.c.admin)
            .join(_users, _users.c.id == _keys.c.user_id)
            .where(where, _keys.c.revoked_at.is_(None), _users.c.disabled_at.is_(None),
                   (_keys.c.expires_at.is_(None)) | (_keys.c.expires_at > now))
        ).fetchone()
    if row is None:
        return None
    if (row.last_used_at or 0) < now - _TOUCH_EVERY:
        with db.engine.begin() as conn:
            conn.execute(update(_keys).where(_keys.c.id == row.id).values(last_used_at=now))
    user = UserInfo(row.user_id, row.name, bool(row.admin))
    models = tuple(row.models) if row.models else None
    return KeyInfo(row.id, row.prefix, user, models)


def _listing(row: Any, user_name: str) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "prefix": row["prefix"], "user": user_name,
        "models": row["models"], "created_at": row["created_at"],
        "expires_at": row["expires_at"], "last_used_at": row["last_used_at"],
        "revoked": row["revoked_at"] is not None,
    }


def _digest(secret_key: str | bytes, secret: str) -> str:
    base = secret_key.encode() if isinstance(secret_key, str) else secret_key
    keyed = hmac.new(base, b"relay api keys", hashlib.sha256).digest()
    return hmac.new(keyed, secret.encode(), hashlib.sha256).hexdigest()
