"""Any OpenAI-compatible server: the `openai` SDK resolves the endpoint, relay streams it lean.

The SDK client holds the configuration (base URL, API key, organization and project, its
headers) and lists the models. The streaming call is that same request, built once per process
from the SDK client's URL and headers, sent on a pooled keep-alive `http.client` connection and
parsed from raw bytes: through the SDK and its httpx2 layers it cost about 2.5 ms of CPU before
the first token and three times as much per token (see ARCHITECTURE.md, "Performance").
Callers see only Delta, Finish and UpstreamError. Timeouts are ours and nothing is retried once
the upstream may have seen the request: a retried streaming call would pay for the tokens twice.
"""

from __future__ import annotations

import http.client
import json
import logging
import platform
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import orjson

from .base import ChatRequest, Delta, Finish, UpstreamError

log = logging.getLogger("relay.upstream")

_MAX_IDLE_CONNECTIONS = 256
# Each read allocates this much before it waits for the socket, so an idle stream holds it:
# 64 KiB reads made a thousand slow streams hold 64 MB. 4 KiB still carries dozens of events.
_READ_SIZE = 4096
_MAX_ERROR_BODY = 64 * 1024


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
        self._endpoint: _Endpoint | None = None
        self._models: list[str] | None = None

    @property
    def client(self) -> openai.OpenAI:
        # Created on first use, i.e. after gunicorn forked and gevent patched the socket module.
        if self._client is None:
            self._client = openai.OpenAI(**self._options)
        return self._client

    @property
    def endpoint(self) -> _Endpoint:
        if self._endpoint is None:
            self._endpoint = _Endpoint(self.client, self._connect_timeout, self._read_timeout)
        return self._endpoint

    def models(self) -> list[str]:
        if self._models is None:
            try:
                self._models = [model.id for model in self.client.models.list()]
            except Exception as exc:
                raise _translate_sdk_error(exc) from exc
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
        body = json.dumps(params, ensure_ascii=False).encode()
        endpoint = self.endpoint
        conn: http.client.HTTPConnection | None = None
        response: http.client.HTTPResponse | None = None
        reusable = False
        try:
            conn, response = endpoint.post(body)
            if response.status >= 400:
                raise _status_error(response.status, response.read(_MAX_ERROR_BODY))
            for item in _chunks(_event_data(response)):
                if isinstance(item, Finish):
                    # The body has been read to its end; the caller may stop iterating here.
                    reusable = response.isclosed() and not response.will_close
                yield item
        except TimeoutError as exc:
            raise UpstreamError(
                "upstream_timeout", f"The upstream sent nothing for {self._read_timeout:g} seconds."
            ) from exc
        except ValueError as exc:  # a chunk size that is not hex
            raise UpstreamError(
                "upstream_bad_response", f"The upstream sent a malformed body: {exc}"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            when = "mid-answer" if response is not None else "before answering"
            raise UpstreamError(
                "upstream_disconnected", f"The upstream connection broke {when}: {exc!r}"
            ) from exc
        finally:
            if conn is not None:
                endpoint.release(conn, reusable)


class _Response(http.client.HTTPResponse):
    """http.client's response with a 1 KiB read buffer instead of 8 KiB: one per open stream."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # nothing read from it yet
        self.fp = sock.makefile("rb", buffering=1024)


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Response


class _Endpoint:
    """The chat completions URL and headers, and a pool of idle keep-alive connections to it."""

    def __init__(self, client: openai.OpenAI, connect_timeout: float, read_timeout: float) -> None:
        url = urlsplit(str(client.base_url.join("chat/completions")))
        https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if https else 80)
        self.path = url.path + (f"?{url.query}" if url.query else "")
        headers = {**client.default_headers, **client.auth_headers}
        self.headers = {k: v for k, v in headers.items() if isinstance(v, str)}
        self.headers["Accept"] = "text/event-stream"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls = ssl.create_default_context() if https else None
        self._idle: list[http.client.HTTPConnection] = []

    def post(self, body: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on an idle pooled connection (those the server closed meanwhile are
        dropped), else on a new one."""
        while self._idle:
            conn = self._idle.pop()
            try:
                return conn, self._send(conn, body)
            except (ConnectionError, http.client.BadStatusLine):
                conn.close()  # closed while idle, before the server read the request
            except BaseException:
                conn.close()
                raise
        conn = self._connect()
        try:
            return conn, self._send(conn, body)
        except BaseException:
            conn.close()
            raise

    def release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable and len(self._idle) < _MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = _HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self._tls
            )
        else:
            conn = _HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise UpstreamError(
                "upstream_unreachable", f"Could not reach the upstream: {exc}"
            ) from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _send(self, conn: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
        conn.request("POST", self.path, body=body, headers=self.headers)
        return conn.getresponse()


def _body(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body's bytes as they arrive, the response closed (so reusable) once fully read.

    A chunked body is decoded here from all the bytes at hand: http.client's own decoder returns
    one chunk per call, i.e. one event, through five Python calls, which cost more than the event.
    """
    if not response.chunked:
        while received := response.read1(_READ_SIZE):
            yield received
        return
    assert response.fp is not None
    read = response.fp.read1
    pending = b""
    left = 0  # payload bytes still to come in the current chunk, then its CRLF (2 more)
    while True:
        received = read(_READ_SIZE)
        if not received:
            raise http.client.IncompleteRead(pending)
        pending += received
        payload: list[bytes] = []
        while pending:
            if left > 2:
                piece = pending[: left - 2]
                payload.append(piece)
                pending = pending[len(piece) :]
                left -= len(piece)
            elif left:
                skipped = min(left, len(pending))
                pending = pending[skipped:]
                left -= skipped
            else:
                line_end = pending.find(b"\n")
                if line_end < 0:
                    break
                size = int(pending[:line_end].split(b";", 1)[0], 16)
                pending = pending[line_end + 1 :]
                if size == 0:
                    if payload:
                        yield b"".join(payload)
                    _skip_trailers(response.fp, pending)
                    response.close()
                    return
                left = size + 2
        if payload:
            yield b"".join(payload)


def _skip_trailers(fp: Any, pending: bytes) -> None:
    """Read the trailer section after the last chunk, up to its blank line."""
    while True:
        while b"\n" not in pending:
            received = fp.read1(_READ_SIZE)
            if not received:
                raise http.client.IncompleteRead(pending)
            pending += received
        line, _, pending = pending.partition(b"\n")
        if not line.strip():
            return


def _event_data(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The `data` of each server-sent event in the body, multi-line data joined with newlines."""
    buffer = b""
    for received in _body(response):
        buffer += received
        if b"\r" in buffer:
            # Normalise CRLF and CR line ends; a CR at the very end may be half of a CRLF.
            keep = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(keep)].replace(b"\r\n", b"\n")
            buffer = buffer.replace(b"\r", b"\n") + keep
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            data = _data_of(block)
            if data is not None:
                yield data
    data = _data_of(buffer.rstrip(b"\r"))
    if data is not None:
        yield data


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual one-line event
    lines = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def _chunks(events: Iterator[bytes]) -> Iterator[Delta | Finish]:
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    done = False
    for data in events:
        # Read on to the end of the body after [DONE], so the connection goes back to the pool.
        done = done or data.startswith(b"[DONE]")
        if done:
            continue
        try:
            chunk = orjson.loads(data)
        except ValueError as exc:
            raise UpstreamError(
                "upstream_bad_response", f"The upstream sent malformed data: {exc}"
            ) from exc
        if not isinstance(chunk, dict):
            raise UpstreamError("upstream_bad_response", "The upstream sent a chunk that is not "
                                "a JSON object.")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError("upstream_error", f"The upstream reported an error: {message}")
        if chunk.get("usage"):
            usage = chunk["usage"]
        choices = chunk.get("choices")
        if choices and isinstance(choices, list):
            choice = choices[0]
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if content and isinstance(content, str):
                yield Delta(content)
            if isinstance(choice, dict) and choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    if finish_reason is None:
        raise UpstreamError(
            "upstream_disconnected", "The upstream ended the stream before it finished."
        )
    yield Finish(finish_reason, usage)


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
            "upstream_rate_limited", f"The upstream is rate limiting requests (429): {detail}"
        )
    return UpstreamError("upstream_error", f"The upstream answered HTTP {status}: {detail}")


def _translate_sdk_error(exc: Exception) -> UpstreamError:
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return UpstreamError("upstream_timeout", "The upstream did not answer in time.")
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
    log.warning("listing the upstream's models failed: %r", exc)
    return UpstreamError("upstream_error", f"The upstream's model list failed: {exc}")
