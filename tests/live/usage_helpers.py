"""Checks of the usage store shared by the live tests of quotas and usage: after everything
ends, no reservation is left, one usage row per finished ticket, totals = the rows' sums."""

from __future__ import annotations

from typing import Any

import httpx

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


def assert_settled(store: Any) -> None:
    """`store` is a DBAPI connection (sqlite3 or psycopg) to the relay's database."""
    cursor = store.cursor()
    cursor.execute("SELECT COUNT(*) FROM reservations")
    assert cursor.fetchone()[0] == 0, "a reservation was left"
    cursor.execute(f"SELECT id FROM tickets WHERE status IN {FINISHED}")
    finished = sorted(row[0] for row in cursor.fetchall())
    cursor.execute("SELECT ticket_id FROM usage")
    assert sorted(row[0] for row in cursor.fetchall()) == finished
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
