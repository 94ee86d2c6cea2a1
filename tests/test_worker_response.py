"""gunicorn.conf.py's CoalescingResponse: a response's head goes out with its first body bytes.

Driven over a real socket pair with gunicorn's own request parser; a thin wrapper counts the
sends, which is the behaviour under test.
"""

from __future__ import annotations

import email.utils
import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

_spec = importlib.util.spec_from_file_location(
    "relay_gunicorn_conf", Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
)
assert _spec is not None and _spec.loader is not None
conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conf)


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
    client, server = pair
    client.sendall(request)
    cfg = Config()
    req = next(iter(RequestParser(cfg, server, ("127.0.0.1", 1))))
    return conf.CoalescingResponse(req, CountingSocket(server), cfg)


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


def test_the_date_header_is_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.25]
    monkeypatch.setattr(conf.time, "time", lambda: now[0])
    first = conf._http_date()
    assert first == email.utils.formatdate(1_700_000_000, usegmt=True)
    now[0] = 1_700_000_000.99
    assert conf._http_date() is first
    now[0] = 1_700_000_001.0
    assert conf._http_date() == email.utils.formatdate(1_700_000_001, usegmt=True)
    assert conf._http_date(86400) == "Fri, 02 Jan 1970 00:00:00 GMT"


def test_frozen_settings_read_as_before_without_config_lookups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = Config()
    cfg.set("keepalive", 7)
    cfg.set("worker_connections", 123)
    before = {name: getattr(cfg, name) for name in cfg.settings}
    properties = ("is_ssl", "address", "sendfile", "reuse_port", "worker_class_str")
    computed = {name: getattr(cfg, name) for name in properties}
    conf._freeze_settings(cfg)

    def no_lookup(self: Config, name: str) -> Any:
        raise AssertionError(f"{name} looked up through Config.__getattr__")

    monkeypatch.setattr(Config, "__getattr__", no_lookup)
    assert {name: getattr(cfg, name) for name in cfg.settings} == before
    assert cfg.keepalive == 7 and cfg.worker_connections == 123
    assert {name: getattr(cfg, name) for name in properties} == computed
