"""Quotas and concurrent generations through real servers (two gevent workers on SQLite, and
on PostgreSQL): never overdrawn by concurrent requests nor by an upstream that ignores
`max_tokens`, and the usage rows equal the stored tickets."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from relay.estimate import count_prompt, count_tokens

from ..helpers import new_ticket, read_stream
from .accounts import bearer, cli_output, new_user, signed_in
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer
from .usage_helpers import Store, assert_settled, open_stream

pytestmark = pytest.mark.timeout(120)
REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _store(instance: Path) -> sqlite3.Connection:
    return sqlite3.connect(instance / "relay.db")


def test_a_daily_quota_is_never_overdrawn_by_concurrent_streams(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path: Path,
) -> None:
    instance = tmp_path / "quota"
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo:5", "RELAY_TOKENS_PER_DAY": "300",
    }, workers=2, instance=instance)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        # Each reserves its prompt's estimate and 120 (about 180) and spends about 110 (the
        # fake upstream's 7 for the prompt, one per 3-character chunk): two fit in 300.
        prompt = "x" * 300
        tickets = [http.post("/new", json={"prompt": f"{tag}{n:02} {prompt}", "max_tokens": 120})
                   .json() for n in range(20)]
        cookies = dict(http.cookies)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda t: open_stream(relay.url, t, cookies=cookies), tickets))
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert admitted and refused
    for status, body, retry_after in refused:
        assert status == 429 and body["error"]["code"] == "quota_exceeded", body
        assert retry_after is not None and 0 < int(retry_after) <= 86400
    for _, events, _ in admitted:
        assert events[-1][2]["status"] == "completed"
    with closing(_store(instance)) as store:
        assert_settled(store)
    with closing(_store(instance)) as store:
        spent = store.execute("SELECT SUM(total_tokens), COUNT(*) FROM usage").fetchone()
        assert spent[0] <= 300 and spent[1] == len(admitted)
        # The fake upstream reports usage: the rows are its figures, not estimates.
        assert store.execute("SELECT COUNT(*) FROM usage WHERE estimated").fetchone()[0] == 0
        # A refused ticket stays pending, to be streamed once the quota allows.
        pending = store.execute("SELECT COUNT(*) FROM tickets WHERE status = 'pending'")
        assert pending.fetchone()[0] == len(refused)


def test_concurrent_generations_per_user(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, store: Store,
) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_MAX_GENERATIONS": "2", **store.env,
    }, workers=2, instance=store.instance)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as first, \
            httpx.Client(base_url=relay.url, timeout=30) as second:
        slow = [first.post("/new", json={"prompt": f"{tag} {n} " + "x" * 60, "model": "echo:100"})
                .json() for n in range(5)]
        other = second.post("/new", json={"prompt": "someone else"}).json()
        cookies = dict(first.cookies)
        with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
            futures = [pool.submit(open_stream, relay.url, t, cookies=cookies) for t in slow]
            deadline = time.monotonic() + 10
            while len(upstream.calls_with(tag)) < 2:
                assert time.monotonic() < deadline, "the two admitted did not start"
                time.sleep(0.02)
            # While the first user's two generate (two seconds each), another is unaffected.
            assert read_stream(second, other["stream_url"])[-1][2]["status"] == "completed"
            assert not any(call.completed for call in upstream.calls_with(tag))
            results = [future.result() for future in futures]
        assert sorted(r[0] for r in results) == [200, 200, 429, 429, 429]
        assert len(upstream.calls_with(tag)) == 2  # the refused never reached the upstream
        for status, body, retry_after in results:
            if status == 429:
                assert body["error"]["code"] == "too_many_generations" and retry_after
    deadline = time.monotonic() + 10
    while store.rows("SELECT COUNT(*) AS n FROM reservations")[0]["n"] and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    store.assert_settled()


def test_concurrent_generations_per_key_with_overrides(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    relay = start_relay({
        "RELAY_AUTH": "accounts", "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_MAX_GENERATIONS": "2",
    }, workers=2)
    name = new_user(relay)
    # The user may run 20 at once; their key keeps the setting's 2.
    assert "max_generations=20" in cli_output(relay, "users", "limits", name,
                                             "--max-generations", "20")
    created = cli_output(relay, "keys", "create", name).strip().splitlines()
    key, key_id = created[-1], created[0].split()[2]
    time.sleep(1.1)  # overrides are looked for once a second

    def burst(http: httpx.Client, count: int, **client: Any) -> list[int]:
        made = [http.post("/new", json={"prompt": "k" * 90, "model": "echo:60"}).json()
                for _ in range(count)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            results = list(pool.map(lambda t: open_stream(relay.url, t, **client), made))
        for status, body, retry_after in results:
            if status != 200:
                assert status == 429 and retry_after, body
                assert body["error"]["code"] == "too_many_generations", body
        return sorted(status for status, _, _ in results)

    with httpx.Client(base_url=relay.url, timeout=30, headers=bearer(key)) as api:
        assert burst(api, 5, headers=bearer(key)) == [200, 200, 429, 429, 429]
        with signed_in(relay, name) as page:
            # Without the key, only the user's own limit (20) applies.
            assert burst(page, 4, cookies=dict(page.cookies)) == [200] * 4
            everything = page.get("/usage").json()
        assert "max_generations=3" in cli_output(relay, "keys", "limits", key_id,
                                                "--max-generations", "3")
        time.sleep(1.1)
        assert burst(api, 5, headers=bearer(key)) == [200, 200, 200, 429, 429]
        keys_own = api.get("/usage").json()
    assert everything["totals"]["tickets"] == 2 + 4
    assert keys_own["totals"]["tickets"] == 2 + 3
    assert keys_own["limits"]["key"]["max_generations"] == 3
    assert everything["limits"]["user"]["max_generations"] == 20
    with closing(_store(relay.log_path.parent)) as store:
        assert_settled(store)


def test_an_upstream_that_ignores_max_tokens_is_stopped_at_the_reserved_cap(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, store: Store,
) -> None:
    relay = start_relay({"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
                         "RELAY_DEFAULT_MODEL": "echo:10", "RELAY_TOKENS_PER_DAY": "1000",
                         **store.env}, workers=2, instance=store.instance)
    tag = uuid.uuid4().hex[:8]
    # 200 chunks of `xxx` (a token each, by the estimate and by the fake's own count), 10 ms
    # apart, whatever `max_tokens` says.
    prompt = f"{tag}" + "x" * 600
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        ticket = new_ticket(http, prompt, max_tokens=30)
        events = read_stream(http, ticket["stream_url"])
    done = events[-1][2]
    assert (done["status"], done["finish_reason"]) == ("completed", "length")
    text = "".join(data["delta"] for _, kind, data in events if kind == "message")
    assert text == prompt[:90]  # 30 chunks: a token each, as the fake counts them
    [call] = upstream.calls_with(tag)
    assert call.max_tokens == 30  # asked, and ignored
    assert call.ended.wait(10) and not call.completed  # relay closed the call
    assert call.chunks_sent < 100
    store.assert_settled()
    [row] = store.rows("SELECT * FROM usage WHERE ticket_id = ?", (ticket["id"],))
    # The call was closed before any usage report: estimated, and what was reserved.
    assert row["estimated"] and row["status"] == "completed"
    assert row["completion_tokens"] == 30 and row["delivered_tokens"] == count_tokens(text)
    assert row["prompt_tokens"] == count_prompt([{"role": "user", "content": prompt}])


@pytest.mark.postgres
@pytest.mark.redis
def test_a_daily_quota_is_never_overdrawn_across_two_hosts_on_postgresql(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str,
) -> None:
    env = {
        "DATABASE_URL": migrated_postgres, "REDIS_URL": REDIS_URL, "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo:5",
        "RELAY_SECRET_KEY": "shared-secret-of-the-two-hosts-0123456789",
        "RELAY_TOKENS_PER_DAY": "300",
    }
    hosts = start_relay(env, workers=2), start_relay(env, workers=2)
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=hosts[0].url, timeout=30) as http:
        tickets = [http.post("/new", json={"prompt": f"{tag}{n:02} " + "x" * 300,
                                           "max_tokens": 120}).json() for n in range(20)]
        cookies = dict(http.cookies)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(
            lambda n: open_stream(hosts[n % 2].url, tickets[n], cookies=cookies), range(20)))
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert admitted and refused
    assert all(r[0] == 429 and r[1]["error"]["code"] == "quota_exceeded" for r in refused)
    with psycopg.connect(migrated_postgres) as store:
        assert_settled(store)
        spent = store.execute("SELECT SUM(total_tokens), COUNT(*) FROM usage").fetchone()
    assert spent is not None and spent[0] <= 300 and spent[1] == len(admitted)
