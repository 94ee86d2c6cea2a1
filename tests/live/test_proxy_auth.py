"""`RELAY_AUTH=proxy` through a real relay: the user a trusted proxy names, nobody without the
header or from an address relay was not told to trust, a disabled user refused within seconds,
no start without `RELAY_TRUSTED_PROXIES`; and `Secure` session cookies behind a trusted proxy
(accounts mode)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .accounts import COOKIE, PASSWORD, cli_output, new_user, relay_cli
from .relay_server import RelayServer, free_port

pytestmark = pytest.mark.timeout(60)

MOCK = {"RELAY_DEFAULT_MODEL": "mock-echo"}


@pytest.fixture(scope="module")
def proxy_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    return start_relay({"RELAY_AUTH": "proxy", "RELAY_TRUSTED_PROXIES": "127.0.0.1", **MOCK})


def as_user(relay: RelayServer, name: str | None) -> httpx.Client:
    """A client whose requests come through the proxy as `name` (None: no user header)."""
    headers = {"X-Forwarded-User": name} if name is not None else {}
    return httpx.Client(base_url=relay.url, headers=headers, timeout=30)


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


def test_the_proxy_names_the_user_and_their_tickets_are_theirs(proxy_relay: RelayServer) -> None:
    alice, bob = unique("alice"), unique("bob")
    with as_user(proxy_relay, alice) as her, as_user(proxy_relay, bob) as him, \
            as_user(proxy_relay, None) as nobody:
        me = her.get("/auth/me")
        assert me.status_code == 200, me.text
        assert me.json() == {"user": {"name": alice, "admin": False}, "auth": "proxy"}
        assert alice in cli_output(proxy_relay, "users", "list")

        ticket = new_ticket(her, "mine, through the proxy")
        assert text_of(read_stream(her, ticket["stream_url"])) == "mine, through the proxy"
        shown = her.get(f"/tickets/{ticket['id']}")
        assert shown.status_code == 200 and shown.json()["status"] == "completed", shown.text
        listed = her.get("/conversations").json()
        assert ticket["conversation_id"] in str(listed)
        assert "set-cookie" not in shown.headers  # the proxy's header is the credential

        for response in (him.get(f"/tickets/{ticket['id']}"), him.get(ticket["stream_url"]),
                         him.post(f"/sse/{ticket['id']}/cancel"),
                         him.get(f"/conversations/{ticket['conversation_id']}")):
            assert response.status_code == 404, (response.request.url, response.text)
        assert ticket["conversation_id"] not in str(him.get("/conversations").json())

        for response in (nobody.get(f"/tickets/{ticket['id']}"), nobody.get("/conversations"),
                         nobody.post("/new", json={"prompt": "who am I?"})):
            assert_error_shape(response, 401, "unauthenticated")
        refused = nobody.get("/auth/me")
        assert refused.status_code == 401 and refused.json()["auth"] == "proxy", refused.text
    with as_user(proxy_relay, "not a user name!") as odd:
        assert_error_shape(odd.post("/new", json={"prompt": "hi"}), 401, "unauthenticated")


def test_a_disabled_proxy_user_is_refused_within_seconds(proxy_relay: RelayServer) -> None:
    carol = unique("carol")
    with as_user(proxy_relay, carol) as her:
        assert her.get("/auth/me").status_code == 200
        cli_output(proxy_relay, "users", "disable", carol)
        disabled = time.monotonic()
        while (status := her.get("/auth/me").status_code) != 401:
            assert status == 200
            assert time.monotonic() - disabled < 2.5, "still signed in 2.5 s after disabling"
            time.sleep(0.05)
        # Every worker says so from now on.
        for _ in range(6):
            assert_error_shape(her.post("/new", json={"prompt": "still me?"}), 401,
                               "unauthenticated")


def test_the_header_from_an_address_not_trusted_is_ignored(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay({"RELAY_AUTH": "proxy", "RELAY_TRUSTED_PROXIES": "10.9.9.9", **MOCK},
                        workers=1)
    alice = unique("alice")
    with as_user(relay, alice) as her:
        assert her.get("/auth/me").status_code == 401
        assert_error_shape(her.post("/new", json={"prompt": "let me in"}), 401,
                           "unauthenticated")
        assert_error_shape(her.get("/conversations"), 401, "unauthenticated")
    assert alice not in cli_output(relay, "users", "list")


def test_proxy_mode_will_not_start_without_trusted_proxies(tmp_path: Path) -> None:
    serve = relay_cli({"RELAY_INSTANCE_PATH": str(tmp_path), "RELAY_AUTH": "proxy"},
                      "serve", "--bind", f"127.0.0.1:{free_port()}", "--workers", "1")
    assert serve.returncode != 0, serve.stdout
    assert "RELAY_TRUSTED_PROXIES" in serve.stderr, serve.stderr
    assert "Traceback" not in serve.stderr, serve.stderr
    assert serve.stderr.strip().splitlines()[-1].startswith("Error: RELAY_AUTH=proxy needs "
                                                             "RELAY_TRUSTED_PROXIES")


def session_cookie(relay: RelayServer, name: str, **headers: str) -> str:
    response = httpx.post(relay.url + "/auth/login", json={"username": name, "password": PASSWORD},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    [cookie] = response.headers.get_list("set-cookie")
    assert cookie.startswith(f"{COOKIE}="), cookie
    return cookie


def attributes(cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def test_sign_in_through_a_trusted_https_proxy_gets_a_secure_cookie(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay({"RELAY_AUTH": "accounts", "RELAY_TRUSTED_PROXIES": "127.0.0.1", **MOCK},
                        workers=1)
    name = new_user(relay)
    behind_https = session_cookie(relay, name, **{"X-Forwarded-Proto": "https"})
    assert {"secure", "httponly", "samesite"} <= attributes(behind_https), behind_https
    assert "samesite=lax" in behind_https.lower()
    plain_http = session_cookie(relay, name)
    assert "secure" not in attributes(plain_http), plain_http
    assert {"httponly", "samesite"} <= attributes(plain_http), plain_http


def test_x_forwarded_proto_from_an_address_not_trusted_is_ignored(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay({"RELAY_AUTH": "accounts", "RELAY_TRUSTED_PROXIES": "10.9.9.9", **MOCK},
                        workers=1)
    name = new_user(relay)
    cookie = session_cookie(relay, name, **{"X-Forwarded-Proto": "https"})
    assert "secure" not in attributes(cookie), cookie
