"""`GET /healthz` (liveness and database readiness) and `GET /metrics` (Prometheus)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from .. import metrics
from ..db import db
from ..errors import error_response

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 when the database answers, 503 otherwise."""
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(503, "database_unavailable", f"The database is unavailable: {exc}")
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus metrics summed over every worker."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
