"""The SQLAlchemy and Alembic extension singletons, whether the store's schema is current, and
SQLite connection tuning.

Must not know HTTP. SQLite calls block every greenlet of a gevent worker, so connections use WAL and
a short busy timeout, and callers keep transactions tiny. `synchronous` is a setting: with `full`
(the default) a ticket's creation is fsynced before it is answered, off the event loop
(`sql.Transaction`'s `durable`), so an answered ticket survives an OS crash;
`normal` syncs only at checkpoints. `storage_failure` tells a store that refuses writes (a full
disk, an I/O error, a locked or unreachable database) from a bug. In a gevent worker the WAL is
checkpointed every second, mostly by a native thread from gevent's pool: a checkpoint copies
megabytes into the database file, and SQLite's automatic one would do it inside whichever commit
crossed the threshold, stalling every stream of the worker.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.monkey
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, exc, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

from . import sql
from .errors import ErrorCode


class Base(DeclarativeBase):
    """Declarative base of relay's models."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()

MIGRATIONS_DIR = str(Path(__file__).resolve().with_name("migrations"))

log = logging.getLogger("relay.db")

SQLITE_BUSY_TIMEOUT_MS = 5000
CHECKPOINT_SECONDS = 1.0
# A thread pass this short leaves the worker's own pass little to copy.
SHORT_PASS_SECONDS = 0.005
MAX_THREAD_PASSES = 6
# Only a fallback in gevent workers: the checkpoint thread keeps the WAL far shorter.
FALLBACK_AUTOCHECKPOINT_PAGES = 50_000

_checkpointers: dict[int, gevent.Greenlet] = {}


def tune_sqlite(engine: Engine, synchronous: str = "full") -> None:
    """Make every new SQLite connection use WAL, commits that wait for no fsync, and a busy
    timeout; with `synchronous` full, durable transactions sync the WAL (`sql.sync_commits`)."""
    path = engine.url.database
    if synchronous == "full" and path and path != ":memory:":
        sql.sync_commits(engine, path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if path and path != ":memory:" and gevent.monkey.is_module_patched("socket"):
            cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT_PAGES}")
            _start_checkpointer(path)
        cursor.close()


def _start_checkpointer(path: str) -> None:
    """One checkpointing greenlet per worker process (started after fork, on first connect)."""
    pid = os.getpid()
    if pid not in _checkpointers:
        _checkpointers[pid] = gevent.spawn(_checkpoint_forever, path)


def _checkpoint_forever(path: str) -> None:
    threadpool = gevent.get_hub().threadpool
    failing = False
    while True:
        gevent.sleep(CHECKPOINT_SECONDS)
        try:
            # Pass after pass in the thread, each copying what was committed during the one
            # before, until one is short (under 1,000 POST /new a second, one pass left the
            # worker's own 30-60 ms of copying and syncing, which set POST /new's p99).
            for _ in range(MAX_THREAD_PASSES):
                started = time.monotonic()
                error = threadpool.apply(_checkpoint_in_thread, (path,))
                if error is not None:
                    raise error
                if time.monotonic() - started < SHORT_PASS_SECONDS:
                    break
            # Then, here, the few pages committed during that last pass: SQLite starts the WAL
            # file over only when a commit finds it fully copied, which the thread alone never
            # leaves under load.
            _checkpoint(path)
        except Exception as exc:  # the next second tries again; the fallback still bounds the WAL
            if not failing:  # once, not every second while the disk stays full
                log.warning("WAL checkpoints fail: %s", str(exc).splitlines()[0][:200])
            failing = True
        else:
            if failing:
                log.warning("WAL checkpoints work again")
            failing = False


def _checkpoint_in_thread(path: str) -> sqlite3.Error | None:
    """`_checkpoint`, its error returned: gevent prints a traceback for any a thread raises."""
    try:
        _checkpoint(path)
    except sqlite3.Error as exc:
        return exc
    return None


def _checkpoint(path: str) -> None:
    """Copy committed WAL pages into the database file; runs in a native thread (sqlite3 releases
    the GIL), and PASSIVE never waits for readers or writers."""
    connection = sqlite3.connect(path, timeout=0)
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        connection.close()


# SQLite's primary result codes of a store that cannot take a write now (not of a bad statement).
_SQLITE_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB,
})
_PG_DISK_FULL = "53100"  # disk_full; class 08 is a lost connection, 53 insufficient resources


def storage_failure(error: BaseException) -> ErrorCode | None:
    """STORAGE_FULL when `error` is the store refusing a write for want of space,
    DATABASE_UNAVAILABLE when it cannot be used now (I/O error, locked, unreachable), else None
    (a bug, not the store's state)."""
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF == sqlite3.SQLITE_FULL:
            return ErrorCode.STORAGE_FULL
        return ErrorCode.DATABASE_UNAVAILABLE if code & 0xFF in _SQLITE_UNAVAILABLE else None
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if sqlstate == _PG_DISK_FULL:
        return ErrorCode.STORAGE_FULL
    if sqlstate.startswith(("08", "53", "57P")) or (
        isinstance(error, exc.OperationalError) and not sqlstate
    ):
        return ErrorCode.DATABASE_UNAVAILABLE
    return None


class SchemaBehind(RuntimeError):
    """The store's schema is not the code's: `relay db upgrade` has not been run on it."""


def migration_heads() -> frozenset[str]:
    """The revisions the code's migrations end at."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def applied_revisions(engine: Engine) -> frozenset[str]:
    """The revisions applied to the store (empty for a store never migrated)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return frozenset()
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    return frozenset(row[0] for row in rows)


def check_schema(engine: Engine, heads: frozenset[str]) -> None:
    """Raise SchemaBehind unless the store is at the code's migration heads."""
    applied = applied_revisions(engine)
    if applied != heads:
        where = engine.url.render_as_string(hide_password=True)
        state = ", ".join(sorted(applied)) or "never migrated"
        raise SchemaBehind(
            f"The database {where} is at revision {state}, and this relay needs "
            f"{', '.join(sorted(heads))}: run `relay db upgrade`."
        )
