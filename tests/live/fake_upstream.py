"""A real OpenAI-compatible upstream for the tests, with faults chosen by the model name.

Models (`name` or `name:arg`):
- `echo[:ms]`: streams the last user message back in 3-character chunks (a thousandth of it
  for long ones), `ms` apart (default 0).
- `status:<code>`: answers HTTP <code> with an OpenAI-style error body.
- `drop:<n>`: sends n chunks, then closes the connection mid-body.
- `stall:<n>`: sends n chunks, then nothing until the client goes away.
- `malformed:<n>`: sends n chunks, then a `data:` line that is not JSON.
- `error-event:<n>`: sends n chunks, then a `data: {"error": ...}` event.
- `truncated:<n>`: sends n chunks, then ends the body cleanly with no finish_reason.
- `ragged`: like `echo`, but each event has CRLF line ends, a comment, an `event:` field and its
  JSON split over two `data:` lines, and reaches the socket in two writes cut inside a CRLF.
- `nul`: like `echo`, but every `_` of the message is sent as NUL (JSON's `\u0000`).
- `finish-as-prompt`: like `echo`, but its finish_reason is the message itself.
- `nousage`: like `echo`, but never reports usage, even when asked (as some servers do).
`models_failures` is how many of the next `GET /v1/models` answer HTTP 503.
- `leaky:<code>` (hardening, issue 18): answers HTTP <code> with an error body naming an
  organisation, a masked key and a request id (`LEAKS`), as real upstreams' errors do.
- `leaky-event:<n>` (issue 18): sends n chunks, then a `data: {"error": ...}` event naming them.
- `quiet-after-done` (issue 18): like `echo`, then after `data: [DONE]` nothing (not even the
  body's last chunk) until the client goes away.
Every request is recorded, with whether the client disconnected before the end. No model heeds
`max_tokens` (it is recorded).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What the `leaky` models put in their error text; none of it may reach a user or a log.
LEAKS = ("org-LeakyOrg4242", "sk-proj-****abcd", "req_leaky9f3e2")
LEAKY_MESSAGE = (f"Incorrect API key provided: {LEAKS[1]}. You can find your API key at "
                 f"https://platform.openai.com/account/api-keys.\nOrganization: {LEAKS[0]}, "
                 f"request {LEAKS[2]}")

MODELS = ["echo", "echo:30", "status:429", "status:500", "drop:3", "stall:2", "malformed:2"]


@dataclass
class UpstreamCall:
    model: str
    messages: list[dict[str, Any]]
    client_port: int = 0
    max_tokens: int | None = None  # asked for, and ignored (as some servers do)
    chunks_sent: int = 0
    disconnected: bool = False
    completed: bool = False
    ended: threading.Event = field(default_factory=threading.Event)


class FakeUpstream:
    """Runs the fake upstream on a free loopback port in a background thread."""

    def __init__(self) -> None:
        self.calls: list[UpstreamCall] = []
        self.models_failures = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def record(self, call: UpstreamCall) -> None:
        with self._lock:
            self.calls.append(call)

    def calls_with(self, marker: str) -> list[UpstreamCall]:
        """The calls whose last message contains `marker`."""
        with self._lock:
            return [c for c in self.calls if c.messages and marker in c.messages[-1]["content"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A real server's listen backlog: socketserver's default of 5 resets a burst of new
    # connections (every worker opening its first ones at once).
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As real servers do: with Nagle's algorithm, the small writes after the response head
    # waited for the relay's delayed ACK, up to 40 ms.
    disable_nagle_algorithm = True
    owner: FakeUpstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models" and self.owner.models_failures > 0:
            self.owner.models_failures -= 1
            self._json(503, {"error": {"message": "injected 503", "type": "server_error"}})
        elif self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}
            self._json(200, body)
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        call = UpstreamCall(
            model=request["model"], messages=request["messages"],
            client_port=self.client_address[1], max_tokens=request.get("max_tokens"),
        )
        self.owner.record(call)
        try:
            self._serve(call, request)
        except (BrokenPipeError, ConnectionResetError):
            call.disconnected = True
        finally:
            call.ended.set()

    def _serve(self, call: UpstreamCall, request: dict[str, Any]) -> None:
        name, _, arg = call.model.partition(":")
        if name in _HARDENING:
            _HARDENING[name](self, call, request, arg)
            return
        if name == "status":
            code = int(arg)
            kind = "rate_limit_exceeded" if code == 429 else "server_error"
            self._json(code, {"error": {"message": f"injected {code}", "type": kind}})
            return
        text = next((m["content"] for m in reversed(call.messages) if m["role"] == "user"), "")
        if name == "nul":
            text = text.replace("_", "\x00")
        size = max(3, len(text) // 1000)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        limit = int(arg) if arg and name != "echo" else len(pieces)
        delay = int(arg) / 1000 if name == "echo" and arg else 0.0
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces[:limit]:
            if delay:
                time.sleep(delay)
            if name == "ragged":
                self._ragged_event({"choices": [{"index": 0, "delta": {"content": piece}}]})
            else:
                self._event({"choices": [{"index": 0, "delta": {"content": piece}}]})
            call.chunks_sent += 1
        if name == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if name == "stall":
            call.disconnected = self._wait_for_disconnect(timeout=120)
            self.close_connection = True
            return
        if name == "malformed":
            self._chunk(b"data: {this is not json\n\n")
        elif name == "error-event":
            self._event({"error": {"message": "injected mid-stream error", "type": "server_error"}})
        elif name != "truncated":
            reason = text if name == "finish-as-prompt" else "stop"
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            if request.get("stream_options", {}).get("include_usage") and name != "nousage":
                sent = call.chunks_sent
                usage = {"prompt_tokens": 7, "completion_tokens": sent, "total_tokens": 7 + sent}
                self._event({"choices": [], "usage": usage})
            self._chunk(b"data: [DONE]\n\n")
            call.completed = True
        self._chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                   "model": "fake", **payload}
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _ragged_event(self, payload: dict[str, Any]) -> None:
        text = json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", **payload})
        half = text.index(', "object"')  # between two members, so the joined lines stay JSON
        raw = (f": keep-alive\r\nevent: message\r\ndata: {text[:half]}\r\n"
               f"data:{text[half:]}\r\n\r\n").encode()
        cut = len(raw) - 3  # between the last CR and LF
        self._chunk(raw[:cut])
        time.sleep(0.002)
        self._chunk(raw[cut:])

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _wait_for_disconnect(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                return True
        return False


# --- The soak's upstream (soak/): paced answers, faults at a chosen piece, each call recorded ---
#
# Model `soak-<fault>:<n>:<pieces>:<ms>`: the last user message is cut into <pieces> pieces sent
# <ms>/<pieces> ms apart; the fault comes after <n> of them (`ok` and `noise` send them all).
# Each call appends one JSON line to the record: its marker (the `[soak:...]` that starts the
# message), model, the answer text it sent in full events, and how it ended.

SOAK_FAULTS = (
    "ok",         # a normal answer
    "noise",      # a normal answer with harmless frames between pieces: comments, `event:`,
                  # `id:` and `retry:` lines, empty choices, role-only and null deltas
    "429", "500", "503",  # that HTTP status before any body
    "drop",       # the connection closed mid-body
    "hang",       # silence after n pieces until the client leaves
    "hanghead",   # silence before the response head until the client leaves
    "malformed",  # a `data:` line that is not JSON
    "bytes",      # a `data:` line that is not UTF-8
    "array",      # a JSON array where a chunk object belongs
    "framing",    # a chunk size that is not hex
    "longline",   # an unterminated line of 5 MiB
    "errevent",   # a `data: {"error": ...}` event
    "truncated",  # the body ends cleanly with no finish_reason
)

_NOISE = (
    b": keep-alive\n\n",
    b"event: message\nid: 7\nretry: 1000\n"
    b'data: {"id": "c", "object": "chat.completion.chunk", "choices": []}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": null}}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": ""}}]}\n\n',
)


class SoakUpstream(FakeUpstream):
    """FakeUpstream that also serves the `soak-` models, recording each call to `record_path`."""

    def __init__(self, record_path: str) -> None:
        super().__init__()
        self._record = open(record_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        upstream = self

        class Handler(_SoakHandler):
            owner = upstream

        self.server.RequestHandlerClass = Handler  # before anyone knows the port

    def write_record(self, line: dict[str, Any]) -> None:
        with self._lock:
            self._record.write(json.dumps(line) + "\n")
            self._record.flush()

    def close(self) -> None:
        super().close()
        self._record.close()


class _SoakHandler(_Handler):
    owner: SoakUpstream

    def _serve(self, call: UpstreamCall, request: dict[str, Any]) -> None:
        if not call.model.startswith("soak-"):
            super()._serve(call, request)
            return
        fault, n, pieces, ms = _soak_model(call.model)
        text = call.messages[-1]["content"] if call.messages else ""
        marker = text[: text.find("]") + 1] if text.startswith("[soak:") else None
        line: dict[str, Any] = {"marker": marker, "model": call.model, "sent": "",
                                "ended": "fault"}
        try:
            line["ended"] = self._soak_answer(call, fault, n, pieces, ms, text, line)
        except (BrokenPipeError, ConnectionResetError):
            line["ended"] = "disconnected"
            raise
        finally:
            self.owner.write_record(line)

    def _soak_answer(self, call: UpstreamCall, fault: str, n: int, pieces: int, ms: int,
                     text: str, line: dict[str, Any]) -> str:
        if fault in ("429", "500", "503"):
            code = int(fault)
            kind = "rate_limit_exceeded" if code == 429 else "server_error"
            self._json(code, {"error": {"message": f"injected {code}", "type": kind}})
            return "fault"
        if fault == "hanghead":
            call.disconnected = self._wait_for_disconnect(timeout=120)
            self.close_connection = True
            return "hung"
        size = -(-len(text) // max(1, pieces))
        parts = [text[i : i + size] for i in range(0, len(text), max(1, size))]
        if fault not in ("ok", "noise"):
            parts = parts[:n]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, part in enumerate(parts):
            if ms:
                time.sleep(ms / 1000 / max(1, pieces))
            if fault == "noise":
                self._chunk(_NOISE[index % len(_NOISE)])
            self._event({"choices": [{"index": 0, "delta": {"content": part}}]})
            line["sent"] += part
        return self._soak_end(call, fault)

    def _soak_end(self, call: UpstreamCall, fault: str) -> str:
        if fault == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return "fault"
        if fault == "hang":
            call.disconnected = self._wait_for_disconnect(timeout=120)
            self.close_connection = True
            return "hung"
        if fault == "framing":
            self.wfile.write(b"zz\r\ndata: {}\r\n")
            self.close_connection = True
            return "fault"
        garbage = {
            "malformed": b"data: {this is not json\n\n",
            "bytes": b'data: {"choices": [{"delta": {"content": "\xff\xfe\xc3"}}]}\n\n',
            "array": b"data: [1, 2, 3]\n\n",
            "longline": b"data: " + b"x" * (5 * 1024 * 1024),
            "errevent": b'data: {"error": {"message": "injected", "type": "server_error"}}\n\n',
        }
        if fault in garbage:
            self._chunk(garbage[fault])
            self._chunk(b"")
            return "fault"
        if fault == "truncated":
            self._chunk(b"")
            return "fault"
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        return "completed"


def _soak_model(model: str) -> tuple[str, int, int, int]:
    """(fault, n, pieces, ms) of `soak-<fault>:<n>:<pieces>:<ms>`."""
    fault, n, pieces, ms = model[len("soak-"):].split(":")
    if fault not in SOAK_FAULTS:
        raise ValueError(f"unknown soak fault {fault!r}")
    return fault, int(n), int(pieces), int(ms)


# Issue 18 (hardening): the `leaky`, `leaky-event` and `quiet-after-done` models.

def _leaky(handler: _Handler, call: UpstreamCall, request: dict[str, Any], arg: str) -> None:
    error = {"message": LEAKY_MESSAGE, "type": "invalid_request_error", "param": None,
             "code": "invalid_api_key"}
    handler._json(int(arg), {"error": error})


def _leaky_event(handler: _Handler, call: UpstreamCall, request: dict[str, Any],
                 arg: str) -> None:
    _echo_head(handler)
    for piece in _pieces(call)[: int(arg)]:
        handler._event({"choices": [{"index": 0, "delta": {"content": piece}}]})
        call.chunks_sent += 1
    handler._event({"error": {"message": LEAKY_MESSAGE, "type": "server_error",
                              "code": "internal_error"}})
    handler._chunk(b"")


def _quiet_after_done(handler: _Handler, call: UpstreamCall, request: dict[str, Any],
                      arg: str) -> None:
    _echo_head(handler)
    for piece in _pieces(call):
        handler._event({"choices": [{"index": 0, "delta": {"content": piece}}]})
        call.chunks_sent += 1
    handler._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    handler._chunk(b"data: [DONE]\n\n")
    call.completed = True
    call.disconnected = handler._wait_for_disconnect(timeout=120)
    handler.close_connection = True


def _echo_head(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def _pieces(call: UpstreamCall) -> list[str]:
    text = next((m["content"] for m in reversed(call.messages) if m["role"] == "user"), "")
    return [text[i : i + 3] for i in range(0, len(text), 3)]


_HARDENING = {"leaky": _leaky, "leaky-event": _leaky_event, "quiet-after-done": _quiet_after_done}
