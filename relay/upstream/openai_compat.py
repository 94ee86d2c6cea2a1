"""Any OpenAI-compatible server through the official `openai` SDK.

SDK types and exceptions stay inside this module: callers see Delta, Finish and UpstreamError.
The SDK's patience (600 s, 2 retries) is not inherited: timeouts are ours and retries are off,
because a retried streaming call would pay for the tokens twice.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Iterator
from typing import Any

import httpx2
import openai

from .base import ChatRequest, Delta, Finish, UpstreamError

log = logging.getLogger("relay.upstream")


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
        # The SDK's request headers call platform.platform(), which forks `uname -p` once per
        # process; under gevent, concurrent first requests would each fork. Do it once, now.
        platform.platform()
        self._client: openai.OpenAI | None = None
        self._models: list[str] | None = None

    @property
    def client(self) -> openai.OpenAI:
        # Created on first use, i.e. after gunicorn forked and gevent patched the socket module.
        if self._client is None:
            # The SDK's pool stops at 1,000 connections; every open stream holds one.
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=200)
            http_client = openai.DefaultHttpxClient(limits=limits, timeout=self._options["timeout"])
            self._client = openai.OpenAI(**self._options, http_client=http_client)
        return self._client

    def models(self) -> list[str]:
        if self._models is None:
            try:
                self._models = [model.id for model in self.client.models.list()]
            except Exception as exc:
                raise _translate(exc, self._read_timeout) from exc
        return self._models

    def stream(self, request: ChatRequest) -> Iterator[Delta | Finish]:
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
        # The raw response keeps the SDK's auth, URLs and error mapping but skips building a
        # pydantic model per chunk, which cost more CPU than everything else relay does.
        started = False
        try:
            with self.client.chat.completions.with_streaming_response.create(**params) as raw:
                started = True
                yield from _chunks(_sse_data(raw.iter_lines()))
        except UpstreamError:
            raise
        except Exception as exc:
            raise _translate(exc, self._read_timeout, mid_stream=started) from exc


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event in `lines`, multi-line data joined with newlines."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data:
        yield "\n".join(data)


def _chunks(events: Iterator[str]) -> Iterator[Delta | Finish]:
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    done = False
    for data in events:
        # Read on to the end of the body after [DONE], so the connection goes back to the pool.
        done = done or data.startswith("[DONE]")
        if done:
            continue
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise UpstreamError("upstream_bad_response", "The upstream sent a chunk that is not "
                                "a JSON object.")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError("upstream_error", f"The upstream reported an error: {message}")
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in (chunk.get("choices") or [])[:1]:
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield Delta(content)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    if finish_reason is None:
        raise UpstreamError(
            "upstream_disconnected", "The upstream ended the stream before it finished."
        )
    yield Finish(finish_reason, usage)


def _translate(exc: Exception, read_timeout: float, *, mid_stream: bool = False) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return UpstreamError(
            "upstream_timeout", f"The upstream sent nothing for {read_timeout:g} seconds."
        )
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError) and mid_stream:
        cause = exc.__cause__ or exc
        return UpstreamError(
            "upstream_disconnected", f"The upstream connection broke mid-answer: {cause}"
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return UpstreamError("upstream_unreachable", f"Could not reach the upstream: {cause}")
    if isinstance(exc, openai.RateLimitError):
        return UpstreamError(
            "upstream_rate_limited", f"The upstream is rate limiting requests: {exc.message}"
        )
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(
            "upstream_error", f"The upstream answered HTTP {exc.status_code}: {exc.message}"
        )
    if isinstance(exc, openai.APIError):
        return UpstreamError("upstream_error", f"The upstream reported an error: {exc.message}")
    if isinstance(exc, ValueError | TypeError | AttributeError | KeyError):
        return UpstreamError("upstream_bad_response", f"The upstream sent malformed data: {exc}")
    log.warning("upstream stream broke: %r", exc)
    return UpstreamError("upstream_disconnected", f"The upstream connection broke: {exc}")
