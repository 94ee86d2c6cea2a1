"""Any OpenAI-compatible server: the `openai` SDK resolves the endpoint, relay streams it lean.

The SDK client holds the configuration (base URL, API key, organization and project, its
headers) and lists the models. The streaming call is that same request, built once per process
from the SDK client's URL and headers, sent on a pooled keep-alive connection (`connection.py`)
and parsed from raw bytes: through the SDK and its httpx2 layers it cost more CPU than all of
relay's other work, before the first token and per token (bench/README.md has the history).
Callers see only Delta, Finish and UpstreamError. Timeouts are ours and nothing is retried once
the upstream may have seen the request: a retried streaming call would pay for the tokens twice.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import orjson

from ..errors import ErrorCode as Code
from .base import ChatRequest, Chunks, Delta, Finish, UpstreamError
from .connection import Call, Endpoint, ProtocolError, Response, UnreachableError

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
            # The body is read to its end, past [DONE], so the connection can be reused; the
            # caller may stop iterating at Finish.
            parser = _EventParser()
            while received := response.read():
                yield from parser.feed(received)
            yield from parser.end()
        except TimeoutError as exc:
            raise UpstreamError(
                Code.UPSTREAM_TIMEOUT,
                f"The upstream sent nothing for {self._read_timeout:g} seconds.",
            ) from exc
        except UnreachableError as exc:
            raise UpstreamError(Code.UPSTREAM_UNREACHABLE, str(exc)) from exc
        except ProtocolError as exc:
            raise UpstreamError(
                Code.UPSTREAM_BAD_RESPONSE, f"The upstream sent a malformed response: {exc}"
            ) from exc
        except OSError as exc:
            when = "mid-answer" if response is not None else "before answering"
            raise UpstreamError(
                Code.UPSTREAM_DISCONNECTED, f"The upstream connection broke {when}: {exc!r}"
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

    __slots__ = ("_buffer", "_done", "_finish_reason", "_usage")

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, received: bytes) -> Iterator[Delta]:
        """The deltas of the events that `received` completes (a generator, so that the deltas
        before a malformed event still go out)."""
        buffer = self._buffer + received
        if b"\r" in buffer:
            # Normalise CRLF and CR line ends; a CR at the very end may be half of a CRLF.
            keep = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(keep)].replace(b"\r\n", b"\n")
            buffer = buffer.replace(b"\r", b"\n") + keep
        *blocks, self._buffer = buffer.split(b"\n\n")
        if len(self._buffer) > _MAX_EVENT:
            raise UpstreamError(Code.UPSTREAM_BAD_RESPONSE,
                                f"The upstream sent an event of more than {_MAX_EVENT} bytes.")
        for block in blocks:
            data = _data_of(block)
            if data is not None and (text := self._parse(data)):
                yield Delta(text)

    def end(self) -> Iterator[Delta | Finish]:
        """The body ended: the delta of an event it did not end with a blank line, and Finish."""
        data = _data_of(self._buffer.rstrip(b"\r"))
        if data is not None and (text := self._parse(data)):
            yield Delta(text)
        if self._finish_reason is None:
            raise UpstreamError(
                Code.UPSTREAM_DISCONNECTED, "The upstream ended the stream before it finished."
            )
        yield Finish(self._finish_reason, self._usage)

    def _parse(self, data: bytes) -> str | None:
        """The text of one event's chunk, noting its finish reason and usage."""
        # Read on to the end of the body after [DONE], so the connection goes back to the pool.
        self._done = self._done or data.startswith(b"[DONE]")
        if self._done:
            return None
        try:
            chunk = orjson.loads(data)
        except ValueError as exc:
            raise UpstreamError(
                Code.UPSTREAM_BAD_RESPONSE, f"The upstream sent malformed data: {exc}"
            ) from exc
        if not isinstance(chunk, dict):
            raise UpstreamError(Code.UPSTREAM_BAD_RESPONSE, "The upstream sent a chunk that is not "
                                "a JSON object.")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(Code.UPSTREAM_ERROR, f"The upstream reported an error: {message}")
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


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual one-line event
    lines = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def _status_error(status: int, raw: bytes) -> UpstreamError:
    """An error answer's code and message, from an OpenAI-style `{"error": {"message"}}` body."""
    try:
        error = json.loads(raw).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    detail = str(message) if message else raw[:200].decode("utf-8", "replace").strip()
    if status == 429:
        return UpstreamError(
            Code.UPSTREAM_RATE_LIMITED, f"The upstream is rate limiting requests (429): {detail}"
        )
    return UpstreamError(Code.UPSTREAM_ERROR, f"The upstream answered HTTP {status}: {detail}")


def _translate_sdk_error(exc: Exception) -> UpstreamError:
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return UpstreamError(Code.UPSTREAM_TIMEOUT, "The upstream did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return UpstreamError(Code.UPSTREAM_UNREACHABLE, f"Could not reach the upstream: {cause}")
    if isinstance(exc, openai.RateLimitError):
        return UpstreamError(
            Code.UPSTREAM_RATE_LIMITED, f"The upstream is rate limiting requests: {exc.message}"
        )
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(
            Code.UPSTREAM_ERROR, f"The upstream answered HTTP {exc.status_code}: {exc.message}"
        )
    if isinstance(exc, openai.APIError):
        return UpstreamError(Code.UPSTREAM_ERROR, f"The upstream reported an error: {exc.message}")
    log.warning("listing the upstream's models failed: %r", exc)
    return UpstreamError(Code.UPSTREAM_ERROR, f"The upstream's model list failed: {exc}")
