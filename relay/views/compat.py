"""The OpenAI-compatible surface: `GET /v1/models`."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ..upstream import UpstreamError

bp = Blueprint("compat", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models() -> tuple[Response, int]:
    """The upstream's models in OpenAI's list shape, the default model first."""
    state = current_app.extensions["relay"]
    try:
        models = state.upstream.models()
    except UpstreamError as exc:
        body = {"error": {"code": exc.code, "message": exc.message, "type": "upstream_error"}}
        return jsonify(body), 502
    default = state.default_model()
    ordered = [default] + [m for m in models if m != default]
    data = [{"id": m, "object": "model", "owned_by": "relay"} for m in ordered]
    return jsonify({"object": "list", "data": data}), 200
