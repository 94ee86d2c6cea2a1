"""Secrets never reach a log or a response: one run of a real relay (accounts mode, gunicorn's
access log on, relay's log at DEBUG) through sign-ins, keys, key-made tickets streamed by
`access_token`, a revocation and bad credentials; then its whole log is searched for every
password, key, token and session cookie it saw."""

from __future__ import annotations

import concurrent.futures
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ..helpers import assert_error_shape, read_stream, text_of
from .accounts import COOKIE, bearer, cli_output, new_key
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)

SLOW_PROMPT = "".join(f"{n:03d}," for n in range(400))  # 400 chunks of 20 ms: about 8 s


class Run:
    """What the run's clients received, and the secrets it used."""

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay
        self.responses: list[httpx.Response] = []
        self.passwords: list[str] = []
        self.keys: list[str] = []
        self.tokens: list[str] = []
        self.cookies: list[str] = []

    def client(self, **options: Any) -> httpx.Client:
        """A client whose every (non-streamed) response is kept."""
        def keep(response: httpx.Response) -> None:
            response.read()
            self.responses.append(response)
        return httpx.Client(base_url=self.relay.url, timeout=30,
                            event_hooks={"response": [keep]}, **options)

    def sign_in(self, http: httpx.Client, name: str, password: str) -> None:
        response = http.post("/auth/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        self.keep_cookie(response)

    def keep_cookie(self, response: httpx.Response) -> None:
        value = response.cookies[COOKIE].strip('"')
        session_token = value.rsplit(".", 1)[0].removeprefix("s:")
        assert len(session_token) >= 20, value
        self.cookies += [value, session_token]

    def new_ticket(self, http: httpx.Client, key: str, prompt: str) -> dict[str, Any]:
        response = http.post("/new", json={"prompt": prompt}, headers=bearer(key))
        assert response.status_code == 201, response.text
        ticket: dict[str, Any] = response.json()
        token = ticket["stream_url"].split("access_token=", 1)[1]
        self.tokens += [token, token.rsplit(".", 1)[1]]  # and its signature alone
        return ticket


def secret_password() -> str:
    return "pw-" + secrets.token_urlsafe(16)


def test_no_secret_reaches_the_log_or_a_later_response(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay({
        "RELAY_AUTH": "accounts", "RELAY_ACCESS_LOG": "-", "RELAY_LOG_LEVEL": "DEBUG",
        "RELAY_DEFAULT_MODEL": "mock-echo", "RELAY_MOCK_DELAY_MS": "20",
    })
    run = Run(relay)
    name, password, new_password = "secretive", secret_password(), secret_password()
    wrong = [secret_password(), secret_password()]
    run.passwords += [password, new_password, *wrong]
    cli_output(relay, "users", "create", name, "--password-stdin", stdin=password + "\n")

    with run.client() as browser, run.client() as api, \
            httpx.Client(base_url=relay.url, timeout=30) as plain:
        # Sign-ins: wrong (JSON and a form), then right.
        refused = browser.post("/auth/login", json={"username": name, "password": wrong[0]})
        assert_error_shape(refused, 401, "invalid_credentials")
        refused = browser.post("/auth/login", data={"username": name, "password": wrong[1]})
        assert_error_shape(refused, 401, "invalid_credentials")
        run.sign_in(browser, name, password)

        # A key made in the page, one made by the operator's CLI.
        created = browser.post("/auth/keys", json={"name": "laptop"})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        _, cli_key = new_key(relay, name)
        run.keys += [key, cli_key]
        creation = created

        # Key-made tickets streamed by access_token: to the end, resumed, tampered.
        ticket = run.new_ticket(api, key, "streamed by its token")
        events = read_stream(plain, ticket["stream_url"])
        assert text_of(events) == "streamed by its token"
        assert read_stream(plain, ticket["stream_url"], last_event_id=2) == events[2:]
        tampered = ticket["stream_url"][:-3] + ("AAA" if ticket["stream_url"][-3:] != "AAA"
                                                else "BBB")
        assert_error_shape(plain.get(tampered), 401, "invalid_token")
        cli_ticket = run.new_ticket(api, cli_key, "made with the operator's key")
        assert text_of(read_stream(plain, cli_ticket["stream_url"])) == (
            "made with the operator's key")

        # Revoked while its ticket streams: the stream ends, the key and its tokens stop.
        slow = run.new_ticket(api, key, SLOW_PROMPT)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(read_stream, plain, slow["stream_url"])
            deadline = time.monotonic() + 10
            while api.get(f"/tickets/{slow['id']}", headers=bearer(key)).json()[
                    "last_event_id"] < 3:
                assert time.monotonic() < deadline, "the slow ticket did not start"
                time.sleep(0.05)
            assert browser.delete(f"/auth/keys/{key_id}").status_code == 204
            done = streaming.result(timeout=20)[-1]
        assert done[1] == "done" and done[2]["status"] == "cancelled", done
        assert done[2]["error"]["code"] == "key_revoked", done
        deadline = time.monotonic() + 3
        while (after := api.get("/v1/models", headers=bearer(key))).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.1)
        error = assert_error_shape(after, 401, "invalid_api_key")
        assert key[:10] in error["message"], error  # the prefix names it, nothing more
        assert_error_shape(plain.get(slow["stream_url"], headers={"Last-Event-ID": "1"}), 401,
                           "invalid_token")

        # Keys that never were.
        bad = ["rk_" + secrets.token_urlsafe(32), "sk-" + secrets.token_urlsafe(30)]
        run.keys += bad
        for each in bad:
            assert_error_shape(api.post("/new", json={"prompt": "x"}, headers=bearer(each)),
                               401, "invalid_api_key")

        # A password change (a new session), the listing, sign-out.
        changed = browser.post("/auth/password", json={"current_password": password,
                                                       "new_password": new_password})
        assert changed.status_code == 204, changed.text
        run.keep_cookie(changed)
        listing = browser.get("/auth/keys")
        assert listing.status_code == 200, listing.text
        assert {key[:10], cli_key[:10]} <= {each["prefix"] for each in listing.json()["keys"]}
        assert browser.post("/auth/logout").status_code == 204
    operator_listing = cli_output(relay, "keys", "list", name)
    assert key[:10] in operator_listing and cli_key[:10] in operator_listing

    relay.stop()  # every record written
    log = relay.log()
    assert re.search(r'"POST /auth/login HTTP/1.1" 401 ', log), "gunicorn's access log is off"
    assert f'"GET /sse/{ticket["id"]}' in log
    assert "cancel requested (its API key was revoked)" in log
    leaks = [what for what in [*run.passwords, *run.tokens, *run.cookies] if what in log]
    leaks += [key for key in run.keys if key[:11] in log or key[10:] in log]
    assert leaks == [], leaks

    # No response but the key's creation shows it; none shows a password or a session token.
    assert key in creation.text
    for response in run.responses:
        shown = response.text + str(response.headers.raw)
        for secret in [*run.keys, *run.passwords]:
            if response is not creation:
                assert secret not in shown, (response.request.url, response.status_code)
    assert key not in operator_listing and cli_key not in operator_listing
