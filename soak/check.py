"""The soak's end checks, from the store itself and the upstream's own record of what it sent.

- every ticket the soak made is in the store, terminal, its events 1..n then one `done` at n+1;
- its stored answer is exactly what the upstream sent (a prefix of it when cancelled), from
  exactly one upstream call (none for a ticket cancelled before anyone streamed it);
- its status is the one its upstream model calls for (`completed` for a whole answer, `failed`
  with a matching code for a fault), unless the soak cancelled it;
- every read saw stored events only, ids contiguous from its Last-Event-ID, identical data; a
  read to `done` saw all of them; a read after `done` got 204.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.events import events_of_rows

from .client import Event, Read
from .flows import Ticket

EXPECTED_CODES = {
    "429": {"upstream_rate_limited"}, "500": {"upstream_error"}, "503": {"upstream_error"},
    "drop": {"upstream_disconnected"}, "hang": {"upstream_timeout"},
    "hanghead": {"upstream_timeout"}, "malformed": {"upstream_bad_response"},
    "bytes": {"upstream_bad_response"}, "array": {"upstream_bad_response"},
    "framing": {"upstream_bad_response", "upstream_disconnected"},
    "longline": {"upstream_bad_response"}, "errevent": {"upstream_error"},
    "truncated": {"upstream_disconnected"},
}


@dataclass
class Findings:
    """Counts for the summary, and one line per problem (the first few are printed)."""

    counts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind] += 1
        if len(self.examples) < 40:
            self.examples.append(f"{kind}: {detail}")


def load_store(db_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[Event]]]:
    """Every ticket row, and every ticket's stored events as (id, kind, data)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tickets = {
            row[0]: {"status": row[1], "last_seq": row[2], "error_code": row[3],
                     "started": row[4] is not None}
            for row in conn.execute(
                "SELECT id, status, last_seq, error_code, started_at FROM tickets")
        }
        rows: dict[str, list[tuple[int, str, str]]] = {}
        for ticket_id, seq, kind, data in conn.execute(
            "SELECT ticket_id, seq, kind, data FROM ticket_events ORDER BY ticket_id, seq"
        ):
            rows.setdefault(ticket_id, []).append((seq, kind, data))
    finally:
        conn.close()
    events = {
        ticket_id: [(seq, "delta" if kind == "delta" else kind, data)
                    for seq, kind, data in events_of_rows(run, 0)]
        for ticket_id, run in rows.items()
    }
    return tickets, events


