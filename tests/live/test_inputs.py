"""Inputs that once made a real server on PostgreSQL answer 500, leave a ticket `running` for
good, or write multi-line logs: NUL in stored text, an out-of-range `max_tokens`, an odd
`finish_reason`; and the SQL statement cache that user-chosen sizes could grow."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine

from relay import sql

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = [pytest.mark.timeout(90), pytest.mark.postgres]

# The start of a record: gunicorn's `[2026-...] [pid] [LEVEL]` or relay's `2026-... LEVEL`.
RECORD_START = re.compile(r"^(\[\d{4}-\d\d-\d\d |\d{4}-\d\d-\d\d )")


@pytest.fixture(scope="module")
def server(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, migrated_postgres: str
) -> RelayServer:
    return start_relay({
        "DATABASE_URL": migrated_postgres, "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo",
    })


@pytest.fixture()
def http(server: RelayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def finished(http: httpx.Client, ticket: dict[str, Any]) -> dict[str, Any]:
    """Start the ticket (a reader that leaves after the first event), then its state once it
    has ended (or as it is after 20 s: a ticket that could not end stays `running`)."""
    read_stream(http, ticket["stream_url"], stop_after=1)
    deadline = time.monotonic() + 20
    while True:
        state: dict[str, Any] = http.get(f"/tickets/{ticket['id']}").json()
        if state["status"] not in ("pending", "running") or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


NUL_BODIES = [
    {"prompt": "a\x00b"},
    {"prompt": "ok", "system": "be\x00brief"},
    {"prompt": "ok", "model": "echo\x00"},
    {"messages": [{"role": "user", "content": "hi\x00"}]},
    {"prompt": "ok", "conversation_id": "\x00"},
]


@pytest.mark.parametrize("body", NUL_BODIES)
def test_nul_in_any_text_of_a_new_ticket_is_refused(http: httpx.Client, body: dict) -> None:
    assert_error_shape(http.post("/new", json=body), 400, "invalid_request")


def test_nul_in_a_form_prompt_a_chat_completion_or_a_title_is_refused(http: httpx.Client) -> None:
    assert_error_shape(http.post("/new", data={"prompt": "a\x00b"}), 400, "invalid_request")
    completion = {"model": "echo", "messages": [{"role": "user", "content": "x\x00"}]}
    assert_error_shape(http.post("/v1/chat/completions", json=completion), 400, "invalid_request")
    ticket = new_ticket(http, "a title to rename")
    read_stream(http, ticket["stream_url"])
    renamed = http.patch(f"/conversations/{ticket['conversation_id']}", json={"title": "t\x00"})
    assert_error_shape(renamed, 400, "invalid_request")
    # An escaped backslash before `u0000` is no NUL.
    assert new_ticket(http, "a \\u0000 b")["id"]


@pytest.mark.parametrize("body", [
    {"prompt": "x", "max_tokens": 10**20},  # a float to JSON
    {"prompt": "x", "max_tokens": 2**64 - 1},
    {"prompt": "x", "max_tokens": 2**31},
])
def test_max_tokens_beyond_what_an_upstream_takes_is_refused(
    http: httpx.Client, body: dict
) -> None:
    assert_error_shape(http.post("/new", json=body), 400, "invalid_request")


def test_a_form_max_tokens_of_ten_to_the_twenty_is_refused(http: httpx.Client) -> None:
    form = {"prompt": "x", "max_tokens": str(10**20)}
    assert_error_shape(http.post("/new", data=form), 400, "invalid_request")
    assert http.post("/new", data={**form, "max_tokens": str(2**31 - 1)}).status_code == 201


def test_an_answer_with_nul_is_stored_and_delivered_exactly(http: httpx.Client) -> None:
    ticket = new_ticket(http, "nul_in_the_answer_" * 5, model="nul")
    answer = "nul\x00in\x00the\x00answer\x00" * 5
    assert finished(http, ticket)["status"] == "completed"
    events = read_stream(http, ticket["stream_url"])
    assert text_of(events) == answer and events[-1][2]["status"] == "completed"
    assert http.get(f"/tickets/{ticket['id']}").json()["text"] == answer
    shown = http.get(f"/conversations/{ticket['conversation_id']}").json()
    assert shown["messages"][-1]["content"] == answer.replace("\x00", "\ufffd")
    follow_up = new_ticket(http, "and then?", conversation_id=ticket["conversation_id"])
    assert text_of(read_stream(http, follow_up["stream_url"])) == "and then?"


def test_an_over_long_finish_reason_ends_the_ticket_and_logs_stay_one_line_each(
    http: httpx.Client, server: RelayServer
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    prompt = f"{secret}\nFAKE [2020-01-01 00:00:00 +0000] [1] [ERROR] forged\r\n" + "x" * 100
    ticket = new_ticket(http, prompt, model="finish-as-prompt")
    assert finished(http, ticket)["status"] == "completed"
    events = read_stream(http, ticket["stream_url"])
    assert text_of(events) == prompt
    assert events[-1][2]["finish_reason"] == prompt[:64]
    follow_up = new_ticket(http, "not stuck", conversation_id=ticket["conversation_id"])
    assert text_of(read_stream(http, follow_up["stream_url"])) == "not stuck"
    log = server.log()
    assert secret not in log and "forged" not in log
    assert [line for line in log.splitlines() if not RECORD_START.match(line)] == []


def test_a_database_error_quoting_the_prompt_reaches_neither_the_user_nor_the_log(
    http: httpx.Client, server: RelayServer, migrated_postgres: str
) -> None:
    # PostgreSQL quotes the whole row in the DETAIL of a failed check, prompt and all; an
    # operator's constraint (or trigger) is one way to meet such an error.
    secret = f"secret-{uuid.uuid4().hex}"
    check = ("ALTER TABLE messages ADD CONSTRAINT no_secrets "
             "CHECK (content NOT LIKE 'secret-%') NOT VALID")  # earlier tests stored secrets
    with psycopg.connect(migrated_postgres, autocommit=True) as conn:
        conn.execute(check)
        try:
            failed = http.post("/new", json={"prompt": f"{secret}\nFAKE [2020-01-01] forged"})
        finally:
            conn.execute("ALTER TABLE messages DROP CONSTRAINT no_secrets")
    error = assert_error_shape(failed, 500, "internal_error")
    assert error["message"] == "The relay hit an internal error."
    log = server.log()
    assert secret not in log and "forged" not in log and "Failing row" not in log
    assert [line for line in log.splitlines() if not RECORD_START.match(line)] == []
    crash = [line for line in log.splitlines() if "unhandled error in POST /new" in line]
    assert len(crash) == 1 and "psycopg.errors.CheckViolation [23514] at " in crash[0]


def test_the_statement_cache_stays_small_whatever_sizes_callers_choose(
    migrated_postgres: str,
) -> None:
    engine = create_engine(migrated_postgres.replace("postgresql://", "postgresql+psycopg://"))
    caches = [f for f in vars(sql).values() if hasattr(f, "cache_info")]
    try:
        for count in range(1, 401):
            with sql.Transaction(engine) as tx:
                found = tx.execute(
                    f"SELECT count(*) FROM messages WHERE id IN ({sql.placeholders(count)}) "
                    "AND role <> '%'", list(range(-count, 0)),
                ).fetchone()
            assert found == (0,)
    finally:
        engine.dispose()
    assert sum(f.cache_info().currsize for f in caches) <= 64


def test_a_failed_model_listing_is_not_remembered(
    start_relay: Callable[..., RelayServer],
) -> None:
    upstream = FakeUpstream()
    try:
        # One worker: the request after the failure must meet the worker that saw it.
        server = start_relay({"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url},
                             workers=1)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            upstream.models_failures = 1
            refused = client.post("/new", json={"prompt": "while it is down"})
            error = assert_error_shape(refused, 503, "upstream_error")
            assert "name a model" in error["message"]
            named = new_ticket(client, "a named model needs no list", model="echo")
            assert text_of(read_stream(client, named["stream_url"])) == (
                "a named model needs no list")
            ticket = new_ticket(client, "once it is back")
            assert client.get(f"/tickets/{ticket['id']}").json()["model"] == "echo"
            assert text_of(read_stream(client, ticket["stream_url"])) == "once it is back"
    finally:
        upstream.close()
