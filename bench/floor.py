"""The floor: the least that any relay built on relay's stack adds to the first token.

The contract's two steps on gunicorn's gevent worker and Flask, and nothing else: `POST /new`
keeps the prompt in a dict and answers its id; `GET /sse/<id>` sends it upstream on a pooled
keep-alive socket and passes each piece of the answer on as one event, then `done`. Nothing is
stored, owned, checked, parsed or made durable, so relay's added time to first token can be
quoted against what its stack alone costs. The benchmark runs it as
`gunicorn -k gevent -w 1 bench.floor:app` with FLOOR_UPSTREAM=host:port.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator

from flask import Flask, Response, request

app = Flask(__name__)
_prompts: dict[str, dict[str, str]] = {}
_idle: list[socket.socket] = []
_END = b"0\r\n\r\n"


def _upstream() -> tuple[str, int]:
    host, _, port = os.environ["FLOOR_UPSTREAM"].rpartition(":")
    return host, int(port)


@app.post("/new")
def new_ticket() -> Response:
    ticket_id = secrets.token_urlsafe(24)
    _prompts[ticket_id] = request.get_json()
    body = json.dumps({"id": ticket_id, "stream_url": f"/sse/{ticket_id}"})
    return Response(body, 201, mimetype="application/json")


@app.get("/sse/<ticket_id>")
def stream(ticket_id: str) -> Response:
    ticket = _prompts.pop(ticket_id)
    body = json.dumps({"model": ticket["model"], "stream": True,
                       "messages": [{"role": "user", "content": ticket["prompt"]}]}).encode()
    sock = _idle.pop() if _idle else _connect()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    return Response(_events(sock), mimetype="text/event-stream")


def _events(sock: socket.socket) -> Iterator[bytes]:
    """An event per read of the upstream's body (after its head), `done` at the body's end."""
    yield b"retry: 2000\n\n"
    received = b""
    while b"\r\n\r\n" not in received:
        received += _recv(sock)
    data = received.partition(b"\r\n\r\n")[2]
    count, tail = 0, b""
    while not tail.endswith(_END):
        data = data or _recv(sock)
        count += 1
        tail = (tail + data)[-len(_END) :]
        yield b"id: %d\ndata: {\"bytes\": %d}\n\n" % (count, len(data))
        data = b""
    _idle.append(sock)
    yield b'event: done\ndata: {"status": "completed"}\n\n'


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        sock.close()
        raise ConnectionError("the upstream closed the connection")
    return data


def _connect() -> socket.socket:
    sock = socket.create_connection(_upstream())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
