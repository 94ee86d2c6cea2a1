"""relay.server's CoalescingResponse: a response's head goes out with its first body bytes;
and the guard on the gunicorn code it overrides.

Driven over a real socket pair with gunicorn's own request parser; a thin wrapper counts the
sends, which is the behaviour under test.
"""

from __future__ import annotations

import hashlib
import inspect
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser
from gunicorn.workers.ggevent import GeventWorker

from relay import server

# sha256 of the source of what relay.server overrides or rebuilds, as in gunicorn 27.0.1.
# When gunicorn changes one of these, this test fails: read the new code, bring
# CoalescingResponse in line with it (or drop it), then record the new digests here.
GUNICORN_SOURCES = {
    "Response.write":
        "a13659ff072c00e10cc841fbd4e7695cc2e3481a2baadc539f70dd402bc046cc",
    "Response.send_headers":
        "7aff3b7d004fc17b318ce8d0ea6a426cc9c019fb9e6e5ed129c5dbb598315cb9",
    "Response._emit_body":
        "df723e865a1e5adc10a07267689d0d001a4e8c8cd325744e0cf8f3366e19fbfe",
    "Response.default_headers":
        "cb490cea5d6f54089293c2adf46190cf3b5fb92335e620bb93710412aa26c6c6",
    "GeventWorker.init_process":
        "c8f6804aeb4419643134dd064f51667d288b12bfcba5e670fe114d011aadfb12",
    "GeventWorker.handle_request":
        "46750b15c6e4d4b4062b9320a2365f79db2d0113c680560b108f803ecab75869",
}


def _source_digest(qualified: str) -> str:
    owner, name = qualified.split(".")
    cls = {"Response": wsgi.Response, "GeventWorker": GeventWorker}[owner]
    return hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()


def test_the_gunicorn_code_relay_overrides_is_unchanged() -> None:
    assert {name: _source_digest(name) for name in GUNICORN_SOURCES} == GUNICORN_SOURCES


def test_relay_installs_its_response_class_only_in_its_worker() -> None:
    assert wsgi.Response is not server.CoalescingResponse
    assert issubclass(server.RelayWorker, GeventWorker)


class CountingSocket:
    """A real socket that remembers the bytes of each send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        sent = self.sock.send(data)
        self.sends.append(bytes(data[:sent]))
        return sent

    def sendall(self, data: Any) -> None:
        self.sock.sendall(data)
        self.sends.append(bytes(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.fixture()
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.settimeout(5)
    yield client, server
    client.close()
    server.close()


def _response(pair: tuple[socket.socket, socket.socket], request: bytes) -> Any:
    client, sock = pair
    client.sendall(request)
    cfg = Config()
    req = next(iter(RequestParser(cfg, sock, ("127.0.0.1", 1))))
    return server.CoalescingResponse(req, CountingSocket(sock), cfg)


def _received(client: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        data += client.recv(1 << 20)
    return data


def test_the_head_and_the_first_body_bytes_go_out_in_one_send(pair: Any) -> None:
    resp = _response(pair, b"POST /new HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    resp.start_response("201 CREATED", [("Content-Length", "9")])
    resp.write(b'{"id": 1}')
    resp.close()
    assert len(resp.sock.sends) == 1
    head, _, body = resp.sock.sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 CREATED\r\n") and b"Content-Length: 9" in head
    assert body == b'{"id": 1}'


def test_a_chunked_stream_is_framed_and_ended(pair: Any) -> None:
    client, _ = pair
    resp = _response(pair, b"GET /sse/x HTTP/1.1\r\nHost: x\r\n\r\n")
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    for frame in (b"retry: 2000\n\n", b"id: 1\ndata: {}\n\n"):
        resp.write(frame)
    resp.close()
    assert len(resp.sock.sends) == 3  # head + retry, the event, the last chunk
    expected_body = b"D\r\nretry: 2000\n\n\r\n10\r\nid: 1\ndata: {}\n\n\r\n0\r\n\r\n"
    raw = _received(client, len(b"".join(resp.sock.sends)))
    assert b"Transfer-Encoding: chunked" in raw and raw.endswith(b"\r\n\r\n" + expected_body)


def test_a_head_with_no_body_after_it_is_still_sent(pair: Any) -> None:
    client, _ = pair
    resp = _response(pair, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    resp.start_response("200 OK", [("Content-Length", "5")])
    resp.write(b"hello")  # dropped: a HEAD response has no body
    raw = _received(client, 1)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"Content-Length: 5\r\n\r\n")


def test_an_empty_first_write_sends_the_head_alone(pair: Any) -> None:
    client, _ = pair
    resp = _response(pair, b"GET /sse/x HTTP/1.1\r\nHost: x\r\n\r\n")
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    resp.write(b"")
    raw = _received(client, 1)
    assert b"Transfer-Encoding: chunked\r\n" in raw and raw.endswith(b"\r\n\r\n")


def test_a_large_body_is_sent_after_its_head_whole(pair: Any) -> None:
    client, _ = pair
    body = bytes(range(256)) * 400  # 100 KiB: more than is worth copying behind the head
    resp = _response(pair, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    resp.start_response("200 OK", [("Content-Length", str(len(body)))])
    resp.write(body)
    head = resp.sock.sends[0]
    assert head.endswith(b"\r\n\r\n") and body not in head
    raw = _received(client, len(head) + len(body))
    assert raw == head + body
