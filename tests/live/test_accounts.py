"""Accounts mode through a real server (gunicorn, two gevent workers): no credentials is 401
everywhere but the public paths, nobody reaches another user's tickets or conversations through
any transport (cookie, key, stream token), cross-site requests riding on the cookie are refused,
and a key's model allow-list holds before any upstream call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .accounts import COOKIE, PASSWORD, People, Person, tag, unknown_id
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def server(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """An accounts-mode relay with two workers on SQLite, pointed at the fake upstream."""
    return start_relay({
        "RELAY_AUTH": "accounts", "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_TIMEOUT_SECONDS": "5",
        "RELAY_ACCESS_LOG": "-",
    })


@pytest.fixture(scope="module")
def people(server: RelayServer) -> Iterator[People]:
    made = People(server.url)
    yield made
    made.close()


@pytest.fixture(scope="module")
def alice(people: People) -> Person:
    return people.make("alice")


@pytest.fixture(scope="module")
def bob(people: People) -> Person:
    return people.make("bob")


def test_no_credentials_is_401_everywhere_but_the_public_paths(
    server: RelayServer, alice: Person
) -> None:
    ticket = new_ticket(alice.page, "mine " + tag())
    tid, cid = ticket["id"], ticket["conversation_id"]
    closed = [
        ("POST", "/new", {"prompt": "hello"}), ("GET", f"/sse/{tid}", None),
        ("GET", f"/tickets/{tid}", None), ("POST", f"/sse/{tid}/cancel", None),
        ("GET", "/conversations", None), ("GET", f"/conversations/{cid}", None),
        ("PATCH", f"/conversations/{cid}", {"title": "taken"}),
        ("DELETE", f"/conversations/{cid}", None),
        ("POST", "/v1/chat/completions", {"model": "echo",
                                          "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/models", None), ("GET", "/auth/keys", None),
        ("POST", "/auth/keys", {"name": "x"}), ("GET", "/admin/users", None),
        ("POST", "/admin/users", {"username": "intruder", "password": PASSWORD}),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as nobody:
        for method, path, body in closed:
            response = nobody.request(method, path, json=body)
            assert_error_shape(response, 401, "unauthenticated")
            assert "set-cookie" not in response.headers, path
        for path in ("/", "/static/js/app.js", "/static/style.css", "/healthz", "/openapi.json"):
            assert nobody.get(path).status_code == 200, path
        me = nobody.get("/auth/me")
        assert me.status_code == 401
        body = me.json()
        assert body["error"]["code"] == "unauthenticated" and body["error"]["message"]
        assert body["auth"] == "accounts" and body["setup_required"] is False
    # Nothing above touched alice's ticket.
    assert alice.page.get(f"/tickets/{tid}").json()["status"] == "pending"
    assert alice.page.get(f"/conversations/{cid}").status_code == 200


def _same_as_unknown(client: httpx.Client, method: str, path: str, real: str, unknown: str,
                     body: dict[str, Any] | None = None, status: int = 404) -> None:
    """The request on someone else's `real` id answers exactly as on an `unknown` one."""
    def ask(some_id: str) -> httpx.Response:
        return client.request(method, path.format(some_id),
                              json={k: v.format(some_id) if isinstance(v, str) else v
                                    for k, v in body.items()} if body is not None else None)

    theirs, nobodys = ask(real), ask(unknown)
    assert_error_shape(theirs, status)
    assert (theirs.status_code, theirs.json()) == (nobodys.status_code, nobodys.json()), path
    assert theirs.headers["content-type"] == nobodys.headers["content-type"]


