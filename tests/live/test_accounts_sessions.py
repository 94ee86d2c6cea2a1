"""Sessions and sign-in through real servers (gunicorn, two gevent workers, accounts mode):
forged, signed-out and expired session cookies are refused, a sign-in rotates the cookie,
failures look alike and are limited per user across workers (Redis), and twenty concurrent
set-ups of a fresh relay make one admin, on SQLite and on PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
from itsdangerous import Signer

from ..helpers import assert_error_shape, new_ticket
from .accounts import (
    COOKIE,
    PASSWORD,
    People,
    new_user,
    refused_within,
    relay_cli,
    tag,
    with_cookie,
)
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(90)

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def server(start_relay: Callable[..., RelayServer]) -> RelayServer:
    """An accounts-mode relay with two workers on SQLite and the built-in mock upstream."""
    return start_relay({"RELAY_AUTH": "accounts"})


@pytest.fixture(scope="module")
def people(server: RelayServer) -> Iterator[People]:
    made = People(server.url)
    yield made
    made.close()


def test_forged_and_unknown_session_cookies_are_refused(
    server: RelayServer, people: People
) -> None:
    value = people.make("forged").page.cookies[COOKIE]
    uid, _, signature = value.rpartition(".")
    # The first character: the last one of a base64 signature also carries padding bits, and
    # changing only those leaves the same bytes (the test then failed now and then).
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    secret = (server.log_path.parent / "secret_key").read_text().strip()
    signer = Signer(secret, salt="relay-identity", key_derivation="hmac",
                    digest_method=hashlib.sha256)
    forged = [
        f"{uid}.{flipped}",  # her session, a bad signature
        f"s:{secrets.token_urlsafe(32)}.{signature}",  # another session, her signature
        signer.sign("s:" + secrets.token_urlsafe(32)).decode(),  # well signed, no such session
        signer.sign("anon:" + secrets.token_urlsafe(18)).decode(),  # open mode's identity
        uid,  # no signature at all
    ]
    with with_cookie(server.url, value) as owner:
        assert owner.get("/auth/me").status_code == 200  # the real one
    for cookie in forged:
        with with_cookie(server.url, cookie) as forger:
            assert forger.get("/auth/me").status_code == 401
            assert_error_shape(forger.get("/conversations"), 401, "unauthenticated")
            assert_error_shape(forger.post("/new", json={"prompt": "x"}), 401, "unauthenticated")


def test_a_signed_out_session_cookie_is_refused_when_replayed(
    server: RelayServer, people: People
) -> None:
    person = people.make("leaver")
    value = person.page.cookies[COOKIE]
    ticket = new_ticket(person.page, "before leaving")
    with with_cookie(server.url, value) as replay:
        assert replay.get(f"/tickets/{ticket['id']}").status_code == 200
        left = person.page.post("/auth/logout")
        assert left.status_code == 204
        assert COOKIE not in person.page.cookies
        refused_within(lambda: replay.get(f"/tickets/{ticket['id']}"))
        assert_error_shape(replay.post("/new", json={"prompt": "again"}), 401, "unauthenticated")
    # The key is not a session: it still works.
    assert person.api.get(f"/tickets/{ticket['id']}").status_code == 200


def test_a_sign_in_rotates_the_cookie_and_sign_out_ends_every_session(
    server: RelayServer, people: People
) -> None:
    person = people.make("rotor")
    first = person.page.cookies[COOKIE]
    again = person.page.post("/auth/login", json={"username": person.name, "password": PASSWORD})
    assert again.status_code == 200
    second = person.page.cookies[COOKIE]
    assert second != first and second.rsplit(".", 1)[0] != first.rsplit(".", 1)[0]
    with httpx.Client(base_url=server.url, timeout=30) as other:
        other.post("/auth/login", json={"username": person.name, "password": PASSWORD})
        third = other.cookies[COOKIE]
    assert third not in (first, second)
    with with_cookie(server.url, first) as old:
        for _ in range(4):  # on both workers, the first session still lives
            assert old.get("/auth/me").json()["user"]["name"] == person.name
    assert person.page.post("/auth/logout").status_code == 204
    for cookie in (first, second, third):
        with with_cookie(server.url, cookie) as replay:
            refused_within(partial(replay.get, "/auth/me"))


def test_sign_in_failures_look_alike(server: RelayServer, people: People) -> None:
    known = people.make("known").name
    gone = people.make("gone").name
    disabled = people.admin.patch(f"/admin/users/{gone}", json={"disabled": True})
    assert disabled.status_code == 200, disabled.text
    tries = [(f"nobody-{tag()}", PASSWORD), (known, PASSWORD + "!"), (known, ""),
             ("no such\nname", PASSWORD), (gone, PASSWORD)]
    with httpx.Client(base_url=server.url, timeout=30) as nobody:
        answers = [nobody.post("/auth/login", json={"username": name, "password": password})
                   for name, password in tries]
        assert COOKIE not in nobody.cookies
    error = assert_error_shape(answers[0], 401, "invalid_credentials")
    assert all(answer.json() == answers[0].json() for answer in answers), answers
    assert all("set-cookie" not in answer.headers for answer in answers)
    assert PASSWORD not in error["message"]
    with httpx.Client(base_url=server.url, timeout=30) as page:
        page.post("/auth/login", json={"username": known, "password": PASSWORD})
        assert page.get("/auth/me").json()["user"]["name"] == known


# A relay of its own: one-second sessions, sign-in limits shared by both workers through Redis.


@pytest.fixture(scope="module")
def strict(
    start_relay: Callable[..., RelayServer], tmp_path_factory: pytest.TempPathFactory
) -> RelayServer:
    return start_relay({
        "RELAY_AUTH": "accounts", "RELAY_SESSION_DAYS": "0.00002",  # 1.7 s
        "RELAY_SIGNIN_ATTEMPTS": "3", "REDIS_URL": REDIS_URL,
        # So that each run counts its failures against an address of its own (X-Forwarded-For).
        "RELAY_TRUSTED_PROXIES": "127.0.0.1",
    }, instance=tmp_path_factory.mktemp("strict"))


@pytest.mark.redis
def test_an_expired_session_is_refused(strict: RelayServer) -> None:
    name = new_user(strict, "brief")
    with httpx.Client(base_url=strict.url, timeout=30) as page:
        started = time.monotonic()
        page.post("/auth/login", json={"username": name, "password": PASSWORD})
        value = page.cookies[COOKIE]
        me = page.get("/auth/me")
        if time.monotonic() - started < 1.5:  # a machine this slow proves nothing either way
            assert me.status_code == 200, me.text
    time.sleep(max(0.0, started + 1.8 - time.monotonic()))
    with with_cookie(strict.url, value) as expired:
        for _ in range(4):
            assert_error_shape(expired.get("/conversations"), 401, "unauthenticated")
            assert expired.get("/auth/me").status_code == 401


@pytest.mark.redis
def test_sign_ins_are_limited_per_user_across_workers(strict: RelayServer) -> None:
    name = new_user(strict, "limited")
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"

    def attempt(password: str, from_address: str = address, who: str = name) -> httpx.Response:
        # A new connection each time, so the attempts spread over both workers.
        return httpx.post(f"{strict.url}/auth/login", json={"username": who, "password": password},
                          headers={"X-Forwarded-For": from_address}, timeout=30)

    for _ in range(3):
        assert_error_shape(attempt("wrong password"), 401, "invalid_credentials")
    for password in (PASSWORD, "wrong password"):
        limited = attempt(password)
        assert_error_shape(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 15 * 60 + 1
        assert "set-cookie" not in limited.headers
    # Per user: another address is limited too, while another user still signs in there.
    elsewhere = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.251"
    assert_error_shape(attempt(PASSWORD, elsewhere), 429, "rate_limited")
    other = new_user(strict, "unlimited")
    assert attempt(PASSWORD, elsewhere, other).status_code == 200


# Twenty concurrent set-ups of a fresh relay: one admin, on SQLite and on PostgreSQL.

WAITING_FOR_LOCKS = ("SELECT count(*) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND wait_event_type = 'Lock'")


def _race_setup(url: str, count: int) -> list[httpx.Response]:
    barrier = threading.Barrier(count)

    def set_up(n: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as page:
            barrier.wait(timeout=30)
            return page.post("/auth/setup", json={"username": f"admin{n}", "password": PASSWORD})

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(set_up, range(count)))


def _race_setup_behind_a_lock(url: str, instance: Path, database_url: str | None,
                              count: int = 20) -> list[httpx.Response]:
    """`count` set-ups at once, their writes held back (a lock on the store) until each has
    looked for an admin: the window that a look-then-insert leaves open, made wide."""
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        if database_url is None:
            writer = sqlite3.connect(instance / "relay.db", isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                race = runner.submit(_race_setup, url, count)
                time.sleep(2.5)  # their hashes done, well within the server's 5 s busy timeout
                writer.execute("ROLLBACK")
            finally:
                writer.close()
        else:
            with psycopg.connect(database_url) as holder, \
                    psycopg.connect(database_url, autocommit=True) as watcher:
                holder.execute("LOCK TABLE users IN EXCLUSIVE MODE")  # reads go on, writes wait
                race = runner.submit(_race_setup, url, count)
                deadline = time.monotonic() + 30
                while (row := watcher.execute(WAITING_FOR_LOCKS).fetchone()) and row[0] < count:
                    assert time.monotonic() < deadline, f"{row[0]} set-ups waiting"
                    time.sleep(0.05)
                holder.rollback()
        return race.result(timeout=60)


@pytest.mark.parametrize("store", [
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
])
def test_twenty_concurrent_set_ups_make_one_admin(
    store: str, start_relay: Callable[..., RelayServer], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    database_url = request.getfixturevalue("migrated_postgres") if store == "postgresql" else None
    env = {"RELAY_AUTH": "accounts"}
    if database_url:
        env["DATABASE_URL"] = database_url
    # On SQLite a write waiting for the lock holds up its whole gevent worker, so each worker
    # lets one set-up past its look for an admin: more workers, a wider race.
    server = start_relay(env, instance=tmp_path, workers=4 if database_url is None else 2)
    before = httpx.get(f"{server.url}/auth/me", timeout=30).json()
    assert before["setup_required"] is True
    answers = _race_setup_behind_a_lock(server.url, tmp_path, database_url)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] + [409] * 19, [a.text for a in answers if a.status_code != 409]
    for answer in answers:
        if answer.status_code == 409:
            assert_error_shape(answer, 409, "already_set_up")
    winner = next(answer for answer in answers if answer.status_code == 201)
    name = winner.json()["user"]["name"]
    assert winner.json()["user"] == {"name": name, "admin": True}
    with with_cookie(server.url, winner.cookies[COOKIE]) as page:
        assert page.get("/auth/me").json()["user"]["name"] == name
    assert httpx.get(f"{server.url}/auth/me", timeout=30).json()["setup_required"] is False
    listed = relay_cli(tmp_path, "users", "list", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[:2] == [name, "admin"], listed.stdout
    late = httpx.post(f"{server.url}/auth/setup",
                      json={"username": "latecomer", "password": PASSWORD}, timeout=30)
    assert_error_shape(late, 409, "already_set_up")
