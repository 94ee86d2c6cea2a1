"""Plain SQL for the statements on the hot paths, in short transactions on pooled connections.

A ticket is written several times per stream (created, claimed, each batch of its chunks,
finished). Through SQLAlchemy's execution layer each statement cost about 15 µs on top of the
database's own work, as much as SQLite's work itself (POST /new's transaction: 130 -> 75 µs), so
these statements are SQL text with `?` placeholders, turned once into the driver's paramstyle and
run on the engine's pooled DBAPI connection. Everything else stays SQLAlchemy. Must not know HTTP.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import orjson
from sqlalchemy.engine import Engine


class Transaction:
    """`with Transaction(engine) as tx:` commits when the block ends, rolls back on an error."""

    __slots__ = ("_connection", "_cursor", "_paramstyle")

    def __init__(self, engine: Engine) -> None:
        self._connection = engine.raw_connection()
        self._cursor = self._connection.cursor()
        self._paramstyle = engine.dialect.paramstyle

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._connection.commit()
            else:
                self._connection.rollback()
        finally:
            self._connection.close()  # back to the pool

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (for `fetchone`, `fetchall`, `rowcount`)."""
        self._cursor.execute(_driver_sql(sql, self._paramstyle), params)
        return self._cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_driver_sql(sql, self._paramstyle), rows)


def placeholders(count: int) -> str:
    """`?, ?, ...` for an IN list of `count` values."""
    return ", ".join("?" * count)


def json_text(value: Any) -> str | None:
    """A JSON column's value as the text to store (None stays NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def json_value(stored: Any) -> Any:
    """A JSON column as read: SQLite gives its text, psycopg the decoded value."""
    return orjson.loads(stored) if isinstance(stored, str | bytes) else stored


@functools.cache
def _driver_sql(sql: str, paramstyle: str) -> str:
    if paramstyle == "qmark":
        return sql
    if paramstyle in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    raise ValueError(f"unsupported DBAPI paramstyle {paramstyle!r}")
