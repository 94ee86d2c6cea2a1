"""Users: create, list, find, sign in, disable, set a password, and the first admin's set-up.

Tickets and conversations name a user as `user:<id>` (`UserInfo.owner`). Ending a user's access
(`disable_user`, `set_password`) goes through `sessions.end_sessions`, which also stops their
running answers. Must not use `request` or `g`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import passwords, sessions
from .db import db
from .errors import Conflict, ErrorCode, InvalidRequest, NotFound
from .models import FirstAdmin, User

_users = cast(Table, User.__table__)
_first_admin = cast(Table, FirstAdmin.__table__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


@dataclass(frozen=True)
class UserInfo:
    """A user as the rest of relay sees them."""

    id: int
    name: str
    admin: bool

    @property
    def owner(self) -> str:
        """What tickets and conversations of this user hold as their owner."""
        return f"user:{self.id}"

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "admin": self.admin}

    @classmethod
    def of(cls, row: Any) -> UserInfo:
        return cls(row.id, row.name, bool(row.admin))


def check_username(name: object) -> str:
    """`name` if it can name a user, else a 400 saying why."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            "A username is 1 to 64 letters, digits or . _ @ + -, starting with a letter or digit.",
            code=ErrorCode.INVALID_USERNAME,
        )
    return name


def check_password(password: object) -> str:
    """`password` if it can be set, else a 400 saying why."""
    problem = passwords.password_problem(password)
    if problem is not None:
        raise InvalidRequest(problem, code=ErrorCode.INVALID_PASSWORD)
    return cast(str, password)


def create_user(name: str, password: str | None, admin: bool = False) -> UserInfo:
    """A new user (without a password: signs in only through the proxy); 409 if the name is
    taken."""
    check_username(name)
    password_hash = passwords.hash_password(check_password(password)) if password else None
    try:
        with db.engine.begin() as conn:
            user_id = conn.execute(insert(_users).values(
                name=name, password_hash=password_hash, admin=admin, created_at=time.time()
            )).inserted_primary_key[0]  # type: ignore[index]
    except IntegrityError:
        raise Conflict(f"A user named {name} exists already.", code=ErrorCode.USER_EXISTS) from None
    return UserInfo(user_id, name, admin)


def set_up_first_admin(name: str, password: str) -> UserInfo:
    """The admin made from the page of a relay that has no user yet; however many try at once,
    one wins and the others get 409 `already_set_up`. Once the operator made any user, the page
    offers no set-up (a relay with only non-admin users would otherwise let anyone be admin)."""
    check_username(name)
    password_hash = passwords.hash_password(check_password(password))
    try:
        with db.engine.begin() as conn:
            if conn.execute(select(exists(select(_users.c.id)))).scalar():
                raise _already_set_up()
            user_id = conn.execute(insert(_users).values(
                name=name, password_hash=password_hash, admin=True, created_at=time.time()
            )).inserted_primary_key[0]  # type: ignore[index]
            conn.execute(insert(_first_admin).values(id=1, user_id=user_id))
    except IntegrityError:  # another set-up won (the one `first_admin` row), or took the name
        raise _already_set_up() from None
    return UserInfo(user_id, name, True)


def _already_set_up() -> Conflict:
    return Conflict("This relay is set up already; sign in instead.",
                    code=ErrorCode.ALREADY_SET_UP)


def setup_required() -> bool:
    """Whether the page may set up the first admin: nobody has a user yet."""
    with db.engine.connect() as conn:
        return not conn.execute(select(exists(select(_users.c.id)))).scalar()


def authenticate(name: object, password: object) -> UserInfo | None:
    """The enabled user with this name and password, else None (an unknown name takes as long
    as a wrong password)."""
    row = None
    if isinstance(name, str) and _NAME.match(name):
        row = _row(name)
    if not isinstance(password, str):
        password = ""
    stored_hash = row.password_hash if row is not None else None
    if not passwords.verify_password(stored_hash, password):
        return None
    if row is None or row.disabled_at is not None:
        return None
    return UserInfo.of(row)


def proxy_user(name: str) -> UserInfo | None:
    """The user the trusted proxy names, created on first sight; None when disabled."""
    row = _row(name)
    if row is None:
        try:
            return create_user(name, None)
        except Conflict:  # created meanwhile by another request
            row = _row(name)
    if row is None or row.disabled_at is not None:
        return None
    return UserInfo.of(row)


def find_user(name: str) -> UserInfo:
    """The user with this name (enabled or not), else 404 `user_not_found`."""
    # No name holds a NUL, and PostgreSQL cannot compare text with one.
    row = _row(name) if isinstance(name, str) and "\x00" not in name else None
    if row is None:
        raise NotFound(f"No user named {name}.", code=ErrorCode.USER_NOT_FOUND)
    return UserInfo.of(row)


def list_users() -> list[dict[str, Any]]:
    """Every user, oldest first."""
    with db.engine.connect() as conn:
        rows = conn.execute(select(_users).order_by(_users.c.id)).fetchall()
    return [{"name": row.name, "admin": bool(row.admin), "disabled": row.disabled_at is not None,
             "created_at": row.created_at, "limits": row.limits} for row in rows]


def list_user_ids() -> list[dict[str, Any]]:
    """Every user's id and name."""
    with db.engine.connect() as conn:
        rows = conn.execute(select(_users.c.id, _users.c.name)).fetchall()
    return [{"id": row.id, "name": row.name} for row in rows]


def disable_user(name: str) -> UserInfo:
    """Disable a user: their sessions and keys stop working and their answers stop."""
    user = find_user(name)
    with db.engine.begin() as conn:
        conn.execute(update(_users).where(
            _users.c.id == user.id, _users.c.disabled_at.is_(None)
        ).values(disabled_at=time.time()))
    sessions.end_sessions(user, ErrorCode.USER_DISABLED)
    return user


def enable_user(name: str) -> UserInfo:
    """Let a disabled user sign in again (their keys work again too)."""
    user = find_user(name)
    with db.engine.begin() as conn:
        conn.execute(update(_users).where(_users.c.id == user.id).values(disabled_at=None))
    return user


def set_password(name: str, password: str) -> UserInfo:
    """Give a user a new password; every session of theirs ends."""
    user = find_user(name)
    password_hash = passwords.hash_password(check_password(password))
    with db.engine.begin() as conn:
        conn.execute(update(_users).where(_users.c.id == user.id)
                     .values(password_hash=password_hash))
    sessions.end_sessions(user, ErrorCode.SESSION_ENDED)
    return user


def _row(name: str) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(select(_users).where(_users.c.name == name)).fetchone()
