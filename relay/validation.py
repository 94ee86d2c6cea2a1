"""Turn a request body into a validated NewTicket (from `POST /new` or an OpenAI-style chat
completion request) or a JSON object, or a clear 400/413/415.

Over 300 lines: the two request shapes share every field rule and limit (sizes, NUL, numbers,
message caps), and one place to read them is what keeps their errors the same."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_content_length

from .errors import ErrorCode, InvalidJSON, InvalidRequest, UnsupportedMediaType

ROLES = ("system", "user", "assistant")
_FIELDS = {
    "prompt", "messages", "conversation_id", "model", "temperature", "max_tokens", "system",
    "regenerate",
}
# What relay forwards of an OpenAI chat completion request; anything else is refused by name
# rather than dropped without a word.
_CHAT_FIELDS = {
    "model", "messages", "stream", "stream_options", "temperature", "max_tokens",
    "max_completion_tokens",
}
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Upstreams take a 32-bit integer (and relay's stored JSON no more than 64 bits).
_MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class NewTicket:
    """A validated `POST /new` body."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    conversation_id: str | None
    model: str
    system: str | None
    temperature: float | None
    max_tokens: int | None
    regenerate: bool


def read_body(request: Request) -> dict[str, Any]:
    """The request body as a dict, from JSON or a form.

    The size limit is Flask's MAX_CONTENT_LENGTH (RELAY_MAX_PROMPT_BYTES): reading a larger body
    raises werkzeug's 413, which the error handler renders as `prompt_too_large`.
    """
    mimetype = _mimetype(request)
    if _is_json(mimetype):
        return _json_object(request)
    if mimetype in _FORM_TYPES:
        return _form_body(request)
    raise UnsupportedMediaType(
        f"Content-Type {mimetype or 'none'} is not supported; send application/json "
        "(or a form with a `prompt` field)."
    )


def read_json_object(request: Request) -> dict[str, Any]:
    """A JSON object body (415 for another Content-Type), under the same limit as `read_body`."""
    mimetype = _mimetype(request)
    if not _is_json(mimetype):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype or 'none'} is not supported; send application/json."
        )
    return _json_object(request)


def _mimetype(request: Request) -> str:
    content_type = request.environ.get("CONTENT_TYPE")
    return "application/json" if content_type == "application/json" else request.mimetype


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _json_object(request: Request) -> dict[str, Any]:
    raw = _body_bytes(request)
    try:
        # orjson, not json: it also refuses what is not valid UTF-8 once decoded (a lone
        # surrogate like "\ud800"), which no database can store, and NaN/Infinity.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.")
    if b"\\u0000" in raw:  # JSON text can carry NUL only escaped
        _refuse_nul(body)
    return body


def _refuse_nul(body: dict[str, Any]) -> None:
    """400 for a NUL character in any text of the body: PostgreSQL's text columns cannot store
    it (and a prompt has no use for it)."""
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and "\x00" in value:
            raise InvalidRequest("Text may not contain the NUL character (U+0000).")


def _body_bytes(request: Request) -> bytes:
    """The body, read straight from the WSGI input: werkzeug's guarded stream around it stopped
    a chunked body at the limit without a word, so an over-limit prompt failed as invalid JSON
    (or, as a form, was stored cut)."""
    environ = request.environ
    limit = request.max_content_length
    length = get_content_length(environ)
    if length is not None:
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return bytes(environ["wsgi.input"].read(length))
    if "wsgi.input_terminated" not in environ:
        return request.get_data(cache=False)  # no length, no end: werkzeug reads nothing
    stream = environ["wsgi.input"]
    body = bytes(stream.read() if limit is None else stream.read(limit + 1))
    if limit is not None and len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _form_body(request: Request) -> dict[str, Any]:
    # Parsed from the body as _body_bytes reads it (413 over the limit): werkzeug's form parser
    # would read a chunked body through the stream that stops at the limit without a word.
    raw = _body_bytes(request)
    environ = request.environ
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
    body: dict[str, Any] = dict(request.form.items())
    _refuse_nul(body)
    for name, cast in (("temperature", float), ("max_tokens", int)):
        if name in body:
            try:
                body[name] = cast(body[name])
            except ValueError as exc:
                raise InvalidRequest(f"`{name}` must be a number.") from exc
    if "regenerate" in body:
        body["regenerate"] = body["regenerate"].lower() in {"1", "true", "on", "yes"}
    return body


