"""`RelayError` and its subclasses, and the one handler that renders every error as JSON.

Every error body is `{"error": {"code": ..., "message": ...}}`; werkzeug's HTTP errors and
unexpected exceptions are mapped to the same shape. Must not format SSE.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("relay")


class ErrorCode(StrEnum):
    """Every machine-readable `error.code` relay sends, in responses and in `done` events."""

    BAD_REQUEST = "bad_request"
    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_PROMPT = "missing_prompt"
    INVALID_PROMPT = "invalid_prompt"
    EMPTY_PROMPT = "empty_prompt"
    INVALID_MESSAGES = "invalid_messages"
    INVALID_LAST_EVENT_ID = "invalid_last_event_id"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PROMPT_TOO_LARGE = "prompt_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TICKET_NOT_FOUND = "ticket_not_found"
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    CONVERSATION_BUSY = "conversation_busy"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    TOO_MANY_GENERATIONS = "too_many_generations"
    QUEUE_FULL = "queue_full"
    TOO_MANY_STREAMS = "too_many_streams"
    # Who is calling (CONTRACT.md).
    UNAUTHENTICATED = "unauthenticated"
    INVALID_CREDENTIALS = "invalid_credentials"
    INVALID_API_KEY = "invalid_api_key"
    INVALID_TOKEN = "invalid_token"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    CROSS_SITE_REQUEST = "cross_site_request"
    ALREADY_SET_UP = "already_set_up"
    USER_EXISTS = "user_exists"
    USER_NOT_FOUND = "user_not_found"
    KEY_NOT_FOUND = "key_not_found"
    INVALID_PASSWORD = "invalid_password"
    INVALID_USERNAME = "invalid_username"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    DATABASE_UNAVAILABLE = "database_unavailable"
    DATABASE_NOT_MIGRATED = "database_not_migrated"
    STORAGE_FULL = "storage_full"  # the store's disk is full: nothing new can be stored
    # How a generation can fail (`done`'s error).
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_DISCONNECTED = "upstream_disconnected"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    WORKER_LOST = "worker_lost"
    SERVER_SHUTDOWN = "server_shutdown"
    # Why a ticket was cancelled when not by its owner (`done`'s error, status cancelled).
    SESSION_ENDED = "session_ended"
    USER_DISABLED = "user_disabled"
    KEY_REVOKED = "key_revoked"


class RelayError(Exception):
    """An error with its HTTP status and machine-readable contract code."""

    status = 400
    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(RelayError):
    status = 400
    code = ErrorCode.INVALID_REQUEST


class InvalidJSON(RelayError):
    status = 400
    code = ErrorCode.INVALID_JSON


class UnsupportedMediaType(RelayError):
    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class NotFound(RelayError):
    status = 404
    code = ErrorCode.NOT_FOUND


class TicketNotFound(NotFound):
    code = ErrorCode.TICKET_NOT_FOUND


class ConversationNotFound(NotFound):
    code = ErrorCode.CONVERSATION_NOT_FOUND


class InternalError(RelayError):
    status = 500
    code = ErrorCode.INTERNAL_ERROR


class Conflict(RelayError):
    status = 409
    code = ErrorCode.CONFLICT


class Unauthenticated(RelayError):
    """No credentials (or none that hold) where the auth mode requires them."""

    status = 401
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(RelayError):
    status = 403
    code = ErrorCode.FORBIDDEN


class TooManyRequests(RelayError):
    """A limit was reached; `retry_after` seconds until it may succeed (None: waiting will not
    help, and no Retry-After is sent)."""

    status = 429
    code = ErrorCode.RATE_LIMITED

    def __init__(
        self, message: str, *, retry_after: int | None, code: ErrorCode | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = None if retry_after is None else max(1, int(retry_after))


class UpstreamUnavailable(RelayError):
    """The upstream must answer before the request can be taken (its code says how it failed)."""

    status = 503
    code = ErrorCode.UPSTREAM_UNREACHABLE


_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PROMPT_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
}


_STORE_MESSAGES = {
    ErrorCode.STORAGE_FULL: "The relay's storage is full; try again later.",
    ErrorCode.DATABASE_UNAVAILABLE: "The database is unavailable; try again later.",
}


def error_response(status: int, code: ErrorCode, message: str, type: str | None = None) -> Response:
    """Build the contract's JSON error response; under `/v1/` with OpenAI's `type` as well
    (`type`, else by the status), which its SDKs expose."""
    error = {"code": str(code), "message": message}
    if has_request_context() and request.path.startswith("/v1/"):
        error["type"] = type or ("invalid_request_error" if status < 500 else "server_error")
    response = jsonify({"error": error})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Render RelayError, werkzeug HTTP errors and crashes in the contract's JSON shape."""

    @app.errorhandler(RelayError)
    def _relay_error(exc: RelayError) -> Response:
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="relay"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            limit = app.config["MAX_PROMPT_BYTES"]
            message = f"The request body is larger than the limit of {limit} bytes."
        else:
            message = exc.description or exc.name
        response = error_response(status, _HTTP_CODES.get(status, ErrorCode.HTTP_ERROR), message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(TimeoutError)
    def _client_too_slow(exc: TimeoutError) -> Response:
        # The client's socket, reading the request body (relay.server.ClientTimeouts); gunicorn
        # closes the connection after this answer, as the body was left unfinished.
        log.info("a request body did not arrive in time: %s %s", request.method, request.path)
        return error_response(408, ErrorCode.REQUEST_TIMEOUT,
                              "The request body did not arrive in time.")

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        from .db import storage_failure  # db imports this module

        failure = storage_failure(exc)
        if failure is not None:  # the store's state, not a bug: one line, no traceback
            log.warning("request refused, the store failed: %s",
                        str(getattr(exc, "orig", exc)).splitlines()[0][:200])
            response = error_response(503, failure, _STORE_MESSAGES[failure])
            response.headers["Retry-After"] = "5"
            return response
        # The exception's type and frames, not its text (which may quote a prompt): logs.py.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, ErrorCode.INTERNAL_ERROR, "The relay hit an internal error.")
