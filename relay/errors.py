"""`RelayError` and its subclasses, and the one handler that renders every error as JSON.

Every error body is `{"error": {"code": ..., "message": ...}}`; werkzeug's HTTP errors and
unexpected exceptions are mapped to the same shape. Must not format SSE.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("relay")


class RelayError(Exception):
    """An error with its HTTP status and machine-readable contract code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(RelayError):
    status = 400
    code = "invalid_request"


class InvalidJSON(RelayError):
    status = 400
    code = "invalid_json"


class UnsupportedMediaType(RelayError):
    status = 415
    code = "unsupported_media_type"


class NotFound(RelayError):
    status = 404
    code = "not_found"


class TicketNotFound(NotFound):
    code = "ticket_not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class InternalError(RelayError):
    status = 500
    code = "internal_error"


class Conflict(RelayError):
    status = 409
    code = "conflict"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "prompt_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(status: int, code: str, message: str, type: str | None = None) -> Response:
    """Build the contract's JSON error response; under `/v1/` with OpenAI's `type` as well
    (`type`, else by the status), which its SDKs expose."""
    error = {"code": code, "message": message}
    if has_request_context() and request.path.startswith("/v1/"):
        error["type"] = type or ("invalid_request_error" if status < 500 else "server_error")
    response = jsonify({"error": error})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Render RelayError, werkzeug HTTP errors and crashes in the contract's JSON shape."""

    @app.errorhandler(RelayError)
    def _relay_error(exc: RelayError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            limit = app.config["MAX_PROMPT_BYTES"]
            message = f"The request body is larger than the limit of {limit} bytes."
        else:
            message = exc.description or exc.name
        response = error_response(status, _HTTP_CODES.get(status, "http_error"), message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal_error", "The relay hit an internal error.")