def parse_new_ticket(
    body: dict[str, Any], default_model: Callable[[], str], max_messages: int
) -> NewTicket:
    """Validate the fields of a `POST /new` body (`messages` holding at most `max_messages`;
    `default_model()` called only if it names no model)."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field `{unknown[0]}`.", code=ErrorCode.UNKNOWN_FIELD)
    prompt = body.get("prompt")
    messages = body.get("messages")
    regenerate = body.get("regenerate", False)
    if not isinstance(regenerate, bool):
        raise InvalidRequest("`regenerate` must be true or false.")
    if prompt is not None and messages is not None:
        raise InvalidRequest("Give either `prompt` or `messages`, not both.")
    if regenerate:
        if prompt is not None or messages is not None:
            raise InvalidRequest("`regenerate` takes no `prompt` or `messages`.")
    elif messages is not None:
        messages = _messages(messages, max_messages)
    elif prompt is None:
        raise InvalidRequest("The `prompt` field is required.", code=ErrorCode.MISSING_PROMPT)
    elif not isinstance(prompt, str):
        raise InvalidRequest("`prompt` must be a string.", code=ErrorCode.INVALID_PROMPT)
    elif not prompt.strip():
        raise InvalidRequest("`prompt` must not be empty.", code=ErrorCode.EMPTY_PROMPT)
    return NewTicket(
        prompt=prompt,
        messages=messages,
        conversation_id=_optional_str(body, "conversation_id", 64),
        model=_optional_str(body, "model", 200) or default_model(),
        system=_optional_str(body, "system", None),
        temperature=_temperature(body.get("temperature")),
        max_tokens=_max_tokens(body.get("max_tokens")),
        regenerate=regenerate,
    )


@dataclass(frozen=True)
class ChatCompletionRequest:
    """A validated `POST /v1/chat/completions` body: the ticket to store, and how to answer."""

    ticket: NewTicket
    stream: bool
    include_usage: bool


def parse_chat_completion(
    body: dict[str, Any], default_model: Callable[[], str], max_messages: int
) -> ChatCompletionRequest:
    """Validate an OpenAI chat completion request (text messages, no tools, at most
    `max_messages`)."""
    unknown = sorted(set(body) - _CHAT_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field `{unknown[0]}`: relay forwards only "
            f"{', '.join(f'`{name}`' for name in sorted(_CHAT_FIELDS))}.",
            code=ErrorCode.UNKNOWN_FIELD,
        )
    if "messages" not in body:
        raise InvalidRequest("The `messages` field is required.", code=ErrorCode.INVALID_MESSAGES)
    messages = body["messages"]
    if isinstance(messages, list):
        messages = [_text_message(index, item) for index, item in enumerate(messages)]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be true or false.")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest("`stream_options` is only allowed with `stream: true`.")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise InvalidRequest("`stream_options` may only hold `include_usage`.")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise InvalidRequest("`stream_options.include_usage` must be true or false.")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise InvalidRequest("Give either `max_tokens` or `max_completion_tokens`, not both.")
    tokens_field = "max_tokens" if body.get("max_completion_tokens") is None else (
        "max_completion_tokens")
    ticket = NewTicket(
        prompt=None,
        messages=_messages(messages, max_messages),
        conversation_id=None,
        model=_optional_str(body, "model", 200) or default_model(),
        system=None,
        temperature=_temperature(body.get("temperature")),
        max_tokens=_max_tokens(body.get(tokens_field), tokens_field),
        regenerate=False,
    )
    return ChatCompletionRequest(ticket, stream, include_usage)


def _text_message(index: int, item: Any) -> Any:
    """An OpenAI message whose content is a list of text parts, with the parts joined; any other
    value as it is, for `_messages` to check."""
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    texts = []
    for part in item["content"]:
        if not (isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str) and set(part) == {"type", "text"}):
            raise InvalidRequest(
                f"messages[{index}].content may only hold text parts "
                '(`{"type": "text", "text": "..."}`).',
                code=ErrorCode.INVALID_MESSAGES,
            )
        texts.append(part["text"])
    return {**item, "content": "".join(texts)}


def _messages(value: Any, max_count: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "`messages` must be a non-empty list.", code=ErrorCode.INVALID_MESSAGES
        )
    if len(value) > max_count:
        raise InvalidRequest(
            f"`messages` holds {len(value)} messages; at most {max_count} are accepted.",
            code=ErrorCode.INVALID_MESSAGES,
        )
    checked = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"role", "content"}:
            raise InvalidRequest(
                f"messages[{index}] must be an object with `role` and `content` only.",
                code=ErrorCode.INVALID_MESSAGES,
            )
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(ROLES)}.",
                code=ErrorCode.INVALID_MESSAGES,
            )
        if not isinstance(content, str):
            raise InvalidRequest(
                f"messages[{index}].content must be a string.", code=ErrorCode.INVALID_MESSAGES
            )
        checked.append({"role": role, "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in checked):
        raise InvalidRequest(
            "`messages` needs at least one non-empty user message.", code=ErrorCode.INVALID_MESSAGES
        )
    return checked


def _optional_str(body: dict[str, Any], name: str, max_length: int | None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"`{name}` must be a non-empty string.")
    if max_length is not None and len(value) > max_length:
        raise InvalidRequest(f"`{name}` must be at most {max_length} characters.")
    return value


def _temperature(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest("`temperature` must be a number.")
    if not 0 <= value <= 2:
        raise InvalidRequest("`temperature` must be between 0 and 2.")
    return float(value)


def _max_tokens(value: Any, name: str = "max_tokens") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_TOKENS:
        raise InvalidRequest(f"`{name}` must be an integer from 1 to {_MAX_TOKENS}.")
    return value
