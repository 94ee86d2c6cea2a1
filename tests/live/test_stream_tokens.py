"""Stream tokens through a real relay (accounts mode, two workers): a key-made ticket's
`stream_url` streams with a plain GET, the token is refused when tampered, truncated, for
another ticket, expired (unless resuming a live ticket) or its key revoked, and it opens
nothing but that one stream."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ..helpers import assert_error_shape, read_stream, text_of
from .accounts import bearer, cli_output, new_key, new_user, signed_in
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

TOKEN_SECONDS = 2.0
CHUNK_SECONDS = 0.04  # the mock's pause between chunks; `mock-echo` sends 4 characters a chunk
SLOW_PROMPT = "".join(f"{n:03d}," for n in range(150))  # 150 chunks: about 6 s
BASE64_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def tokens_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    return start_relay({
        "RELAY_AUTH": "accounts", "RELAY_STREAM_TOKEN_SECONDS": str(TOKEN_SECONDS),
        "RELAY_MOCK_DELAY_MS": str(CHUNK_SECONDS * 1000), "RELAY_DEFAULT_MODEL": "mock-echo",
    })


@pytest.fixture(scope="module")
def owner(tokens_relay: RelayServer) -> str:
    return new_user(tokens_relay)


@pytest.fixture(scope="module")
def key(tokens_relay: RelayServer, owner: str) -> str:
    return new_key(tokens_relay, owner)[1]


@pytest.fixture()
def plain(tokens_relay: RelayServer) -> Iterator[httpx.Client]:
    """A GET-only client with no credentials."""
    with httpx.Client(base_url=tokens_relay.url, timeout=30) as http:
        yield http


def key_ticket(relay: RelayServer, key: str, prompt: str) -> dict[str, Any]:
    response = httpx.post(relay.url + "/new", json={"prompt": prompt}, headers=bearer(key),
                          timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def token_of(ticket: dict[str, Any]) -> str:
    [token] = parse_qs(urlsplit(ticket["stream_url"]).query)["access_token"]
    return str(token)


def stream_url(ticket_id: str, token: str) -> str:
    return f"/sse/{ticket_id}?access_token={token}"


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_a_plain_get_of_the_stream_url_streams_the_answer(
    tokens_relay: RelayServer, key: str
) -> None:
    prompt = "hello from a client that can only GET"
    ticket = key_ticket(tokens_relay, key, prompt)
    assert re.fullmatch(rf"/sse/{ticket['id']}\?access_token=[\w.-]+", ticket["stream_url"])
    # Not a cookie, not a header: the URL alone.
    response = httpx.get(tokens_relay.url + ticket["stream_url"], timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers
    blocks = [block.splitlines() for block in response.text.split("\n\n") if "data: " in block]
    data = [json.loads(line[len("data: "):]) for lines in blocks for line in lines
            if line.startswith("data: ")]
    assert "".join(each.get("delta", "") for each in data[:-1]) == prompt
    assert "event: done" in blocks[-1] and data[-1]["status"] == "completed"


def test_without_its_token_the_stream_url_is_refused(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    ticket = key_ticket(tokens_relay, key, "no token, no stream")
    assert_error_shape(plain.get(f"/sse/{ticket['id']}"), 401, "unauthenticated")
    assert_error_shape(plain.get(f"/sse/{ticket['id']}?access_token="), 401, "invalid_token")


def test_a_token_changed_in_any_one_character_is_refused(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    ticket = key_ticket(tokens_relay, key, "tamper with me")
    token = token_of(ticket)
    for at, char in enumerate(token):
        # Half the alphabet away: the character's top bit changes, which is never padding.
        other = BASE64_URL[(BASE64_URL.index(char) + 32) % 64] if char in BASE64_URL else "A"
        tampered = token[:at] + other + token[at + 1:]
        response = plain.get(stream_url(ticket["id"], tampered))
        assert response.status_code == 401, (at, char, other, response.status_code)
        assert_error_shape(response, 401, "invalid_token")
    # Untouched, it still works: the refusals above were the changes'.
    events = read_stream(plain, ticket["stream_url"])
    assert text_of(events) == "tamper with me"


@pytest.mark.parametrize("cut", [1, 8, 28, 50], ids=lambda cut: f"less{cut}")
def test_a_truncated_token_is_refused(
    tokens_relay: RelayServer, key: str, plain: httpx.Client, cut: int
) -> None:
    ticket = key_ticket(tokens_relay, key, "cut me short")
    token = token_of(ticket)
    assert len(token) > cut
    response = plain.get(stream_url(ticket["id"], token[:-cut]))
    assert_error_shape(response, 401, "invalid_token")


def test_a_token_opens_only_its_own_ticket(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    mine = key_ticket(tokens_relay, key, "ticket X")
    other = key_ticket(tokens_relay, key, "ticket Y, same owner, same key")
    response = plain.get(stream_url(other["id"], token_of(mine)))
    assert_error_shape(response, 401, "invalid_token")
    events = read_stream(plain, other["stream_url"])
    assert text_of(events) == "ticket Y, same owner, same key"


def test_an_expired_token_only_resumes_a_live_ticket(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    made = time.monotonic()
    ticket = key_ticket(tokens_relay, key, SLOW_PROMPT)
    first = read_stream(plain, ticket["stream_url"], stop_after=3)
    assert [int(i) for i, _, _ in first] == [1, 2, 3]
    wait_until(made + TOKEN_SECONDS + 0.3)

    assert_error_shape(plain.get(ticket["stream_url"]), 401, "invalid_token")
    assert_error_shape(plain.get(ticket["stream_url"], headers={"Last-Event-ID": ""}), 401,
                       "invalid_token")
    # Resumed by the query parameter while it runs: exactly after 5.
    by_query = read_stream(plain, ticket["stream_url"] + "&last_event_id=5", stop_after=3)
    assert [int(i) for i, _, _ in by_query] == [6, 7, 8]
    # Resumed by the header: exactly after 3, to the end.
    rest = read_stream(plain, ticket["stream_url"], last_event_id=3)
    assert time.monotonic() - made > TOKEN_SECONDS + 2, "the ticket ended too soon to tell"
    whole = first + rest
    assert [int(i) for i, _, _ in whole] == list(range(1, len(whole) + 1))
    assert text_of(whole) == SLOW_PROMPT
    assert whole[-1][1] == "done" and whole[-1][2]["status"] == "completed"
    assert by_query == whole[5:8]

    # Just ended: a reconnect still gets what it missed; once the ticket ended longer ago than
    # a token lives, the token is spent.
    assert read_stream(plain, ticket["stream_url"], last_event_id=len(whole) - 2) == whole[-2:]
    ended = time.monotonic()
    wait_until(ended + TOKEN_SECONDS + 0.5)
    response = plain.get(ticket["stream_url"], headers={"Last-Event-ID": "3"})
    assert_error_shape(response, 401, "invalid_token")
    response = plain.get(ticket["stream_url"] + "&last_event_id=3")
    assert_error_shape(response, 401, "invalid_token")


def test_an_expired_token_cannot_start_a_ticket_as_a_resume_from_zero(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    made = time.monotonic()
    ticket = key_ticket(tokens_relay, key, "never streamed in time")
    wait_until(made + TOKEN_SECONDS + 0.3)
    response = plain.get(ticket["stream_url"], headers={"Last-Event-ID": "0"})
    assert_error_shape(response, 401, "invalid_token")
    assert_error_shape(plain.get(ticket["stream_url"] + "&last_event_id=0"), 401,
                       "invalid_token")


def test_a_revoked_keys_token_is_refused(
    tokens_relay: RelayServer, owner: str, plain: httpx.Client
) -> None:
    key_id, secret = new_key(tokens_relay, owner, "--name", "soon revoked")
    ticket = key_ticket(tokens_relay, secret, "revoked before it streamed")
    cli_output(tokens_relay, "keys", "revoke", key_id)
    deadline = time.monotonic() + 3
    while (response := plain.get(ticket["stream_url"])).status_code != 401:
        assert time.monotonic() < deadline, f"still {response.status_code} after revocation"
        response.close()
        time.sleep(0.1)
    assert_error_shape(response, 401, "invalid_token")


def test_a_cookie_made_ticket_has_no_access_token(
    tokens_relay: RelayServer, owner: str
) -> None:
    with signed_in(tokens_relay, owner) as browser:
        response = browser.post("/new", json={"prompt": "made with a cookie"})
        assert response.status_code == 201, response.text
        ticket = response.json()
        assert ticket["stream_url"] == f"/sse/{ticket['id']}"
        assert text_of(read_stream(browser, ticket["stream_url"])) == "made with a cookie"


def test_the_token_works_on_no_other_endpoint(
    tokens_relay: RelayServer, key: str, plain: httpx.Client
) -> None:
    ticket = key_ticket(tokens_relay, key, SLOW_PROMPT)
    token = token_of(ticket)
    query = f"?access_token={token}"
    assert_error_shape(plain.get(f"/tickets/{ticket['id']}{query}"), 401, "unauthenticated")
    assert_error_shape(plain.post(f"/sse/{ticket['id']}/cancel{query}"), 401, "unauthenticated")
    conversation = f"/conversations/{ticket['conversation_id']}{query}"
    assert_error_shape(plain.get(conversation), 401, "unauthenticated")
    assert_error_shape(plain.get(f"/v1/models{query}"), 401, "unauthenticated")
    # The same requests with the key work: the refusals were the token's.
    shown = plain.get(f"/tickets/{ticket['id']}", headers=bearer(key))
    assert shown.status_code == 200, shown.text
    cancelled = plain.post(f"/sse/{ticket['id']}/cancel", headers=bearer(key))
    assert cancelled.status_code in (200, 202), cancelled.text