def load_record(record_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The upstream's calls by marker."""
    calls: dict[str, list[dict[str, Any]]] = {}
    with open(record_path, encoding="utf-8") as lines:
        for line in lines:
            call = json.loads(line)
            calls.setdefault(call["marker"] or "", []).append(call)
    return calls


def check(tickets: list[Ticket], db_path: Path, record_path: Path) -> Findings:
    found = Findings()
    rows, stored = load_store(db_path)
    calls = load_record(record_path)
    ours = {t.id for t in tickets if t.id}
    for ticket_id in rows.keys() - ours:
        found.problem("unknown ticket in the store", ticket_id)
    for ticket in tickets:
        found.counts["requests"] += 1
        if ticket.id is None:
            _check_refused(found, ticket)
            continue
        found.counts["tickets"] += 1
        found.counts[f"action {ticket.action}"] += 1
        if ticket.cancel_asked:
            found.counts["cancels asked"] += 1
        for error in ticket.errors:
            found.problem("client error", f"{ticket.id} {error}")
        row = rows.get(ticket.id)
        if row is None:
            found.problem("lost ticket", f"{ticket.id} ({ticket.marker}) not in the store")
            continue
        events = stored.get(ticket.id, [])
        found.counts["events stored"] += len(events)
        _check_events(found, ticket, row, events)
        _check_upstream(found, ticket, row, events, calls.get(ticket.marker, []))
        for read in ticket.reads:
            _check_read(found, ticket, row, events, read)
    return found


def _check_refused(found: Findings, ticket: Ticket) -> None:
    over = ticket.action == "refused"
    code = (ticket.create_error or {}).get("code")
    if over and ticket.create_status == 413 and code == "prompt_too_large":
        found.counts["refused over the limit (413)"] += 1
    else:
        kind = "over the limit, not a 413 (the client saw a reset)" if over else "refused"
        found.problem(kind, f"{ticket.marker} {ticket.body_bytes} bytes: "
                      f"{ticket.create_status} {ticket.create_error}")


def _check_events(found: Findings, ticket: Ticket, row: dict[str, Any],
                  events: list[Event]) -> None:
    if row["status"] in ("pending", "running"):
        found.problem("left " + row["status"], f"{ticket.id} {ticket.model} {ticket.action}")
        return
    ids = [e[0] for e in events]
    kinds = [e[1] for e in events]
    if ids != list(range(1, len(ids) + 1)) or kinds[-1:] != ["done"] or "done" in kinds[:-1]:
        found.problem("bad stored events", f"{ticket.id}: ids {ids[:5]}..{ids[-3:]}")
        return
    if row["last_seq"] != ids[-1]:
        found.problem("bad stored events", f"{ticket.id}: last_seq {row['last_seq']} != {ids[-1]}")
    done = json.loads(events[-1][2])
    if done.get("status") != row["status"]:
        found.problem("done disagrees with the ticket", f"{ticket.id} {done} {row['status']}")
    found.counts[f"status {row['status']}"] += 1


def _check_upstream(found: Findings, ticket: Ticket, row: dict[str, Any], events: list[Event],
                    calls: list[dict[str, Any]]) -> None:
    text = "".join(json.loads(data)["delta"] for _, kind, data in events if kind == "delta")
    status = row["status"]
    if len(calls) > 1:
        found.problem("more than one upstream call", f"{ticket.id}: {len(calls)}")
        return
    if not calls:
        if status != "cancelled" or text:
            found.problem("no upstream call", f"{ticket.id} {status} {ticket.model}")
        else:
            found.counts["cancelled before any upstream call"] += 1
        return
    sent = calls[0]["sent"]
    found.faults[ticket.fault] += 1
    if status == "cancelled" and not ticket.cancel_asked:
        found.problem("cancelled unasked", f"{ticket.id} {ticket.model}")
    if status == "cancelled":
        if not sent.startswith(text):
            found.problem("stored answer is not what the upstream sent",
                          f"{ticket.id} {ticket.model}: stored {len(text)} chars, sent "
                          f"{len(sent)} (cancelled; not a prefix)")
        return
    if text != sent:
        found.problem("stored answer is not what the upstream sent",
                      f"{ticket.id} {ticket.model} {status}: stored {len(text)} chars, sent "
                      f"{len(sent)}, first difference at {_first_difference(text, sent)}")
    code = row["error_code"]
    found.codes[f"{ticket.fault} -> {status}{' ' + code if code else ''}"] += 1
    whole = ticket.fault in ("ok", "noise")
    if whole and status != "completed" or not whole and (
        status != "failed" or code not in EXPECTED_CODES[ticket.fault]
    ):
        found.problem("unexpected outcome", f"{ticket.id} {ticket.model}: {status} {code}")


def _check_read(found: Findings, ticket: Ticket, row: dict[str, Any], events: list[Event],
                read: Read) -> None:
    found.counts["reads"] += 1
    found.counts["events read"] += len(read.events)
    if read.after:
        found.counts["resumes"] += 1
    if read.status == 204:
        found.counts["204 after done"] += 1
        if read.after != row["last_seq"]:
            found.problem("bad 204", f"{ticket.id} after {read.after}, done is {row['last_seq']}")
        return
    if read.status != 200:
        found.problem("read refused", f"{ticket.id} after {read.after}: {read.status}")
        return
    if read.error:
        found.problem("read broke", f"{ticket.id} after {read.after}: {read.error}")
    if read.left:
        found.counts["disconnects"] += 1
    expected = events[read.after : read.after + len(read.events)]
    if read.events != expected:
        seen = [e[0] for e in read.events]
        found.problem("read differs from the store",
                      f"{ticket.id} after {read.after}: ids {seen[:5]}..{seen[-3:]}, "
                      f"first difference at {_first_difference(read.events, expected)}")
    elif read.done:
        found.counts["reads to done"] += 1
        if len(read.events) != len(events) - read.after:
            found.problem("read to done missed events", f"{ticket.id} after {read.after}")


def _first_difference(a: Any, b: Any) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))
