"""The SQLAlchemy and Alembic extension singletons, and SQLite connection tuning.

Must not know HTTP. SQLite calls block every greenlet of a gevent worker, so connections use WAL
with synchronous=NORMAL and a short busy timeout, and callers keep transactions tiny.
"""

from __future__ import annotations

from typing import Any

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of relay's models."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()

SQLITE_BUSY_TIMEOUT_MS = 5000


def tune_sqlite(engine: Engine) -> None:
    """Make every new SQLite connection use WAL, synchronous=NORMAL and a busy timeout."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
