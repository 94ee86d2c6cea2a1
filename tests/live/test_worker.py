"""The gunicorn worker itself: a busy keep-alive client cannot hold a worker while others wait."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest

from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)

PIPELINED = 200


def _post_new(port: int) -> bytes:
    body = json.dumps({"prompt": "fair share"}).encode()
    head = (
        f"POST /new HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_pipelined_requests_do_not_starve_another_connection(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> None:
    # Every request of the greedy client is already readable, so without a turn of the event
    # loop between them the worker would answer all of them before reading the other one.
    relay = start_relay({"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
                         "RELAY_DEFAULT_MODEL": "echo"}, workers=1)
    request = _post_new(relay.port)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as greedy, \
            socket.create_connection(("127.0.0.1", relay.port), timeout=30) as other:
        greedy.sendall(request * PIPELINED)
        other.sendall(request)
        assert _read_response(other).startswith(b"HTTP/1.1 201")
        greedy.setblocking(False)
        answered_first = b""
        try:
            while chunk := greedy.recv(1 << 20):
                answered_first += chunk
        except BlockingIOError:
            pass
        assert answered_first.count(b"HTTP/1.1 201") < PIPELINED // 2
