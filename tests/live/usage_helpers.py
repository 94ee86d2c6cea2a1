"""Checks of the usage store shared by the live tests of quotas and usage: after everything
ends, no reservation is left, one usage row per finished ticket, totals = the rows' sums."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from ..helpers import read_stream

FINISHED = "('completed', 'failed', 'cancelled')"


def open_stream(url: str, ticket: dict[str, Any], **client: Any) -> tuple[int, Any, str | None]:
    """GET the ticket's stream to its end: (200, events, None) or (status, error body,
    Retry-After)."""
    with httpx.Client(base_url=url, timeout=60, **client) as http:
        with http.stream("GET", ticket["stream_url"]) as response:
            if response.status_code != 200:
                response.read()
                return response.status_code, response.json(), response.headers.get(
                    "Retry-After")
        # The first GET started it (or was refused); this one reads it whole from the start.
        return 200, read_stream(http, ticket["stream_url"]), None


@dataclass
class Store:
    """The store a live relay runs on (SQLite in its instance folder, or a fresh PostgreSQL
    database at `url`): the relay's settings for it, and DBAPI connections to it."""

    instance: Path
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.url is not None:
            self.env = {"DATABASE_URL": self.url, **self.env}

    def connect(self) -> Any:
        """A DBAPI connection (close it: `contextlib.closing`)."""
        if self.url is not None:
            return psycopg.connect(self.url, autocommit=True)
        return sqlite3.connect(self.instance / "relay.db")

    def rows(self, statement: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The rows of a query (`?` placeholders) as dicts."""
        with closing(self.connect()) as conn:
            if self.url is not None:
                cursor = conn.cursor(row_factory=dict_row)
                cursor.execute(statement.replace("?", "%s"), params)
                return list(cursor.fetchall())
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(statement, params).fetchall()]

    def assert_settled(self, deleted: Collection[str] = ()) -> None:
        with closing(self.connect()) as conn:
            assert_settled(conn, deleted)


def assert_settled(store: Any, deleted: Collection[str] = ()) -> None:
    """`store` is a DBAPI connection (sqlite3 or psycopg) to the relay's database; `deleted`
    the tickets deleted with their conversation, whose usage rows stay."""
    cursor = store.cursor()
    cursor.execute("SELECT COUNT(*) FROM reservations")
    assert cursor.fetchone()[0] == 0, "a reservation was left"
    cursor.execute(f"SELECT id FROM tickets WHERE status IN {FINISHED}")
    finished = sorted(row[0] for row in cursor.fetchall())
    assert not set(finished) & set(deleted)
    cursor.execute("SELECT ticket_id FROM usage")
    assert sorted(row[0] for row in cursor.fetchall()) == sorted([*finished, *deleted])
    for scope, column, period in (("user:", "owner", "day"), ("key:", "key_id", "day"),
                                  ("user:", "owner", "month"), ("key:", "key_id", "month")):
        length = 10 if period == "day" else 7
        cursor.execute(
            f"SELECT '{scope}' || {column}, SUBSTR(day, 1, {length}), SUM(total_tokens) FROM usage "
            f"WHERE {column} IS NOT NULL GROUP BY {column}, SUBSTR(day, 1, {length}) "
            "HAVING SUM(total_tokens) > 0")
        sums = {(row[0], f"{period[0]}:{row[1]}"): int(row[2]) for row in cursor.fetchall()}
        cursor.execute("SELECT scope, period, tokens FROM usage_totals WHERE tokens > 0 AND "
                       f"scope LIKE '{scope}%' AND period LIKE '{period[0]}:%'")
        assert {(row[0], row[1]): int(row[2]) for row in cursor.fetchall()} == sums
