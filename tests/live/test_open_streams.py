"""Open streams per user and per address through real servers: one stream over the limit is
refused `429 too_many_streams` before it starts, exactly so when the streams are opened at once on
two gevent workers (SQLite), and across two hosts (on PostgreSQL alone, and with Redis); closing
a stream gives its place back, and a SIGKILLed worker's streams stop counting; a user's override
(`relay users limits --max-streams`) is their limit alone. The chat page says
a refused stream (at its start, or on a reconnect mid-answer) and retries it."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, expect

from ..helpers import new_ticket
from .accounts import bearer, cli_output, new_key, new_user, relay_cli, signed_in
from .browser_helpers import DESKTOP, ChatPage, SeveringProxy, axe_violations, page_errors
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=10_000)
REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
STALLED = "stall:2"  # two chunks, then the answer waits: its streams stay open


class Stream:
    """One `GET` of a stream on its own connection, its body left unread until closed."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, headers=headers)
        self.response = self.http.send(self.http.build_request("GET", path), stream=True)
        self.status = self.response.status_code
        self.error: dict[str, Any] | None = None
        if self.status != 200:
            self.response.read()
            self.error = self.response.json()["error"]
            self.close()

    def close(self) -> None:
        self.response.close()
        self.http.close()


@contextmanager
def streams_of(opened: list[Stream]) -> Iterator[list[Stream]]:
    try:
        yield opened
    finally:
        for stream in opened:
            stream.close()


def _visitor(url: str, address: str) -> dict[str, str]:
    """Headers of a new anonymous visitor (its cookie) behind the trusted proxy at `address`."""
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/usage").status_code == 200
        cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    return {"Cookie": cookie, "X-Forwarded-For": address}


def _tickets(url: str, headers: dict[str, str], count: int) -> list[str]:
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        return [new_ticket(http, f"held {n}", model=STALLED)["stream_url"] for n in range(count)]


def _assert_refused(stream: Stream, who: str, limit: int) -> None:
    assert stream.status == 429, stream.status
    assert stream.error is not None and stream.error["code"] == "too_many_streams"
    assert f"for {who} (at most {limit})" in stream.error["message"]
    assert stream.response.headers["Retry-After"] == "5"


def _admitted_again(url: str, path: str, headers: dict[str, str], within: float = 15,
                    limit: int = 2) -> Stream:
    """Open `path` until it is admitted (a closed stream's place is given back once its server
    notices, at its next heartbeat at the latest)."""
    deadline = time.monotonic() + within
    while True:
        stream = Stream(url, path, headers)
        if stream.status == 200:
            return stream
        _assert_refused(stream, "you", limit)
        assert time.monotonic() < deadline, "the place was not given back"
        time.sleep(0.2)


def _at_once(urls: list[str], paths: list[str], headers: dict[str, str]) -> list[Stream]:
    """Open every path at the same moment, each on its own connection, spread over `urls`."""
    ready = threading.Barrier(len(paths))

    def open_one(n: int) -> Stream:
        ready.wait(timeout=30)
        return Stream(urls[n % len(urls)], paths[n], headers)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(open_one, range(len(paths))))


