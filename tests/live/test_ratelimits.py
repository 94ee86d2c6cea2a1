"""Requests per minute through real servers: 40 concurrent requests against a limit of 10 admit
exactly 10, on one SQLite machine with two gevent workers (counted in the store) and across two
hosts on PostgreSQL and Redis (counted with `limits`); per client address, for cookieless
visitors; per-key overrides; OpenAI's shape on `/v1`."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import httpx
import psycopg
import pytest

from .accounts import bearer, cli_output, new_user, signed_in
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)
REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _burst(urls: list[str], count: int, path: str = "/new",
           **client: Any) -> list[httpx.Response]:
    """`count` POSTs sent at once (spread over `urls`), each on its own connection."""
    ready = threading.Barrier(count)

    def post(n: int) -> httpx.Response:
        with httpx.Client(base_url=urls[n % len(urls)], timeout=30, **client) as http:
            ready.wait(timeout=30)
            return http.post(path, json={"prompt": f"burst {n}", "model": "echo"})

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(post, range(count)))


def _assert_refused(response: httpx.Response, who: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and f"for {who} (at most" in error["message"]
    # The burst just began the minute: nearly all of it is left.
    assert 50 <= int(response.headers["Retry-After"]) <= 60


def _anonymous_cookies(url: str) -> dict[str, str]:
    """An open relay's anonymous identity (GET /usage makes one, and counts no request)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/usage").status_code == 200
        return dict(http.cookies)


def _check_forty_admit_ten(urls: list[str]) -> int:
    """40 concurrent requests of one anonymous visitor admit 10; /v1 then refuses in OpenAI's
    shape; another visitor is unaffected. Returns the tickets the burst stored."""
    cookies = _anonymous_cookies(urls[0])
    responses = _burst(urls, 40, cookies=cookies)
    admitted = [r for r in responses if r.status_code == 201]
    assert len(admitted) == 10, sorted(r.status_code for r in responses)
    for response in responses:
        if response.status_code != 201:
            _assert_refused(response, "you")
    with httpx.Client(base_url=urls[-1], timeout=30, cookies=cookies) as http:
        v1 = http.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "one more"}]})
        _assert_refused(v1, "you")
        assert v1.json()["error"]["type"]  # OpenAI's SDKs read it
    with httpx.Client(base_url=urls[0], timeout=30) as other:
        assert other.post("/new", json={"prompt": "mine", "model": "echo"}).status_code == 201
    return len(admitted)


def test_forty_concurrent_requests_admit_ten_on_sqlite_with_two_workers(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_REQUESTS_PER_MINUTE": "10",
    }, workers=2)
    assert _check_forty_admit_ten([relay.url]) == 10
    with closing(sqlite3.connect(relay.log_path.parent / "relay.db")) as store:
        # Nothing of the refused was stored: the ten, and the other visitor's.
        assert store.execute("SELECT COUNT(*) FROM tickets").fetchone() == (11,)
        counts = sorted(row[0] for row in store.execute("SELECT requests FROM request_counts"))
    assert counts == [1, 41]  # every request counts, refused or not


def test_forty_concurrent_cookieless_requests_from_one_address_admit_ten(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    # In open mode each of these is a new anonymous visitor: only the address's limit bites.
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_ADDRESS_REQUESTS_PER_MINUTE": "10",
        "RELAY_REQUESTS_PER_MINUTE": "5", "RELAY_TRUSTED_PROXIES": "127.0.0.1",
    }, workers=2)
    responses = _burst([relay.url], 40)
    admitted = [r for r in responses if r.status_code == 201]
    assert len(admitted) == 10, sorted(r.status_code for r in responses)
    assert len({r.json()["id"] for r in admitted}) == 10
    for response in responses:
        if response.status_code != 201:
            _assert_refused(response, "your address")
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        v1 = http.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "one more"}]})
        _assert_refused(v1, "your address")
        # Another address (behind the trusted proxy) has a window of its own.
        elsewhere = http.post("/new", json={"prompt": "mine", "model": "echo"},
                              headers={"X-Forwarded-For": "198.51.100.7"})
        assert elsewhere.status_code == 201, elsewhere.text
    with closing(sqlite3.connect(relay.log_path.parent / "relay.db")) as store:
        assert store.execute("SELECT COUNT(*) FROM tickets").fetchone() == (11,)
        counts = dict(store.execute(
            "SELECT scope, requests FROM request_counts WHERE scope LIKE 'address:%'"))
    assert counts == {"address:127.0.0.1": 41, "address:198.51.100.7": 1}


def test_a_key_limited_by_its_override_and_its_user_by_theirs(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    relay = start_relay({
        "RELAY_AUTH": "accounts", "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo",
    }, workers=2)
    name = new_user(relay)
    created = cli_output(relay, "keys", "create", name).strip().splitlines()
    key, key_id = created[-1], created[0].split()[2]
    assert "requests_per_minute=3" in cli_output(relay, "keys", "limits", key_id,
                                                "--requests-per-minute", "3")
    time.sleep(1.1)  # overrides are looked for once a second
    with signed_in(relay, name) as page:
        responses = _burst([relay.url], 8, headers=bearer(key))
        assert sorted(r.status_code for r in responses) == [201] * 3 + [429] * 5
        for response in responses:
            if response.status_code == 429:
                _assert_refused(response, "this API key")
        # The key's user, without the key, has no limit.
        for n in range(5):
            assert page.post("/new", json={"prompt": f"page {n}"}).status_code == 201
        assert "requests_per_minute=2" in cli_output(relay, "users", "limits", name,
                                                    "--requests-per-minute", "2")
        time.sleep(1.1)
        assert page.get("/usage").json()["limits"]["user"]["requests_per_minute"] == 2
        statuses = [page.post("/new", json={"prompt": f"after {n}"}) for n in range(3)]
        assert [r.status_code for r in statuses] == [201, 201, 429]
        _assert_refused(statuses[2], "you")
    with httpx.Client(base_url=relay.url, timeout=30, headers=bearer(key)) as api:
        # The key's requests count against its user's limit too, which is spent.
        _assert_refused(api.post("/new", json={"prompt": "by key"}), "you")


@pytest.mark.postgres
@pytest.mark.redis
def test_forty_concurrent_requests_admit_ten_across_two_hosts_on_postgresql_and_redis(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str,
) -> None:
    env = {
        "DATABASE_URL": migrated_postgres, "REDIS_URL": REDIS_URL, "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo",
        "RELAY_SECRET_KEY": "shared-secret-of-the-two-hosts-0123456789",
        "RELAY_REQUESTS_PER_MINUTE": "10",
    }
    hosts = start_relay(env, workers=2), start_relay(env, workers=2)
    assert _check_forty_admit_ten([host.url for host in hosts]) == 10
    with psycopg.connect(migrated_postgres) as store:
        assert store.execute("SELECT COUNT(*) FROM tickets").fetchone() == (11,)
        # Redis counted: the store's counter was never written.
        assert store.execute("SELECT COUNT(*) FROM request_counts").fetchone() == (0,)
