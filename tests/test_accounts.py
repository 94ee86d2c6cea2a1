"""Accounts in process: set-up, sign-in, keys and users through the views, and the domain rules
behind them (the live tests in tests/live/ check the same through real servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from relay import apikeys, generation, tickets, users
from relay.errors import Conflict, ErrorCode
from relay.signin import SignInLimiter
from relay.validation import parse_new_ticket

PASSWORD = "correct horse"


@pytest.fixture()
def accounts(app: Flask) -> Iterator[Flask]:
    app.config["AUTH"] = "accounts"
    yield app


def sign_in(app: Flask, name: str, password: str = PASSWORD) -> FlaskClient:
    client = app.test_client()
    response = client.post("/auth/login", json={"username": name, "password": password})
    assert response.status_code == 200, response.get_json()
    return client


def make_user(app: Flask, name: str, admin: bool = False) -> users.UserInfo:
    with app.app_context():
        return users.create_user(name, PASSWORD, admin)


def test_open_mode_has_no_user_and_needs_none(client: FlaskClient) -> None:
    assert client.get("/auth/me").get_json() == {"user": None, "auth": "open"}
    assert client.post("/new", json={"prompt": "hi"}).status_code == 201


def test_the_first_admin_is_set_up_once(accounts: Flask) -> None:
    client = accounts.test_client()
    assert client.get("/auth/me").get_json()["setup_required"] is True
    made = client.post("/auth/setup", json={"username": "root", "password": PASSWORD})
    assert made.status_code == 201 and made.get_json() == {"user": {"name": "root", "admin": True}}
    assert client.get("/auth/me").get_json()["user"]["name"] == "root"
    again = accounts.test_client().post(
        "/auth/setup", json={"username": "r2", "password": PASSWORD}
    )
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_set_up"
    assert accounts.test_client().get("/auth/me").get_json()["setup_required"] is False


@pytest.mark.parametrize("admin", [True, False])
def test_no_set_up_once_the_cli_made_any_user(accounts: Flask, admin: bool) -> None:
    make_user(accounts, "someone", admin=admin)
    assert accounts.test_client().get("/auth/me").get_json()["setup_required"] is False
    with accounts.app_context(), pytest.raises(Conflict):
        users.set_up_first_admin("intruder", PASSWORD)


@pytest.mark.parametrize(("body", "code"), [
    ({"username": "", "password": PASSWORD}, "invalid_username"),
    ({"username": "a b", "password": PASSWORD}, "invalid_username"),
    ({"username": "x" * 65, "password": PASSWORD}, "invalid_username"),
    ({"username": ["root"], "password": PASSWORD}, "invalid_username"),
    ({"username": "root", "password": "short"}, "invalid_password"),
    ({"username": "root"}, "invalid_password"),
    ({"username": "root", "password": 12345678}, "invalid_password"),
])
def test_set_up_refuses_bad_names_and_passwords(
    accounts: Flask, body: dict[str, object], code: str
) -> None:
    response = accounts.test_client().post("/auth/setup", json=body)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == code


@pytest.mark.parametrize("body", [
    {"username": "alice", "password": "wrong password"},
    {"username": "nobody", "password": PASSWORD},
    {"username": ["alice"], "password": PASSWORD},
    {"username": "alice", "password": None},
    {},
])
def test_every_failed_sign_in_gets_the_same_answer(accounts: Flask, body: dict) -> None:
    make_user(accounts, "alice")
    response = accounts.test_client().post("/auth/login", json=body)
    assert response.status_code == 401
    assert response.get_json() == {"error": {"code": "invalid_credentials",
                                             "message": "Wrong username or password."}}


def test_a_form_sign_in_works(accounts: Flask) -> None:
    make_user(accounts, "alice")
    response = accounts.test_client().post(
        "/auth/login", data={"username": "alice", "password": PASSWORD}
    )
    assert response.status_code == 200


def test_a_disabled_user_cannot_sign_in_and_their_session_ends(accounts: Flask) -> None:
    make_user(accounts, "root", admin=True)
    make_user(accounts, "alice")
    alice = sign_in(accounts, "alice")
    admin = sign_in(accounts, "root")
    assert admin.patch("/admin/users/alice", json={"disabled": True}).status_code == 200
    with accounts.app_context():
        accounts.extensions["relay"].credentials.clear()  # the next second, without waiting
    assert alice.get("/auth/me").status_code == 401
    assert accounts.test_client().post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}
    ).status_code == 401
    assert admin.patch("/admin/users/alice", json={"disabled": False}).status_code == 200
    sign_in(accounts, "alice")


def test_only_admins_manage_users(accounts: Flask) -> None:
    make_user(accounts, "alice")
    alice = sign_in(accounts, "alice")
    for response in (alice.get("/admin/users"),
                     alice.post("/admin/users", json={"username": "b", "password": PASSWORD}),
                     alice.patch("/admin/users/alice", json={"disabled": True})):
        assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert accounts.test_client().get("/admin/users").status_code == 401


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400), ({"disabled": "yes"}, 400), ({"role": "admin"}, 400),
    ({"password": "short"}, 400), ({"disabled": True}, 400),  # an admin disabling themselves
])
def test_bad_user_changes_are_refused(accounts: Flask, body: dict, status: int) -> None:
    make_user(accounts, "root", admin=True)
    response = sign_in(accounts, "root").patch("/admin/users/root", json=body)
    assert response.status_code == status, response.get_json()


def test_an_admin_creates_users_and_names_are_unique(accounts: Flask) -> None:
    make_user(accounts, "root", admin=True)
    admin = sign_in(accounts, "root")
    made = admin.post("/admin/users", json={"username": "bob", "password": PASSWORD})
    assert made.status_code == 201
    again = admin.post("/admin/users", json={"username": "bob", "password": PASSWORD})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "user_exists"
    assert [u["name"] for u in admin.get("/admin/users").get_json()["users"]] == ["root", "bob"]
    assert admin.patch("/admin/users/nobody", json={"disabled": True}).status_code == 404


def test_keys_are_shown_once_and_only_to_their_owner(accounts: Flask) -> None:
    make_user(accounts, "alice")
    make_user(accounts, "bob")
    alice, bob = sign_in(accounts, "alice"), sign_in(accounts, "bob")
    made = alice.post("/auth/keys", json={"name": "laptop", "expires_days": 30})
    assert made.status_code == 201
    key = made.get_json()["key"]
    listed = alice.get("/auth/keys")
    assert key not in listed.get_data(as_text=True)
    assert [k["prefix"] for k in listed.get_json()["keys"]] == [key[:10]]
    assert bob.get("/auth/keys").get_json() == {"keys": []}
    key_id = made.get_json()["id"]
    assert bob.delete(f"/auth/keys/{key_id}").status_code == 404
    with_key = accounts.test_client()
    with_key.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    assert with_key.get("/auth/keys").status_code == 401  # a key cannot make more keys
    assert with_key.post("/new", json={"prompt": "hi"}).status_code == 201
    assert alice.delete(f"/auth/keys/{key_id}").status_code == 204
    with accounts.app_context():
        accounts.extensions["relay"].credentials.clear()
    refused = with_key.post("/new", json={"prompt": "hi"})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("body", [
    {"name": "x" * 101}, {"name": 5}, {"expires_days": 0}, {"expires_days": "7"},
    {"expires_days": True}, {"models": []}, {"models": "mock-echo"}, {"models": [""]},
])
def test_bad_key_requests_are_refused(accounts: Flask, body: dict) -> None:
    make_user(accounts, "alice")
    response = sign_in(accounts, "alice").post("/auth/keys", json=body)
    assert response.status_code == 400, response.get_json()


def test_an_expired_key_is_refused(accounts: Flask) -> None:
    user = make_user(accounts, "alice")
    with accounts.app_context():
        _, key = apikeys.create_key(user, accounts.secret_key or "", expires_days=1)
        from relay.db import db
        from relay.models import ApiKey

        db.session.execute(db.update(ApiKey).values(expires_at=1.0))
        db.session.commit()
    client = accounts.test_client()
    response = client.post(
        "/new", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_api_key"


def test_a_password_change_ends_the_other_sessions(accounts: Flask) -> None:
    make_user(accounts, "alice")
    here, elsewhere = sign_in(accounts, "alice"), sign_in(accounts, "alice")
    wrong = here.post("/auth/password", json={"current_password": "nope nope",
                                              "new_password": "a new password"})
    assert wrong.status_code == 401
    changed = here.post("/auth/password", json={"current_password": PASSWORD,
                                                "new_password": "a new password"})
    assert changed.status_code == 204
    with accounts.app_context():
        accounts.extensions["relay"].credentials.clear()
    assert elsewhere.get("/auth/me").status_code == 401
    assert here.get("/auth/me").status_code == 200  # given a new session
    sign_in(accounts, "alice", "a new password")


@pytest.mark.parametrize("reason", [ErrorCode.KEY_REVOKED, ErrorCode.SESSION_ENDED,
                                    ErrorCode.USER_DISABLED])
def test_a_ticket_cancelled_for_a_revocation_says_why(
    accounts: Flask, client: FlaskClient, reason: ErrorCode
) -> None:
    user = make_user(accounts, "alice")
    with accounts.test_request_context():
        spec = parse_new_ticket({"prompt": "hi"}, lambda: "mock-echo", 10)
        ticket = tickets.create_ticket(user.owner, spec)
        generation.cancel(ticket.id, "test", reason=reason)
        row = tickets.load_ticket(ticket.id, user.owner)
    assert (row.status, row.error_code) == ("cancelled", reason)


def test_a_cancel_by_its_owner_has_no_error() -> None:
    assert tickets.cancelled_outcome(None).error is None
    assert tickets.cancelled_outcome("something else").error is None
    outcome = tickets.cancelled_outcome(ErrorCode.KEY_REVOKED)
    assert outcome.error is not None and outcome.error["code"] == "key_revoked"


def test_set_up_is_for_accounts_mode_only(client: FlaskClient) -> None:
    response = client.post("/auth/setup", json={"username": "root", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/auth/me").get_json() == {"user": None, "auth": "open"}


def test_signing_out_keeps_an_anonymous_visitors_identity(client: FlaskClient) -> None:
    made = client.post("/new", json={"prompt": "mine"}).get_json()
    assert client.post("/auth/logout").status_code == 204
    assert client.get(f"/tickets/{made['id']}").status_code == 200


def test_signing_out_with_nobody_signed_in_is_fine(accounts: Flask) -> None:
    assert accounts.test_client().post("/auth/logout").status_code == 204


def test_wrong_current_passwords_are_limited_like_sign_ins(accounts: Flask) -> None:
    accounts.extensions["relay"].signin = SignInLimiter(None, 2)
    make_user(accounts, "alice")
    alice = sign_in(accounts, "alice")
    body = {"current_password": "wrong wrong", "new_password": "a new password"}
    assert [alice.post("/auth/password", json=body).status_code for _ in range(3)] == [
        401, 401, 429
    ]


def test_an_open_relay_ignores_a_bearer_that_is_no_relay_key(client: FlaskClient) -> None:
    # The OpenAI SDKs always send their api_key; an open relay needs none.
    for header in ("Bearer unused", "Bearer sk-something", "Basic dXNlcjpwYXNz"):
        response = client.post("/new", json={"prompt": "hi"}, headers={"Authorization": header})
        assert response.status_code == 201, (header, response.get_json())
    refused = client.post("/new", json={"prompt": "hi"},
                          headers={"Authorization": "Bearer rk_" + "x" * 43})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"


def test_an_accounts_relay_refuses_any_bad_authorization(accounts: Flask) -> None:
    for header in ("Bearer unused", "Basic dXNlcjpwYXNz", "Bearer rk_" + "x" * 43):
        response = accounts.test_client().post(
            "/new", json={"prompt": "hi"}, headers={"Authorization": header}
        )
        assert response.status_code == 401, header
        assert response.get_json()["error"]["code"] == "invalid_api_key"
