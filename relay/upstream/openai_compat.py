"""Any OpenAI-compatible server: the `openai` SDK resolves the endpoint, relay streams it lean.

The SDK client holds the configuration (base URL, API key, organization and project, its
headers) and lists the models. The streaming call is that same request, built once per process
from the SDK client's URL and headers, sent on a pooled keep-alive connection (`connection.py`)
and parsed from raw bytes: through the SDK and its httpx2 layers it cost more CPU than all of
relay's other work, before the first token and per token (bench/README.md has the history).
Callers see only Delta, Finish and UpstreamError. Timeouts are ours and nothing is retried once
the upstream may have seen the request: a retried streaming call would pay for the tokens twice.
Just over 300 lines: the upstream's failures and the sentences users get for them stay next to
the stream that meets them.
"""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import orjson

from ..errors import ErrorCode as Code
from .base import ChatRequest, Chunks, Delta, Finish, UpstreamError
from .connection import Call, Endpoint, ProtocolError, Response, UnreachableError
from .eventstream import EventDecoder, EventTooLarge

log = logging.getLogger("relay.upstream")

_MAX_ERROR_BODY = 64 * 1024
# An event, the JSON of one chunk, is a few hundred bytes: far more without its blank line is an
# upstream that is not sending server-sent events, and would otherwise fill the memory.
_MAX_EVENT = 4 * 1024 * 1024


class OpenAIUpstream:
    """Streams chat completions from `base_url` with the given key and timeouts."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        read_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._options: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "timeout": openai.Timeout(read_timeout, connect=connect_timeout),
            "max_retries": 0,
        }
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        # The SDK's headers call platform.platform(), which forks `uname -p` once per process;
        # under gevent, concurrent first calls would each fork. Do it once, now.
        platform.platform()
        self._client: openai.OpenAI | None = None
        self._endpoint: Endpoint | None = None
        self._models: list[str] | None = None

    @property
    def client(self) -> openai.OpenAI:
        # Created on first use, i.e. after gunicorn forked and gevent patched the socket module.
        if self._client is None:
            self._client = openai.OpenAI(**self._options)
        return self._client

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = _endpoint(self.client, self._connect_timeout, self._read_timeout)
        return self._endpoint

    def models(self) -> list[str]:
        if self._models is None:
            try:
                self._models = [model.id for model in self.client.models.list()]
            except Exception as exc:
                raise _translate_sdk_error(exc) from exc
        return self._models

    def stream(self, request: ChatRequest) -> Chunks:
        """The request is sent at once on an idle pooled connection, if there is one, so the
        upstream works on it while the caller gets ready to read; closing the iterator closes
        the call, even before its first item."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        body = orjson.dumps(params)
        # An idle connection means the endpoint is built: building it could raise, here.
        call = self._endpoint.start(body) if self._endpoint is not None else None
        answer = self._answer(body, call)
        next(answer)  # into its `try`, so that closing it closes the call
        return answer  # type: ignore[return-value]

    def _answer(
        self, body: bytes, call: Call | None
    ) -> Generator[Delta | Finish | None, None, None]:
        response: Response | None = None
        try:
            yield None  # taken by `stream`
            endpoint = self.endpoint
            response = endpoint.answer(call) if call is not None else endpoint.post(body)
            call, body = None, b""  # the request is not kept for the length of the answer
            if response.status >= 400:
                raise _status_error(response.status, _error_body(response))
            parser = _EventParser()
            while received := response.read():
                yield from parser.feed(received)
                if parser.done:  # the answer is complete, whether or not the body ends soon
                    response.read_arrived()  # its end, if here, so the connection is reused
                    break
            yield from parser.end()
        except TimeoutError as exc:
            raise UpstreamError(
                Code.UPSTREAM_TIMEOUT,
                f"The upstream sent nothing for {self._read_timeout:g} seconds.",
            ) from exc
        except UnreachableError as exc:
            log.warning("upstream unreachable: %r", str(exc))
            raise UpstreamError(Code.UPSTREAM_UNREACHABLE, "Could not reach the upstream.") from exc
        except ProtocolError as exc:
            log.warning("upstream sent malformed HTTP: %r", str(exc))
            raise UpstreamError(
                Code.UPSTREAM_BAD_RESPONSE, "The upstream sent a malformed response."
            ) from exc
        except OSError as exc:
            when = "mid-answer" if response is not None else "before answering"
            log.warning("upstream connection broke %s: %r", when, exc)
            raise UpstreamError(
                Code.UPSTREAM_DISCONNECTED, f"The upstream connection broke {when}."
            ) from exc
        finally:
            if response is not None:
                self.endpoint.release(response)
            elif call is not None:
                self.endpoint.abandon(call)


def _endpoint(client: openai.OpenAI, connect_timeout: float, read_timeout: float) -> Endpoint:
    """The chat completions URL and headers the SDK client would use."""
    url = urlsplit(str(client.base_url.join("chat/completions")))
    headers = {**client.default_headers, **client.auth_headers}
    fixed = {k: v for k, v in headers.items() if isinstance(v, str)}
    fixed["Accept"] = "text/event-stream"
    https = url.scheme == "https"
    return Endpoint(
        url.hostname or "localhost", url.port or (443 if https else 80),
        url.path + (f"?{url.query}" if url.query else ""), fixed, https=https,
        connect_timeout=connect_timeout, read_timeout=read_timeout,
    )


