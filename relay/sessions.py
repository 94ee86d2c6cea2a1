"""Sign-in sessions kept in the store: started at sign-in, looked up per request, ended for
every worker and host at once by marking them revoked.

The cookie holds a random token; the store holds only its SHA-256, so a copy of the database
signs nobody in. Ending a user's sessions also stops the answers they are generating, each with
a `done` that says why. Must not use `request` or `g`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, delete, insert, or_, select, update

from . import generation, tickets
from .db import db
from .errors import ErrorCode
from .models import AuthSession, User

if TYPE_CHECKING:
    from .users import UserInfo

_sessions = cast(Table, AuthSession.__table__)
_users = cast(Table, User.__table__)


def start_session(user: UserInfo, days: float) -> str:
    """A new session of `user` lasting `days`; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    with db.engine.begin() as conn:
        # The user's ended sessions are of no more use: the table keeps only live ones.
        conn.execute(delete(_sessions).where(
            _sessions.c.user_id == user.id,
            or_(_sessions.c.revoked_at.is_not(None), _sessions.c.expires_at < now),
        ))
        conn.execute(insert(_sessions).values(
            id=_digest(token), user_id=user.id, created_at=now, expires_at=now + days * 86400
        ))
    return token


def session_user(token: str) -> UserInfo | None:
    """The enabled user of a live session, else None."""
    from .users import UserInfo

    with db.engine.connect() as conn:
        row = conn.execute(
            select(_users.c.id, _users.c.name, _users.c.admin)
            .join(_sessions, _sessions.c.user_id == _users.c.id)
            .where(_sessions.c.id == _digest(token), _sessions.c.revoked_at.is_(None),
                   _sessions.c.expires_at > time.time(), _users.c.disabled_at.is_(None))
        ).fetchone()
    return UserInfo.of(row) if row is not None else None


def end_sessions(user: UserInfo, reason: ErrorCode) -> int:
    """End every session of `user` and stop their running answers (made by a session; all of
    them when the user is disabled); returns how many sessions ended."""
    with db.engine.begin() as conn:
        ended = conn.execute(
            update(_sessions)
            .where(_sessions.c.user_id == user.id, _sessions.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        ).rowcount
    keyless = reason != ErrorCode.USER_DISABLED
    for ticket_id in tickets.running_tickets(user.owner, keyless=keyless):
        generation.cancel(ticket_id, f"its user's access ended ({reason})", reason=reason)
    return int(ended)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
