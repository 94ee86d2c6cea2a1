"""The operator's `relay users ...` and `relay keys ...` on the store of a real accounts-mode
relay (gunicorn, two gevent workers): what they do is what the server then does, they never
print a key twice or a password at all, and every refusal is one line and a non-zero exit."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .accounts import (
    COOKIE,
    PASSWORD,
    bearer,
    cli_output,
    new_key,
    new_user,
    relay_cli,
    tag,
    with_cookie,
)
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)

NEW_PASSWORD = "another good passphrase"
KEY = re.compile(r"rk_[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def server(start_relay: Callable[..., RelayServer]) -> RelayServer:
    """An accounts-mode relay on SQLite with the built-in mock upstream."""
    return start_relay({"RELAY_AUTH": "accounts"})


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal: non-zero exit, one line on stderr naming `words`, no traceback."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def misused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """A usage error as click reports one: exit 2, the usage, then one `Error:` line."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), done.stderr
    for word in words:
        assert word in last, last
    return last


def sign_in(server: RelayServer, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.url}/auth/login", json={"username": name, "password": password},
                      timeout=30)


def rows_of(listing: str) -> dict[str, list[str]]:
    """A `list` table's rows by their first cell."""
    return {line.split()[0]: line.split() for line in listing.splitlines()[1:]}


def test_users_create_list_and_sign_in(
    server: RelayServer,
) -> None:
    admin, plain = f"boss-{tag()}", f"plain-{tag()}"
    made = cli_output(server, "users", "create", admin, "--admin", "--password-stdin",
                      stdin=PASSWORD + "\n")
    assert admin in made and "admin" in made
    made = cli_output(server, "users", "create", plain, "--password-stdin", stdin=PASSWORD + "\n")
    assert plain in made and "admin" not in made
    listing = cli_output(server, "users", "list")
    assert listing.splitlines()[0].split() == ["NAME", "ADMIN", "DISABLED", "CREATED"]
    rows = rows_of(listing)
    assert rows[admin][1] == "admin" and rows[plain][1] != "admin"
    assert "disabled" not in rows[admin] + rows[plain]
    assert PASSWORD not in made + listing
    for name, is_admin in ((admin, True), (plain, False)):
        answer = sign_in(server, name, PASSWORD)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"user": {"name": name, "admin": is_admin}}
    with httpx.Client(base_url=server.url, timeout=30) as page:
        page.post("/auth/login", json={"username": admin, "password": PASSWORD})
        assert plain in [u["name"] for u in page.get("/admin/users").json()["users"]]


def test_users_refusals_are_one_clear_line(
    server: RelayServer,
) -> None:
    name, ghost = new_user(server, "taken"), f"ghost-{tag()}"
    refused(relay_cli(server, "users", "create", name, "--password-stdin",
                      stdin=PASSWORD + "\n"), name, "exists")
    short = f"short-{tag()}"
    refused(relay_cli(server, "users", "create", short, "--password-stdin", stdin="tiny\n"),
            "8 characters")
    refused(relay_cli(server, "users", "create", "not a name", "--password-stdin",
                      stdin=PASSWORD + "\n"), "username")
    # No terminal to ask for the password:
    misused(relay_cli(server, "users", "create", f"quiet-{tag()}"), "--password-stdin")
    refused(relay_cli(server, "users", "disable", ghost), ghost)
    refused(relay_cli(server, "users", "set-password", ghost, "--password-stdin",
                      stdin=PASSWORD + "\n"), ghost)
    refused(relay_cli(server, "users", "set-password", name, "--password-stdin", stdin="tiny\n"),
            "8 characters")
    listing = cli_output(server, "users", "list")
    assert short not in listing and ghost not in listing and "not a name" not in listing


def test_users_disable_ends_sessions_and_keys(
    server: RelayServer,
) -> None:
    name = new_user(server, "leaving")
    _, key = new_key(server, name)
    with httpx.Client(base_url=server.url, timeout=30) as page, \
            httpx.Client(base_url=server.url, timeout=30, headers=bearer(key)) as api:
        assert page.post("/auth/login", json={"username": name, "password": PASSWORD}) \
            .status_code == 200
        assert page.get("/conversations").status_code == 200
        assert api.get("/conversations").status_code == 200
        assert name in cli_output(server, "users", "disable", name)
        assert_error_shape(sign_in(server, name, PASSWORD), 401, "invalid_credentials")
        # The credential caches live a second; the CLI took longer than that to return.
        assert_error_shape(page.get("/conversations"), 401, "unauthenticated")
        assert_error_shape(api.get("/conversations"), 401, "invalid_api_key")
    assert rows_of(cli_output(server, "users", "list"))[name][1] == "disabled"


def test_users_set_password(
    server: RelayServer,
) -> None:
    name = new_user(server, "forgetful")
    before = sign_in(server, name, PASSWORD)
    assert before.status_code == 200
    cookie = before.cookies[COOKIE]
    said = cli_output(server, "users", "set-password", name, "--password-stdin",
                      stdin=NEW_PASSWORD + "\r\n")
    assert NEW_PASSWORD not in said
    assert_error_shape(sign_in(server, name, PASSWORD), 401, "invalid_credentials")
    assert sign_in(server, name, NEW_PASSWORD).status_code == 200  # the line end is not in it
    with with_cookie(server.url, cookie) as old_session:
        assert_error_shape(old_session.get("/conversations"), 401, "unauthenticated")


def test_keys_create_list_use_and_revoke(
    server: RelayServer,
) -> None:
    name = new_user(server, "owner")
    label = f"laptop-{tag()}"
    out = cli_output(server, "keys", "create", name, "--name", label, "--expires-days", "7",
                     "--models", "mock-echo,mock-other")
    key = out.splitlines()[-1]
    assert KEY.fullmatch(key), out
    assert out.count(key) == 1
    key_id = re.search(r"\bkey_[A-Za-z0-9_-]+", out)
    assert key_id is not None, out
    with httpx.Client(base_url=server.url, timeout=30, headers=bearer(key)) as api:
        assert api.get("/auth/me").json()["user"]["name"] == name
        ticket = new_ticket(api, "through the key", model="mock-echo")
        events = read_stream(api, ticket["stream_url"])
        assert text_of(events) == "through the key" and events[-1][2]["status"] == "completed"
        assert_error_shape(api.post("/new", json={"prompt": "x", "model": "mock-third"}), 403,
                           "model_not_allowed")
        assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["mock-echo"]
        for listing in (cli_output(server, "keys", "list", name),
                        cli_output(server, "keys", "list")):
            assert key not in listing and key[10:] not in listing
            row = rows_of(listing)[key_id.group()]
            assert row[1] == key[:10] + "…" and row[2] == name and row[3] == label
            assert "revoked" not in row and row[-1] != "-"  # it expires
        said = cli_output(server, "keys", "revoke", key_id.group())
        assert key_id.group() in said and key not in said
        assert_error_shape(api.get("/conversations"), 401, "invalid_api_key")
    assert rows_of(cli_output(server, "keys", "list", name))[key_id.group()][-1] == "revoked"


def test_keys_refusals_are_one_clear_line(
    server: RelayServer,
) -> None:
    ghost = f"ghost-{tag()}"
    refused(relay_cli(server, "keys", "create", ghost), ghost)
    refused(relay_cli(server, "keys", "list", ghost), ghost)
    refused(relay_cli(server, "keys", "revoke", "key_doesnotexist"), "key")
    name = new_user(server, "keyless")
    misused(relay_cli(server, "keys", "create", name, "--expires-days", "0"), "--expires-days")
    assert rows_of(cli_output(server, "keys", "list", name)) == {}