def _check_limit_of_two(urls: list[str], stored: Callable[[], int], in_store: int) -> None:
    """Ten streams of one visitor opened at once admit two (`stored()`, the store's rows, is
    then `in_store`); a /v1 stream is then refused in OpenAI's shape; closing one admits one
    more; another visitor is unaffected; once all are closed, every place is given back."""
    headers = _visitor(urls[0], "198.51.100.1")
    paths = _tickets(urls[0], headers, 10)
    with streams_of(_at_once(urls, paths, headers)) as opened:
        admitted = [stream for stream in opened if stream.status == 200]
        assert len(admitted) == 2, sorted(stream.status for stream in opened)
        for stream in opened:
            if stream.status != 200:
                _assert_refused(stream, "you", 2)
        assert stored() == in_store
        with httpx.Client(base_url=urls[-1], timeout=30, headers=headers) as http:
            v1 = http.post("/v1/chat/completions", json={
                "model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert v1.status_code == 429 and v1.json()["error"]["code"] == "too_many_streams"
        assert v1.json()["error"]["type"]
        other = _visitor(urls[-1], "198.51.100.2")
        opened.append(Stream(urls[-1], _tickets(urls[-1], other, 1)[0], other))
        assert opened[-1].status == 200
        admitted[0].close()
        refused = [paths[n] for n, stream in enumerate(opened[:10]) if stream.status != 200]
        opened.append(_admitted_again(urls[-1], refused[0], headers))
    deadline = time.monotonic() + 15
    while stored() != 0:  # given back once each server noticed its stream closed
        assert time.monotonic() < deadline, "a place was not given back"
        time.sleep(0.2)


def _env(upstream: FakeUpstream, **settings: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
            "RELAY_DEFAULT_MODEL": "echo", "RELAY_TRUSTED_PROXIES": "127.0.0.1",
            "RELAY_CANCEL_ON_DISCONNECT": "true", **settings}


def test_streams_per_user_on_sqlite_with_two_workers(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    relay = start_relay(_env(upstream, RELAY_MAX_STREAMS_PER_USER="2"), workers=2)

    def stored() -> int:
        with closing(sqlite3.connect(relay.log_path.parent / "relay.db")) as store:
            return int(store.execute("SELECT COUNT(*) FROM open_streams").fetchone()[0])

    _check_limit_of_two([relay.url], stored, 2)


def test_streams_per_address(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream,
) -> None:
    relay = start_relay(_env(upstream, RELAY_MAX_STREAMS_PER_ADDRESS="3"), workers=2)
    with streams_of([]) as opened:
        for _ in range(3):  # three visitors behind one address, a stream each
            headers = _visitor(relay.url, "203.0.113.9")
            opened.append(Stream(relay.url, _tickets(relay.url, headers, 1)[0], headers))
            assert opened[-1].status == 200
        fourth = _visitor(relay.url, "203.0.113.9")
        refused = Stream(relay.url, _tickets(relay.url, fourth, 1)[0], fourth)
        _assert_refused(refused, "your address", 3)
        elsewhere = _visitor(relay.url, "203.0.113.10")
        opened.append(Stream(relay.url, _tickets(relay.url, elsewhere, 1)[0], elsewhere))
        assert opened[-1].status == 200


@pytest.mark.parametrize("redis", [False, pytest.param(True, marks=pytest.mark.redis)],
                         ids=["store", "redis"])
def test_a_killed_workers_streams_stop_counting(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, redis: bool,
) -> None:
    relay = start_relay(_env(upstream, RELAY_MAX_STREAMS_PER_USER="2", RELAY_LEASE_SECONDS="2",
                             RELAY_CANCEL_ON_DISCONNECT="false",
                             **({"REDIS_URL": REDIS_URL} if redis else {})), workers=2)
    headers = _visitor(relay.url, "192.0.2.1")
    paths = _tickets(relay.url, headers, 3)
    with streams_of([Stream(relay.url, path, headers) for path in paths]) as opened:
        assert [stream.status for stream in opened] == [200, 200, 429]
        with closing(sqlite3.connect(relay.log_path.parent / "relay.db")) as store:
            # A stream's GET claimed its ticket: the worker that claimed it holds its place.
            workers = {row[0] for row in store.execute(
                "SELECT claimed_by FROM tickets WHERE status = 'running'")}
            in_store = store.execute("SELECT COUNT(*) FROM open_streams").fetchone()[0]
        assert len(workers) in (1, 2) and in_store == (0 if redis else 2)
        for worker in workers:  # `host:pid:nonce`: no chance to give anything back
            os.kill(int(worker.split(":")[1]), signal.SIGKILL)
        opened.append(_admitted_again(relay.url, paths[2], headers, within=20))


@pytest.mark.postgres
@pytest.mark.parametrize("redis", [False, pytest.param(True, marks=pytest.mark.redis)],
                         ids=["store", "redis"])
def test_streams_per_user_across_two_hosts_on_postgresql(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str,
    redis: bool,
) -> None:
    env = _env(upstream, DATABASE_URL=migrated_postgres, RELAY_MAX_STREAMS_PER_USER="2",
               RELAY_SECRET_KEY="shared-secret-of-the-two-hosts-0123456789",
               **({"REDIS_URL": REDIS_URL} if redis else {}))
    hosts = start_relay(env, workers=2), start_relay(env, workers=2)

    def stored() -> int:
        with psycopg.connect(migrated_postgres) as store:
            return int(store.execute("SELECT COUNT(*) FROM open_streams").fetchone()[0])

    # Counted by Redis, the store's table is never written; else it holds the two admitted.
    _check_limit_of_two([host.url for host in hosts], stored, 0 if redis else 2)


@pytest.mark.parametrize("redis", [False, pytest.param(True, marks=pytest.mark.redis)],
                         ids=["store", "redis"])
def test_a_users_override_is_their_limit_and_nobody_elses(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, redis: bool,
) -> None:
    # No RELAY_MAX_STREAMS_PER_USER: the override alone turns the limit on, for that user.
    relay = start_relay(_env(upstream, RELAY_AUTH="accounts", RELAY_HEARTBEAT_SECONDS="2",
                             **({"REDIS_URL": REDIS_URL} if redis else {})), workers=2)
    limited, other = new_user(relay, "limited"), new_user(relay, "other")
    assert "max_streams=1" in cli_output(relay, "users", "limits", limited, "--max-streams", "1")
    key_id, key = new_key(relay, limited)
    by_key = relay_cli(relay, "keys", "limits", key_id, "--max-streams", "1")
    assert by_key.returncode != 0 and "a user's limit, not a key's" in by_key.stderr
    time.sleep(1.1)  # overrides are looked for once a second
    limited_headers, other_headers = _session(relay, limited), _session(relay, other)
    paths = _tickets(relay.url, limited_headers, 2)
    with streams_of([Stream(relay.url, path, limited_headers) for path in paths]) as opened:
        assert [stream.status for stream in opened] == [200, 429]
        _assert_refused(opened[1], "you", 1)
        # A stream of their API key is theirs: refused as well.
        opened.append(Stream(relay.url, _tickets(relay.url, bearer(key), 1)[0], bearer(key)))
        _assert_refused(opened[-1], "you", 1)
        others = [Stream(relay.url, path, other_headers)
                  for path in _tickets(relay.url, other_headers, 3)]
        opened.extend(others)
        assert [stream.status for stream in others] == [200, 200, 200]
        with httpx.Client(base_url=relay.url, timeout=30, headers=limited_headers) as http:
            assert http.get("/usage").json()["limits"]["user"]["max_streams"] == 1
        opened[0].close()  # its place is given back: the refused one is admitted
        opened.append(_admitted_again(relay.url, paths[1], limited_headers, limit=1))


def _session(relay: RelayServer, name: str) -> dict[str, str]:
    """Headers carrying a new session of `name`."""
    with signed_in(relay, name) as http:
        return {"Cookie": "; ".join(f"{key}={value}" for key, value in http.cookies.items())}


@pytest.fixture()
def one_stream_relay(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> RelayServer:
    # A long heartbeat: a stream whose connection was cut holds its place until its next write.
    return start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo",
        "RELAY_MAX_STREAMS_PER_USER": "1", "RELAY_HEARTBEAT_SECONDS": "60",
        "RELAY_RETRY_MS": "200",
    }, workers=2)


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    """One visitor (one cookie) whose tabs may run axe-core and must raise no uncaught error."""
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    context.set_default_timeout(15_000)
    errors: list[Any] = []
    context.on("page", lambda page: errors.extend(page_errors(page)) or None)
    yield context
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _refused_says(answer: Locator, start: str) -> None:
    expect(answer.locator(".error")).to_contain_text(
        f"{start}: Too many open streams. Try again in 5 seconds.")
    expect(answer.locator(".error")).to_contain_text("at most 1")
    expect(answer.locator(".retry-start")).to_be_visible()
    expect(answer.locator(".regenerate")).to_be_hidden()


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_the_page_says_a_refused_stream_and_retries_it(
    context: BrowserContext, one_stream_relay: RelayServer
) -> None:
    first = context.new_page()
    chat = ChatPage(first).open(one_stream_relay.url + "/")
    chat.add_model_option(STALLED)
    held = chat.send("held open", model=STALLED)
    chat.wait_status(held, "streaming")  # two chunks shown; its stream holds the one place
    # The same visitor opens the conversation in a second tab: its answer's stream is refused
    # (an HTTP 429 the EventSource cannot read), which the page says instead of reconnecting.
    second = context.new_page()
    other = ChatPage(second).open(first.url)
    answer = other.answers.last
    other.wait_status(answer, "refused")
    _refused_says(answer, "Could not start")
    expect(second.locator("#send")).to_be_visible()
    assert axe_violations(second) == []
    # The first tab stops its answer, which ends its stream: Retry now shows it whole.
    first.click("#stop")
    chat.wait_status(held, "cancelled")
    answer.locator(".retry-start").click()
    other.wait_status(answer, "cancelled")
    assert other.text_of(answer) == chat.text_of(held) == "held o"


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_a_reconnect_refused_mid_answer_keeps_the_text_and_goes_on_after_it(
    context: BrowserContext, one_stream_relay: RelayServer
) -> None:
    proxy = SeveringProxy(one_stream_relay.port)
    try:
        page = context.new_page()
        chat = ChatPage(page).open(proxy.url + "/")
        chat.add_model_option(STALLED)
        answer = chat.send("cut off", model=STALLED)
        chat.wait_status(answer, "streaming")
        ticket = answer.get_attribute("data-ticket")
        # The network drops; the relay will not notice before its next write, so the page's
        # reconnect finds the place still taken by the stream it lost.
        assert proxy.sever() >= 1
        chat.wait_status(answer, "refused")
        _refused_says(answer, "Could not go on")
        assert chat.text_of(answer) == "cut of"
        # Its stream's next write (the `done` of a cancel) fails: the place is given back, and
        # Retry goes on after the text shown, with nothing twice.
        stopped = page.request.post(f"{one_stream_relay.url}/sse/{ticket}/cancel")
        assert stopped.status == 202
        answer.locator(".retry-start").click()
        chat.wait_status(answer, "cancelled")
        assert chat.text_of(answer) == "cut of"
    finally:
        proxy.close()
