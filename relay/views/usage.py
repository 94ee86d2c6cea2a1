"""`GET /usage`: the caller's usage (a user's own with all their keys; a key's own) and limits."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, jsonify, request

from .. import quotas, usage
from ..errors import InvalidRequest
from ..identity import AuthKind, current_owner, current_principal

bp = Blueprint("usage", __name__)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@bp.get("/usage")
def show_usage() -> Response:
    """Totals, rows per day and model, and the limits that apply with what is used."""
    owner = current_owner()
    principal = current_principal()
    since = request.args.get("since")
    if since is not None and not _DAY.match(since):
        raise InvalidRequest("`since` is a day, YYYY-MM-DD.")
    key_id = None
    if principal.key is not None and principal.kind in (AuthKind.KEY, AuthKind.STREAM_TOKEN):
        key_id = principal.key.id
    rows = usage.report(owner, key_id, since)
    by_day = [{name: value for name, value in row.items() if name != "owner"} for row in rows]
    return jsonify({
        "totals": usage.summed(rows), "by_day": by_day,
        "limits": quotas.limits_report(current_app.config, owner, key_id),
    })
