"""A fast, deterministic OpenAI-compatible upstream for the benchmarks (gevent, raw sockets).

The model name chooses the answer: `bench-n<tokens>-t<ttft_ms>-p<pace_ms>` streams <tokens>
chunks, the first after <ttft_ms>, then one every <pace_ms> (0: written back to back, each chunk
its own socket write, as a real server flushes each token). Other names use the defaults given on
the command line. Streaming answers follow OpenAI's chunk format and end with `data: [DONE]`;
`stream_options.include_usage` adds the usage chunk. Run standalone:
`python -m bench.upstream --port 9000`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gevent
from gevent.server import StreamServer

_MODEL = re.compile(r"bench-n(\d+)-t(\d+)-p(\d+)$")
_CREATED = 1700000000


@dataclass(frozen=True)
class Answer:
    tokens: int
    ttft_ms: float
    pace_ms: float


def model_name(tokens: int, ttft_ms: int = 0, pace_ms: int = 0) -> str:
    """The model name that makes this upstream answer with `tokens` chunks at this pace."""
    return f"bench-n{tokens}-t{ttft_ms}-p{pace_ms}"


def answer_for(model: str, default: Answer) -> Answer:
    """Parse `bench-n<tokens>-t<ttft>-p<pace>` (with any provider prefix), else `default`."""
    match = _MODEL.search(model)
    if match is None:
        return default
    tokens, ttft, pace = (int(g) for g in match.groups())
    return Answer(tokens, ttft, pace)


@lru_cache(maxsize=256)
def _chunks(model: str, tokens: int, usage: bool) -> tuple[bytes, ...]:
    """The pre-encoded HTTP chunks (chunked transfer encoding) of one streaming answer."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": _CREATED,
            "model": model}
    events: list[dict[str, Any]] = []
    for i in range(tokens):
        delta = {"content": f"w{i} "}
        if i == 0:
            delta = {"role": "assistant", **delta}
        events.append({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        events.append({**head, "choices": [], "usage": _usage(tokens)})
    lines = [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events]
    lines.append(b"data: [DONE]\n\n")
    return tuple(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": tokens + 8}


def _read_request(sock: socket.socket, buf: bytearray) -> tuple[str, str, bytes] | None:
    """Read one request (method, path, body) from a keep-alive connection; None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    method, path, _ = head[0].split(" ", 2)
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(buf) < length:
        data = sock.recv(max(65536, length - len(buf)))
        if not data:
            return None
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return method, path, body


def _send_json(sock: socket.socket, status: str, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    sock.sendall(
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status.encode(), len(body), body)
    )


class Upstream:
    """The request handler; `default` is the answer for model names that do not encode one."""

    def __init__(self, default: Answer) -> None:
        self.default = default

    def handle(self, sock: socket.socket, _address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        try:
            while (request := _read_request(sock, buf)) is not None:
                self._answer(sock, *request)
        except OSError:
            pass
        finally:
            sock.close()

    def _answer(self, sock: socket.socket, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            names = [model_name(self.default.tokens)]
            _send_json(sock, "200 OK", {"object": "list", "data": [
                {"id": n, "object": "model", "created": _CREATED, "owned_by": "bench"}
                for n in names
            ]})
            return
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            _send_json(sock, "404 Not Found", {"error": {"code": "not_found", "message": path}})
            return
        params = json.loads(body or b"{}")
        model = str(params.get("model", ""))
        answer = answer_for(model, self.default)
        if answer.ttft_ms:
            gevent.sleep(answer.ttft_ms / 1000.0)
        if not params.get("stream"):
            text = "".join(f"w{i} " for i in range(answer.tokens))
            _send_json(sock, "200 OK", {
                "id": "chatcmpl-bench", "object": "chat.completion", "created": _CREATED,
                "model": model, "usage": _usage(answer.tokens), "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }],
            })
            return
        usage = bool((params.get("stream_options") or {}).get("include_usage"))
        chunks = _chunks(model, answer.tokens, usage)
        first = min(1, answer.tokens)
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks[:first])
        )
        pace = answer.pace_ms / 1000.0
        for chunk in chunks[first : answer.tokens]:
            if pace:
                gevent.sleep(pace)
            sock.sendall(chunk)
        sock.sendall(b"".join(chunks[answer.tokens :]) + b"0\r\n\r\n")


def serve(port: int, default: Answer, host: str = "127.0.0.1") -> StreamServer:
    """Start the upstream on host:port (0: a free port) and return the running server."""
    server = StreamServer((host, port), Upstream(default).handle, backlog=4096)
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--tokens", type=int, default=64, help="chunks per answer")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first chunk")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="delay between chunks")
    args = parser.parse_args(argv)
    server = serve(args.port, Answer(args.tokens, args.ttft_ms, args.pace_ms), args.host)
    print(f"upstream listening on http://{args.host}:{server.server_port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