def test_another_user_cannot_reach_tickets_or_conversations_by_any_transport(
    server: RelayServer, upstream: FakeUpstream, alice: Person, bob: Person
) -> None:
    words = f"alice's secret {tag()}"
    ticket = new_ticket(alice.page, words)
    tid, cid = ticket["id"], ticket["conversation_id"]
    title = alice.page.get(f"/conversations/{cid}").json()["title"]
    bobs = new_ticket(bob.api, "bob's own " + tag())
    token_url = bobs["stream_url"]
    assert "access_token=" in token_url
    token = token_url.split("access_token=", 1)[1]
    for client in (bob.page, bob.api):
        _same_as_unknown(client, "GET", "/tickets/{}", tid, unknown_id())
        _same_as_unknown(client, "GET", "/sse/{}", tid, unknown_id())
        _same_as_unknown(client, "POST", "/sse/{}/cancel", tid, unknown_id())
        _same_as_unknown(client, "GET", "/conversations/{}", cid, unknown_id())
        _same_as_unknown(client, "PATCH", "/conversations/{}", cid, unknown_id(),
                         {"title": "renamed by bob"})
        _same_as_unknown(client, "DELETE", "/conversations/{}", cid, unknown_id())
        _same_as_unknown(client, "POST", "/new", cid, unknown_id(),
                         {"prompt": "continue hers", "conversation_id": "{}"})
        head = client.head(f"/sse/{tid}")
        assert head.status_code == client.head(f"/sse/{unknown_id()}").status_code == 404
        listed = client.get("/conversations")
        assert listed.status_code == 200
        assert cid not in [c["id"] for c in listed.json()["conversations"]]
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        # Bob's stream token names his ticket: on hers it is as good as on no ticket at all.
        _same_as_unknown(bare, "GET", "/sse/{}?access_token=" + token, tid, unknown_id(),
                         status=401)
        _same_as_unknown(bare, "GET", "/sse/{}?last_event_id=1&access_token=" + token, tid,
                         unknown_id(), status=401)
        assert read_stream(bare, token_url)[-1][2]["status"] == "completed"
    # None of that started, renamed or deleted anything of hers.
    assert upstream.calls_with(words) == []
    shown = alice.api.get(f"/tickets/{tid}")
    assert shown.status_code == 200 and shown.json()["status"] == "pending"
    assert alice.api.get(f"/conversations/{cid}").json()["title"] == title
    # She reaches it all, whichever way she comes.
    events = read_stream(alice.page, ticket["stream_url"])
    assert text_of(events) == words and events[-1][2]["status"] == "completed"
    assert len(upstream.calls_with(words)) == 1
    assert alice.api.get(f"/tickets/{tid}").json()["text"] == words
    assert cid in [c["id"] for c in alice.api.get("/conversations").json()["conversations"]]
    renamed = alice.api.patch(f"/conversations/{cid}", json={"title": "hers"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "hers"
    by_key = new_ticket(alice.api, "by key " + tag(), conversation_id=cid)
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        streamed = read_stream(bare, by_key["stream_url"])
    assert streamed[-1][2]["status"] == "completed"
    assert alice.page.get(f"/tickets/{by_key['id']}").json()["status"] == "completed"
    assert alice.page.delete(f"/conversations/{cid}").status_code == 204
    assert_error_shape(alice.api.get(f"/conversations/{cid}"), 404)


def test_another_user_cannot_cancel_a_running_answer(
    server: RelayServer, alice: Person, bob: Person
) -> None:
    ticket = new_ticket(alice.api, "slowly, word by word " * 10, model="echo:40")
    first = read_stream(alice.api, ticket["stream_url"], stop_after=1)
    assert first[0][1] != "done"
    for client in (bob.page, bob.api):
        _same_as_unknown(client, "POST", "/sse/{}/cancel", ticket["id"], unknown_id())
    assert alice.page.get(f"/tickets/{ticket['id']}").json()["status"] == "running"
    cancelled = alice.page.post(f"/sse/{ticket['id']}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
    done = read_stream(alice.page, ticket["stream_url"], last_event_id=1)[-1]
    assert done[1] == "done" and done[2]["status"] == "cancelled"


def test_cross_site_requests_on_a_cookie_are_refused(
    server: RelayServer, alice: Person
) -> None:
    form = {"prompt": "a form from elsewhere " + tag()}
    before = len(alice.page.get("/conversations").json()["conversations"])
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                    {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}):
        refused = alice.page.post("/new", data=form, headers=headers)
        assert_error_shape(refused, 403, "cross_site_request")
    cid = new_ticket(alice.page, "to keep")["conversation_id"]
    for method, path in (("PATCH", f"/conversations/{cid}"), ("DELETE", f"/conversations/{cid}"),
                         ("POST", "/auth/logout"), ("POST", "/auth/keys")):
        refused = alice.page.request(method, path, json={"title": "x"}, headers={"Origin": EVIL})
        assert_error_shape(refused, 403, "cross_site_request")
    assert len(alice.page.get("/conversations").json()["conversations"]) == before + 1
    assert alice.page.get("/auth/me").status_code == 200  # the refused logout did not sign out
    for headers in ({"Origin": server.url}, {"Sec-Fetch-Site": "same-origin"},
                    {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}):
        accepted = alice.page.post("/new", data=form, headers=headers)
        assert accepted.status_code == 201, accepted.text
    # A key is no ambient credential: any page may use it.
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        by_key = alice.api.post("/new", data=form, headers=headers)
        assert by_key.status_code == 201, by_key.text


def test_a_cross_site_sign_in_form_is_refused(server: RelayServer, alice: Person) -> None:
    form = {"username": alice.name, "password": PASSWORD}
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        with httpx.Client(base_url=server.url, timeout=30) as victim:
            refused = victim.post("/auth/login", data=form, headers=headers)
            assert_error_shape(refused, 403, "cross_site_request")
            assert COOKIE not in victim.cookies
            refused = victim.post("/auth/setup", data=form, headers=headers)
            assert_error_shape(refused, 403, "cross_site_request")
    with httpx.Client(base_url=server.url, timeout=30) as own_page:
        signed_in = own_page.post("/auth/login", data=form, headers={"Origin": server.url})
        assert signed_in.status_code == 200, signed_in.text
        assert own_page.get("/auth/me").json()["user"]["name"] == alice.name


def test_a_key_limited_to_models_is_refused_others_before_any_upstream_call(
    server: RelayServer, upstream: FakeUpstream, people: People
) -> None:
    person = people.make("limited", models=["echo"])
    marker = tag()
    refused = person.api.post("/new", json={"prompt": marker, "model": "echo:5"})
    error = assert_error_shape(refused, 403, "model_not_allowed")
    assert "echo:5" in error["message"] and person.key not in error["message"]
    for stream in (False, True):
        refused = person.api.post("/v1/chat/completions", json={
            "model": "ragged", "stream": stream,
            "messages": [{"role": "user", "content": marker}],
        })
        assert_error_shape(refused, 403, "model_not_allowed")
    models = person.api.get("/v1/models")
    assert [m["id"] for m in models.json()["data"]] == ["echo"]
    # The allowed model (also the default) works; the same user's session is not limited.
    allowed = new_ticket(person.api, f"{marker} allowed")
    assert read_stream(person.api, allowed["stream_url"])[-1][2]["status"] == "completed"
    answered = person.api.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": f"{marker} v1"}],
    })
    assert answered.status_code == 200, answered.text
    by_session = new_ticket(person.page, f"{marker} session", model="echo:1")
    assert read_stream(person.page, by_session["stream_url"])[-1][2]["status"] == "completed"
    time.sleep(0.3)
    assert sorted(call.model for call in upstream.calls_with(marker)) == [
        "echo", "echo", "echo:1"]
    assert person.api.get("/conversations").json()["conversations"][0]["id"] == \
        by_session["conversation_id"]


def test_the_log_holds_no_password_key_or_stream_token(
    server: RelayServer, people: People, alice: Person
) -> None:
    ticket = new_ticket(alice.api, "a token in the URL")
    token = ticket["stream_url"].split("access_token=", 1)[1]
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        assert read_stream(bare, ticket["stream_url"])[-1][2]["status"] == "completed"
    # gunicorn writes the access line once the response is closed, after the client has `done`.
    deadline = time.monotonic() + 5
    while f'"GET /sse/{ticket["id"]} HTTP/1.1" 200' not in (log := server.log()):
        assert time.monotonic() < deadline, "the access log is off"
        time.sleep(0.05)
    for secret in [PASSWORD, token, "access_token", *(person.key for person in people.made),
                   *(person.key[10:] for person in people.made)]:
        assert secret not in log