def _error_body(response: Response) -> bytes:
    """The start of an error answer's body (the connection is not reused after a long one)."""
    received = b""
    while len(received) < _MAX_ERROR_BODY and (data := response.read()):
        received += data
    return received[:_MAX_ERROR_BODY]


class _EventParser:
    """An OpenAI stream's server-sent events in, its text deltas out, then Finish at the end."""

    __slots__ = ("_decoder", "done", "_finish_reason", "_usage")

    def __init__(self) -> None:
        self._decoder = EventDecoder(_MAX_EVENT)
        self.done = False  # [DONE] was received: the answer is complete
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, received: bytes) -> Iterator[Delta]:
        """The deltas of the events that `received` completes (a generator, so that the deltas
        before a malformed event still go out)."""
        try:
            events = self._decoder.feed(received)
        except EventTooLarge as exc:
            raise UpstreamError(Code.UPSTREAM_BAD_RESPONSE,
                                f"The upstream sent an event of more than {_MAX_EVENT} bytes.",
                                ) from exc
        for data in events:
            if text := self._parse(data):
                yield Delta(text)

    def end(self) -> Iterator[Delta | Finish]:
        """The answer ended: the delta of an event the body ended without its blank line, then
        Finish."""
        for data in self._decoder.end():
            if text := self._parse(data):
                yield Delta(text)
        if self._finish_reason is None:
            raise UpstreamError(
                Code.UPSTREAM_DISCONNECTED, "The upstream ended the stream before it finished."
            )
        yield Finish(self._finish_reason, self._usage)

    def _parse(self, data: bytes) -> str | None:
        """The text of one event's chunk, noting its finish reason and usage."""
        if self.done or not data.strip():  # an event with empty data carries no chunk
            return None
        if data.startswith(b"[DONE]"):
            self.done = True
            return None
        try:
            chunk = orjson.loads(data)
        except ValueError as exc:
            raise UpstreamError(
                Code.UPSTREAM_BAD_RESPONSE, "The upstream sent malformed data (not JSON)."
            ) from exc
        if not isinstance(chunk, dict):
            raise UpstreamError(Code.UPSTREAM_BAD_RESPONSE, "The upstream sent a chunk that is not "
                                "a JSON object.")
        if chunk.get("error"):
            log.warning("upstream reported an error mid-answer%s", _summary(chunk))
            raise UpstreamError(Code.UPSTREAM_ERROR, "The upstream reported an error mid-answer.")
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            return None
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if content and isinstance(content, str) else None


def _status_error(status: int, raw: bytes) -> UpstreamError:
    """An error answer as the contract's code and a sentence of our own: the upstream's message
    may name its organisation, a masked key or a request id, so it goes to no one; the log
    gets the status and the body's error type and code."""
    try:
        body = orjson.loads(raw)
    except ValueError:
        body = None
    log.warning("upstream answered HTTP %d%s", status, _summary(body))
    return _status_sentence(status)


def _status_sentence(status: int) -> UpstreamError:
    if status == 429:
        return UpstreamError(Code.UPSTREAM_RATE_LIMITED,
                             "The upstream is rate limiting requests (HTTP 429).")
    if status in (401, 403):
        sentence = "The upstream refused the relay's credentials"
    elif status == 404:
        sentence = "The upstream does not offer this model or endpoint"
    elif status == 413:
        sentence = "The request is too large for the upstream"
    elif 400 <= status < 500:
        sentence = "The upstream rejected the request"
    elif status >= 500:
        sentence = "The upstream failed"
    else:
        sentence = "The upstream answered with an unexpected status"
    return UpstreamError(Code.UPSTREAM_ERROR, f"{sentence} (HTTP {status}).")


_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _summary(body: Any) -> str:
    """` (type=..., code=...)` from an OpenAI-style error body: machine words only, never its
    message."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    words = [
        f"{key}={value}" for key in ("type", "code")
        if isinstance(value := error.get(key), str | int) and _TOKEN.fullmatch(str(value))
    ]
    return f" ({', '.join(words)})" if words else ""


def _translate_sdk_error(exc: Exception) -> UpstreamError:
    """The model list's failure, told like a stream's (the SDK's message is the upstream's)."""
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return UpstreamError(Code.UPSTREAM_TIMEOUT, "The upstream did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        log.warning("upstream unreachable: %r", str(exc.__cause__ or exc))
        return UpstreamError(Code.UPSTREAM_UNREACHABLE, "Could not reach the upstream.")
    if isinstance(exc, openai.APIStatusError):
        log.warning("upstream answered HTTP %d to the model list%s", exc.status_code,
                    _summary(exc.body if isinstance(exc.body, dict) and "error" in exc.body
                             else {"error": exc.body}))
        return _status_sentence(exc.status_code)
    log.warning("listing the upstream's models failed: %s", type(exc).__name__)
    return UpstreamError(Code.UPSTREAM_ERROR, "The upstream's model list failed.")
