"""`/auth/*`: sign in and out, who am I, the first admin's set-up, one's password and API keys."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request, session

from .. import apikeys, sessions, users
from ..cookies import SESSION_PREFIX
from ..errors import ErrorCode, Forbidden, InvalidRequest, Unauthenticated
from ..identity import AuthKind, AuthMode, Principal, current_principal
from ..signin import client_address
from ..state import relay_state
from ..validation import read_body, read_json_object

bp = Blueprint("auth", __name__, url_prefix="/auth")


@bp.post("/login")
def login() -> Response:
    """Sign in with a username and password (JSON or a form); a new session cookie."""
    _refuse_behind_proxy()
    body = read_body(request)
    user = _authenticated(body.get("username"), body.get("password"),
                          "Wrong username or password.")
    _sign_in(user)
    return jsonify({"user": user.json()})


@bp.post("/logout")
def logout() -> tuple[str, int]:
    """Sign out: every session of the user ends, on every worker and host. An open relay's
    anonymous visitor keeps their identity (it is all that holds their conversations)."""
    principal = current_principal()
    if principal.kind == AuthKind.SESSION and principal.user is not None:
        sessions.end_sessions(principal.user, ErrorCode.SESSION_ENDED)
        session.clear()
    return "", 204


@bp.get("/me")
def me() -> tuple[Response, int]:
    """The signed-in user, or 401 (with whether the first admin must be set up)."""
    mode = current_app.config["AUTH"]
    principal = current_principal()
    if principal.user is not None:
        return jsonify({"user": principal.user.json(), "auth": mode}), 200
    if mode == AuthMode.OPEN:
        return jsonify({"user": None, "auth": mode}), 200
    body = {
        "error": {"code": ErrorCode.UNAUTHENTICATED, "message": "Sign in or send an API key."},
        "auth": mode, "setup_required": mode == AuthMode.ACCOUNTS and users.setup_required(),
    }
    return jsonify(body), 401


@bp.post("/setup")
def set_up() -> tuple[Response, int]:
    """Create the first admin of an accounts relay that has no user yet, and sign them in."""
    if current_app.config["AUTH"] != AuthMode.ACCOUNTS:  # an open relay's visitors are anyone
        raise InvalidRequest("Set-up is for RELAY_AUTH=accounts; use `relay users create`.")
    body = read_body(request)
    user = users.set_up_first_admin(
        users.check_username(body.get("username")), users.check_password(body.get("password"))
    )
    _sign_in(user)
    return jsonify({"user": user.json()}), 201


@bp.post("/password")
def change_password() -> tuple[str, int]:
    """Change one's own password: every session ends, this browser gets a new one."""
    _refuse_behind_proxy()
    user = _signed_in().user
    assert user is not None
    body = read_body(request)
    _authenticated(user.name, body.get("current_password"), "The current password is wrong.")
    users.set_password(user.name, users.check_password(body.get("new_password")))
    _sign_in(user)
    return "", 204


@bp.get("/keys")
def list_keys() -> Response:
    """The caller's API keys (never the keys themselves)."""
    return jsonify({"keys": apikeys.list_keys(_signed_in().user)})


@bp.post("/keys")
def create_key() -> tuple[Response, int]:
    """A new API key of the caller, shown in this answer only."""
    user = _signed_in().user
    assert user is not None
    body = read_json_object(request)
    listing, secret = apikeys.create_key(
        user, current_app.secret_key or "", body.get("name") or "", body.get("expires_days"),
        body.get("models"),
    )
    return jsonify({**listing, "key": secret}), 201


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> tuple[str, int]:
    """Revoke one of the caller's keys; its streams end."""
    apikeys.revoke_key(key_id, _signed_in().user)
    return "", 204


def _authenticated(name: object, password: object, refusal: str) -> users.UserInfo:
    """The user `name` if `password` is theirs; failures count against the name and the client's
    address (`signin`), and too many of them are refused before any check."""
    address = client_address(request.environ, current_app.config["TRUSTED_PROXIES"])
    counted_as = name if isinstance(name, str) else ""
    limiter = relay_state().signin
    limiter.check(counted_as, address)
    user = users.authenticate(name, password)
    if user is None:
        limiter.failed(counted_as, address)
        raise Unauthenticated(refusal, code=ErrorCode.INVALID_CREDENTIALS)
    return user


def _refuse_behind_proxy() -> None:
    """In proxy mode the proxy signs people in: relay's own sign-in would set an unused cookie."""
    if current_app.config["AUTH"] == AuthMode.PROXY:
        raise InvalidRequest("This relay signs users in through its proxy.")


def _sign_in(user: users.UserInfo) -> None:
    token = sessions.start_session(user, current_app.config["SESSION_DAYS"])
    session["uid"] = SESSION_PREFIX + token  # a new session id at every sign-in
    g.principal = Principal(user.owner, AuthKind.SESSION, user)


def _signed_in() -> Principal:
    """The caller, signed in through the page or the proxy (an API key cannot manage keys)."""
    principal = current_principal()
    if principal.user is None or principal.kind not in (AuthKind.SESSION, AuthKind.PROXY):
        raise Unauthenticated("Sign in to manage your account.")
    return principal


def signed_in_admin() -> users.UserInfo:
    """The caller if a signed-in admin, else 401/403."""
    user = _signed_in().user
    if user is None or not user.admin:
        raise Forbidden("Only an admin may manage users.")
    return user
