"""Helpers shared by the test modules."""

from __future__ import annotations

import json
import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from flask import Flask
from httpx_sse import connect_sse
from sqlalchemy import text

from relay import tickets
from relay.db import db


def assert_error_shape(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the contract's JSON error shape and status; returns the error object."""
    assert response.status_code == status, (response.status_code, _text(response))
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json() if hasattr(response, "json") and callable(response.json) else None
    if body is None:
        body = json.loads(_text(response))
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def _text(response: Any) -> str:
    return response.text if isinstance(response.text, str) else response.get_data(as_text=True)


def new_ticket(http: httpx.Client, prompt: str, **fields: Any) -> dict[str, Any]:
    """POST /new and return the 201 body."""
    response = http.post("/new", json={"prompt": prompt, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def read_stream(
    http: httpx.Client, url: str, *, last_event_id: int | None = None, stop_after: int | None = None
) -> list[tuple[str, str, Any]]:
    """Read a ticket's events as (id, event, data) until `done` (or `stop_after` events)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events: list[tuple[str, str, Any]] = []
    with connect_sse(http, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if sse.data == "":
                # httpx-sse dispatches data-less blocks (`retry:`, and the blank line after a
                # `: ping` once an id was seen); the HTML spec and EventSource do not.
                continue
            events.append((sse.id, sse.event, json.loads(sse.data)))
            if sse.event == "done" or (stop_after is not None and len(events) >= stop_after):
                break
    return events


def text_of(events: list[tuple[str, str, Any]]) -> str:
    return "".join(data["delta"] for _, event, data in events if event == "message")


class _Peek(Exception):
    """Raised in a claim's block, which leaves the ticket pending."""

    def __init__(self, request: dict[str, Any] | None) -> None:
        super().__init__("peek")
        self.request = request


def upstream_request(app: Flask, ticket_id: str) -> dict[str, Any]:
    """The request a claim of this pending ticket sends upstream (the ticket stays pending)."""
    with app.app_context():
        owner = db.session.execute(
            text("SELECT owner FROM tickets WHERE id = :id"), {"id": ticket_id}
        ).scalar_one()
        try:
            with tickets.claiming(ticket_id, owner, "peek", 30) as request:
                raise _Peek(request)
        except _Peek as peek:
            assert peek.request is not None
            return peek.request
    raise AssertionError("unreachable")


@contextmanager
def wal_cannot_grow(app: Flask) -> Iterator[None]:
    """A real write failure for the next commit: the process may not grow any file (the WAL
    grows at every commit here), so SQLite's write fails and the commit raises, as on a disk
    that filled up."""
    with app.app_context():
        wal = f"{db.engine.url.database}-wal"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(wal), limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
