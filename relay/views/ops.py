"""`GET /healthz` (liveness and database readiness), `GET /metrics` (Prometheus) and
`GET /openapi.json` (the HTTP API's OpenAPI document, shipped in the package)."""

from __future__ import annotations

import logging
from functools import cache
from importlib.resources import files

from flask import Blueprint, Response, jsonify

from .. import metrics
from ..db import SchemaBehind, check_schema, db
from ..errors import ErrorCode, error_response
from ..state import relay_state

bp = Blueprint("ops", __name__)
log = logging.getLogger("relay.ops")


@bp.get("/healthz")
def healthz() -> Response:
    """200 when the database answers and is at the code's migrations, 503 otherwise."""
    try:
        check_schema(db.engine, relay_state().migration_heads)
    except SchemaBehind as exc:
        return error_response(503, ErrorCode.DATABASE_NOT_MIGRATED, str(exc))
    except Exception as exc:
        log.warning("health check: the database is unavailable (%s)", type(exc).__name__)
        return error_response(
            503, ErrorCode.DATABASE_UNAVAILABLE, "The database is unavailable."
        )
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus metrics summed over every worker."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of relay's HTTP API (tests/test_openapi.py keeps it true)."""
    return Response(_openapi_bytes(), content_type="application/json")


@cache
def _openapi_bytes() -> bytes:
    return files("relay").joinpath("openapi.json").read_bytes()
