"""Plain SQL for the statements on the hot paths, in short transactions on pooled connections.

A ticket is written several times per stream (created, claimed, each batch of its chunks,
finished), and SQLAlchemy's execution layer cost as much as SQLite's own work on these
statements, so they are SQL text with `?` placeholders, turned once into the driver's paramstyle
and run on the engine's DBAPI connection. Everything else stays SQLAlchemy. Must not know HTTP.

SQLite connections are kept here, out of SQLAlchemy's pool, whose checkout and check-in (through
gevent's locks) cost more than the claim statement itself. A SQLite transaction never yields,
so a worker rarely holds more than one; PostgreSQL connections stay in the pool, which pings
them before reuse.

Durability: SQLite connections commit with `synchronous=NORMAL`, which never waits for the disk,
and a `durable=True` transaction (a ticket created) then fsyncs the WAL in gevent's
threadpool before it returns (`sync_commits`). That is what FULL does, but FULL's fsync runs
inside the commit and stalls every greenlet of the worker; off the loop, the other streams go
on, and fsyncs that overlap are served by one flush of the disk.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import gevent
import gevent.lock
import orjson
from sqlalchemy import event
from sqlalchemy.engine import Engine

_MAX_IDLE = 8
_idle: weakref.WeakKeyDictionary[Engine, list[Any]] = weakref.WeakKeyDictionary()
_wal_of: weakref.WeakKeyDictionary[Engine, _WalSync] = weakref.WeakKeyDictionary()


class Transaction:
    """`with Transaction(engine) as tx:` commits when the block ends, rolls back on an error.

    With `durable=True` the commit is on disk when the block is left (on SQLite, when the
    engine's commits are synced: `sync_commits`); the WAL being a log, that syncs every commit
    before it too.
    """

    __slots__ = ("_connection", "_cursor", "_paramstyle", "_idle", "_wal")

    def __init__(self, engine: Engine, durable: bool = False) -> None:
        self._idle = _idle.get(engine) if engine.dialect.name == "sqlite" else None
        if self._idle is None:
            self._connection = engine.raw_connection()  # back to the pool on close
        elif self._idle:
            self._connection = self._idle.pop()
        else:
            self._connection = _detached(engine)
        self._cursor = self._connection.cursor()
        self._paramstyle = engine.dialect.paramstyle
        self._wal = _wal_of.get(engine) if durable else None

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        kept = False
        try:
            if exc_type is None:
                self._connection.commit()
                kept = self._idle is not None and len(self._idle) < _MAX_IDLE
                if self._wal is not None:
                    self._wal.sync()
            else:
                self._connection.rollback()
        finally:
            if kept:
                self._idle.append(self._connection)  # type: ignore[union-attr]
            else:
                self._connection.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (for `fetchone`, `fetchall`, `rowcount`)."""
        self._cursor.execute(_driver_sql(sql, self._paramstyle), params)
        return self._cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_driver_sql(sql, self._paramstyle), rows)


def keep_sqlite_connections(engine: Engine) -> None:
    """Let transactions on this SQLite engine keep their connections (closed on dispose)."""
    idle: list[Any] = []
    _idle[engine] = idle

    @event.listens_for(engine, "engine_disposed")
    def _close_idle(_engine: Engine) -> None:
        while idle:
            idle.pop().close()


def sync_commits(engine: Engine, database_path: str) -> None:
    """Durable transactions on this SQLite engine fsync its WAL file after committing."""
    _wal_of[engine] = _WalSync(database_path + "-wal")


class _WalSync:
    """Group commit: one fsync of the WAL at a time in this process, in gevent's threadpool; a
    commit waits for the first fsync that started after it, so commits that land during an
    fsync share the next one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.committed = 0  # durable commits made in this process
        self.synced = 0  # of those, the ones an fsync has covered
        self._one_at_a_time: gevent.lock.Semaphore | None = None  # made in the worker, not before

    def sync(self) -> None:
        self.committed += 1
        mine = self.committed
        if self._one_at_a_time is None:
            self._one_at_a_time = gevent.lock.Semaphore()
        with self._one_at_a_time:
            if self.synced >= mine:
                return
            covers = self.committed  # every one of these is in the WAL file already
            gevent.get_hub().threadpool.apply(_fsync, (self.path,))
            self.synced = covers


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(descriptor)  # as SQLite syncs: the data, and the size if it grew
    finally:
        os.close(descriptor)


def _detached(engine: Engine) -> Any:
    """A new DBAPI connection made by the engine's pool (so its connect hooks ran), then
    taken out of it."""
    proxied = engine.raw_connection()
    proxied.detach()
    return proxied.dbapi_connection


def placeholders(count: int) -> str:
    """`?, ?, ...` for an IN list of `count` values."""
    return ", ".join("?" * count)


def json_text(value: Any) -> str | None:
    """A JSON column's value as the text to store (None stays NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def json_value(stored: Any) -> Any:
    """A JSON column as read: SQLite gives its text, psycopg the decoded value."""
    return orjson.loads(stored) if isinstance(stored, str | bytes) else stored


def _driver_sql(sql: str, paramstyle: str) -> str:
    if paramstyle == "qmark":
        return sql
    # Statements with an IN list come in as many sizes as callers choose: not kept.
    return _converted(sql, paramstyle) if len(sql) <= 1024 else _convert(sql, paramstyle)


@functools.lru_cache(maxsize=64)  # the fixed statements, a few dozen
def _converted(sql: str, paramstyle: str) -> str:
    return _convert(sql, paramstyle)


def _convert(sql: str, paramstyle: str) -> str:
    if paramstyle in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    raise ValueError(f"unsupported DBAPI paramstyle {paramstyle!r}")
