"""Crashed on purpose: the whole server killed mid-stream (master and workers, `kill -9`), then
started again on the same store. Nothing answered before the kill is lost, and every
interrupted ticket ends with one `done` for the clients that come back."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(90)


def test_kill_9_of_the_whole_server_mid_stream_loses_nothing_answered(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path: Path,
) -> None:
    instance = tmp_path / "instance"
    env = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
           "RELAY_DEFAULT_MODEL": "echo", "RELAY_LEASE_SECONDS": "2"}
    relay = start_relay(env, workers=2, instance=instance)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        finished = new_ticket(http, f"{tag} finished")
        finished_events = read_stream(http, finished["stream_url"])
        # Answered 201 and never streamed: they must still be there after the crash.
        waiting = [new_ticket(http, f"{tag} waiting {n}") for n in range(20)]
        streaming = [new_ticket(http, f"{tag} streaming {n} " + "x" * 900, model="echo:40")
                     for n in range(3)]
        cookies = dict(http.cookies)
        seen: dict[str, list[tuple[str, str, Any]]] = {}

        def read_some(ticket: dict[str, Any]) -> None:
            with httpx.Client(base_url=relay.url, timeout=30, cookies=cookies) as reader:
                seen[ticket["id"]] = read_stream(reader, ticket["stream_url"], stop_after=5)

        readers = [threading.Thread(target=read_some, args=(t,)) for t in streaming]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(timeout=30)
    assert all(len(seen[t["id"]]) == 5 for t in streaming), seen
    # Tickets keep being posted while the server dies: each one answered 201 must survive.
    posted: list[dict[str, Any]] = []
    stop_posting = threading.Event()

    def post_until_killed() -> None:
        with httpx.Client(base_url=relay.url, timeout=5, cookies=cookies) as poster:
            while not stop_posting.is_set():
                try:
                    response = poster.post("/new", json={"prompt": f"{tag} during"})
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    posted.append(response.json())

    poster = threading.Thread(target=post_until_killed)
    poster.start()
    while len(posted) < 20 and poster.is_alive():
        time.sleep(0.01)
    relay.kill()  # every process of the server at once, mid-stream
    stop_posting.set()
    poster.join(timeout=30)
    assert len(posted) >= 20

    with closing(sqlite3.connect(instance / "relay.db")) as store:
        assert store.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    again = start_relay(env, workers=2, instance=instance)
    with httpx.Client(base_url=again.url, timeout=30, cookies=cookies) as http:
        for ticket in streaming:
            first = seen[ticket["id"]]
            rest = read_stream(http, ticket["stream_url"], last_event_id=int(first[-1][0]))
            events = first + rest
            assert [int(i) for i, _, _ in events] == list(range(1, len(events) + 1))
            assert events[-1][1] == "done" and events[-1][2]["status"] == "failed"
            assert events[-1][2]["error"]["code"] == "worker_lost"
            # What the clients saw is what the store kept, and no more.
            assert read_stream(http, ticket["stream_url"]) == events
            shown = http.get(f"/tickets/{ticket['id']}").json()
            assert shown["status"] == "failed", shown
        assert read_stream(http, finished["stream_url"]) == finished_events
        for ticket in waiting + posted:
            assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "pending"
        # A waiting ticket still streams its answer after the crash.
        assert text_of(read_stream(http, waiting[0]["stream_url"])) == f"{tag} waiting 0"
