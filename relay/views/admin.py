"""`/admin/users`: an admin lists, creates, disables and re-enables users, and sets passwords."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from .. import quotas, users
from ..errors import InvalidRequest
from ..validation import read_json_object
from .auth import signed_in_admin

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/users")
def list_users() -> Response:
    """Every user."""
    signed_in_admin()
    return jsonify({"users": users.list_users()})


@bp.post("/users")
def create_user() -> tuple[Response, int]:
    """A new user with a password."""
    signed_in_admin()
    body = read_json_object(request)
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise InvalidRequest("`admin` is true or false.")
    password = users.check_password(body.get("password"))
    user = users.create_user(users.check_username(body.get("username")), password, admin)
    return jsonify({"user": user.json()}), 201


@bp.patch("/users/<name>")
def change_user(name: str) -> Response:
    """Disable or enable a user (`disabled`), give them a new password (`password`), or change
    their limits (`limits`: each of `quotas.LIMIT_NAMES` a number, 0 or null to clear)."""
    admin = signed_in_admin()
    body = read_json_object(request)
    unknown = set(body) - {"disabled", "password", "limits"}
    if unknown or not body:
        raise InvalidRequest("Send `disabled` (true or false), `password` and/or `limits`.")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise InvalidRequest("`disabled` is true or false.")
    if disabled and name == admin.name:
        raise InvalidRequest("An admin cannot disable themselves.")
    user = users.find_user(name)
    if "limits" in body:
        quotas.set_limits("user", user.id, body["limits"])
    if "password" in body:
        users.set_password(name, users.check_password(body["password"]))
    if disabled is True:
        users.disable_user(name)
    elif disabled is False:
        users.enable_user(name)
    return jsonify({"user": next(u for u in users.list_users() if u["name"] == name)})
