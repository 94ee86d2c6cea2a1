"""Usage: the row each finished ticket spent, written with its `done` in the same transaction,
with the totals that quotas read and the release of its reservation; and the reports of
`GET /usage` and `relay usage`. Must not use `request` or `g`.

A figure is the upstream's own when it reported usage (`estimated` false), else an estimate
(`estimate.py`) of the messages sent and the text generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, cast, func, select

from . import estimate, metrics, sql
from .db import db
from .models import TicketStatus, Usage

_INSERT_USAGE = (
    "INSERT INTO usage (ticket_id, owner, key_id, model, day, status, prompt_tokens, "
    "completion_tokens, delivered_tokens, total_tokens, estimated, cost, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ADD_TOTALS = (
    "INSERT INTO usage_totals (scope, period, tokens) VALUES {} ON CONFLICT (scope, period) "
    "DO UPDATE SET tokens = usage_totals.tokens + excluded.tokens"
)
_RELEASE = "DELETE FROM reservations WHERE ticket_id = ?"
_usage = Usage.__table__
_MAX_MODEL_LABELS = 100  # distinct models in the metrics' labels, then `other`
_model_labels: set[str] = set()


@dataclass(frozen=True)
class Spent:
    """What a ticket's producer knows of what it spent."""

    reported: dict[str, Any] | None  # the upstream's usage
    messages: list[dict[str, str]]  # sent upstream
    generated: str  # every text delta generated


@dataclass(frozen=True)
class Figures:
    prompt_tokens: int
    completion_tokens: int
    delivered_tokens: int
    estimated: bool
    cost: float | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


NOTHING_SENT = Figures(0, 0, 0, False, None)


def day_and_month(now: float) -> tuple[str, str]:
    """The UTC day (`YYYY-MM-DD`) and month (`YYYY-MM`) of a timestamp."""
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return day, day[:7]


def record(
    tx: sql.Transaction, ticket_id: str, ticket: Any, status: TicketStatus, figures: Figures,
    release: bool,
) -> None:
    """In the finish's transaction: release the ticket's reservation (when its claim took one),
    insert its usage row, add it to the totals. `ticket` holds owner, key_id and model."""
    if release:
        tx.execute(_RELEASE, (ticket_id,))
    owner, key_id, model = ticket
    now = time.time()
    day, month = day_and_month(now)
    tx.execute(_INSERT_USAGE, (
        ticket_id, owner, key_id, model, day, str(status), figures.prompt_tokens,
        figures.completion_tokens, figures.delivered_tokens, figures.total_tokens,
        figures.estimated, figures.cost, now,
    ))
    if figures.total_tokens:
        rows = [(f"user:{owner}", f"d:{day}"), (f"user:{owner}", f"m:{month}")]
        if key_id is not None:
            rows += [(f"key:{key_id}", f"d:{day}"), (f"key:{key_id}", f"m:{month}")]
        tx.execute(ADD_TOTALS.format(", ".join(["(?, ?, ?)"] * len(rows))),
                   [value for row in rows for value in (*row, figures.total_tokens)])


def measure(
    spent: Spent, status: TicketStatus, stored_text: str, price: tuple[float, float] | None,
    cap: int | None = None,
) -> Figures:
    """The figures of a finished ticket: the upstream's when it reported both counts; `cap`
    (the answer's reserved tokens, when the producer stopped an upstream going past it) is the
    answer's, which had at least that many. (Made before the finish's transaction when the
    producer can: an estimate of a long answer takes milliseconds, which no transaction should
    hold its locks for.)"""
    reported = spent.reported or {}
    said = reported.get("prompt_tokens"), reported.get("completion_tokens")
    estimated = not all(_is_count(value) for value in said)
    if estimated:
        prompt = estimate.count_prompt(spent.messages)
        completion = estimate.count_tokens(spent.generated)
    else:
        prompt, completion = int(said[0] or 0), int(said[1] or 0)
    if not estimated and status == TicketStatus.COMPLETED and stored_text == spent.generated:
        delivered = completion
    elif stored_text == spent.generated and estimated:
        delivered = completion
    else:
        delivered = estimate.count_tokens(stored_text)
    if cap is not None:
        completion, delivered = cap, min(delivered, cap)
    cost = None if price is None else round(
        prompt / 1000 * price[0] + completion / 1000 * price[1], 8)
    return Figures(prompt, completion, delivered, estimated, cost)


def count(model: str, figures: Figures) -> None:
    """Add a committed usage row to the Prometheus counters (at the loop's next turn)."""
    if model not in _model_labels:
        if len(_model_labels) >= _MAX_MODEL_LABELS:
            model = "other"
        else:
            _model_labels.add(model)
    estimated = "true" if figures.estimated else "false"

    def update() -> None:
        metrics.TOKENS.labels("prompt", model, estimated).inc(figures.prompt_tokens)
        metrics.TOKENS.labels("completion", model, estimated).inc(figures.completion_tokens)

    metrics.soon(update)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_FIELDS = ("prompt_tokens", "completion_tokens", "delivered_tokens", "total_tokens")


def report(
    owner: str | None = None, key_id: str | None = None, since: str | None = None
) -> list[dict[str, Any]]:
    """Usage summed per owner, key-less or not, day and model: rows of `by_day`, oldest first."""
    columns = [func.sum(_usage.c[name]).label(name) for name in _FIELDS]
    query = select(
        _usage.c.owner, _usage.c.day, _usage.c.model, *columns,
        func.max(cast(_usage.c.estimated, Integer)).label("estimated"),
        func.sum(_usage.c.cost).label("cost"), func.count().label("tickets"),
    ).group_by(_usage.c.owner, _usage.c.day, _usage.c.model).order_by(
        _usage.c.day, _usage.c.owner, _usage.c.model)
    if owner is not None:
        query = query.where(_usage.c.owner == owner)
    if key_id is not None:
        query = query.where(_usage.c.key_id == key_id)
    if since is not None:
        query = query.where(_usage.c.day >= since)
    with db.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{**{name: int(row[name]) for name in (*_FIELDS, "tickets")}, "owner": row["owner"],
             "day": row["day"], "model": row["model"], "estimated": bool(row["estimated"]),
             "cost": None if row["cost"] is None else round(float(row["cost"]), 8)}
            for row in rows]


def summed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals of `report` rows."""
    costs = [row["cost"] for row in rows if row["cost"] is not None]
    return {**{name: sum(row[name] for row in rows) for name in (*_FIELDS, "tickets")},
            "estimated": any(row["estimated"] for row in rows),
            "cost": round(sum(costs), 8) if costs else None}
