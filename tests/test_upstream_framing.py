"""The upstream client's HTTP/1.1 framing on kept-alive connections, case by case: raw response
bytes from a real loopback server, then what the client made of them and whether it reused the
connection. A connection must be reused only after a response whose end is certain, with
nothing after it, and a request the upstream may have seen is never sent again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from relay.upstream.connection import Endpoint, ProtocolError

from .test_upstream_connection import _requests

pytestmark = pytest.mark.timeout(30)

OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"


class _Hangup(bytes):
    """Read the request, send these bytes (maybe none), then close the connection."""


class _Later(bytes):
    """Send these bytes, then `late` once the client has released the connection to its pool."""

    late = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"


class _Server:
    """Answers the n-th request, on whichever connection, with `replies[n - 1]`; records which
    connection each request came on."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.requests: list[int] = []  # the connection number of each request
        self.connections = 0
        self.released = threading.Event()
        self.late_sent = threading.Event()
        self.hung_up = threading.Event()  # it closed a connection itself
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.connections),
                             daemon=True).start()

    def _serve(self, client: socket.socket, number: int) -> None:
        with client:
            try:
                for _ in _requests(client):
                    self.requests.append(number)
                    reply = self.replies[len(self.requests) - 1]
                    client.sendall(reply)
                    if isinstance(reply, _Hangup):
                        client.close()
                        self.hung_up.set()
                        return
                    if isinstance(reply, _Later):
                        self.released.wait(10)
                        client.sendall(reply.late)
                        self.late_sent.set()
            except OSError:  # the client closed it first
                pass


@pytest.fixture()
def serve() -> Iterator[Callable[[list[bytes]], tuple[_Server, Endpoint]]]:
    made: list[tuple[_Server, Endpoint]] = []

    def make(replies: list[bytes]) -> tuple[_Server, Endpoint]:
        server = _Server(replies)
        endpoint = Endpoint("127.0.0.1", server.port, "/v1/chat/completions", {},
                            https=False, connect_timeout=5, read_timeout=5)
        made.append((server, endpoint))
        return server, endpoint

    yield make
    for server, endpoint in made:
        endpoint.close_idle()
        server.close()


def _exchange(endpoint: Endpoint) -> bytes:
    """POST, read the whole body, give the connection back."""
    response = endpoint.post(b"{}")
    try:
        body = b""
        while data := response.read():
            body += data
        return body
    finally:
        endpoint.release(response)


_HEAD = b"HTTP/1.1 200 OK\r\n"
_CHUNKED = _HEAD + b"Transfer-Encoding: chunked\r\n\r\n"

# (first answer's bytes, the body the client must read or ProtocolError, connection reused)
FRAMING = {
    "plain Content-Length": (_HEAD + b"Content-Length: 2\r\n\r\nok", b"ok", True),
    "plain chunked": (_CHUNKED + b"2\r\nok\r\n0\r\n\r\n", b"ok", True),
    "Content-Length repeated, conflicting": (
        _HEAD + b"Content-Length: 2\r\nContent-Length: 4\r\n\r\nokok", ProtocolError, False),
    "Content-Length repeated, equal": (
        _HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
    "Transfer-Encoding repeated": (
        _HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n", ProtocolError, False),
    "Connection repeated, close first": (
        _HEAD + b"Connection: close\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"ok", False),
    # A folded line continues the header before it (RFC 9112 5.2: replaced by a space); read
    # as a header of its own, it smuggles a Transfer-Encoding in.
    "folded header": (
        _HEAD + b"X-Note: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok",
        b"ok", True),
    "chunked as a substring": (
        _HEAD + b"Transfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", ProtocolError, False),
    "chunked not the last coding": (
        _HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ProtocolError, False),
    # RFC 9112 6.3: "ought to be handled as an error" (request smuggling, response splitting).
    "Transfer-Encoding and Content-Length": (
        _HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ProtocolError, False),
    "bytes past Content-Length": (
        _HEAD + b"Content-Length: 2\r\n\r\nok" + _Later.late, b"ok", False),
    "negative chunk size": (_CHUNKED + b"2\r\nok\r\n-2\r\n0\r\n\r\n", ProtocolError, False),
    "0x chunk size": (_CHUNKED + b"0x2\r\nok\r\n0\r\n\r\n", ProtocolError, False),
    "signed chunk size": (_CHUNKED + b"+2\r\nok\r\n0\r\n\r\n", ProtocolError, False),
    "chunk without its CRLF": (_CHUNKED + b"2\r\nokXX0\r\n\r\n", ProtocolError, False),
    "bytes past the last chunk": (
        _CHUNKED + b"2\r\nok\r\n0\r\n\r\n" + _Later.late, b"ok", False),
}


@pytest.mark.parametrize(("raw", "expected", "reused"), FRAMING.values(), ids=FRAMING.keys())
def test_framing(
    serve: Callable[[list[bytes]], tuple[_Server, Endpoint]], raw: bytes,
    expected: bytes | type[Exception], reused: bool,
) -> None:
    server, endpoint = serve([raw, OK_2])
    if isinstance(expected, bytes):
        assert _exchange(endpoint) == expected
    else:
        with pytest.raises(expected):
            _exchange(endpoint)
    assert _exchange(endpoint) == b"2"  # the upstream's own answer, on a sound connection
    assert server.requests == [1, 1 if reused else 2]


def test_bytes_arriving_on_an_idle_connection_are_never_read_as_an_answer(
    serve: Callable[[list[bytes]], tuple[_Server, Endpoint]],
) -> None:
    server, endpoint = serve([_Later(_HEAD + b"Content-Length: 2\r\n\r\nok"), OK_2])
    assert _exchange(endpoint) == b"ok"
    server.released.set()
    assert server.late_sent.wait(5)
    assert _exchange(endpoint) == b"2"
    assert server.requests == [1, 2]


def test_an_idle_connection_the_upstream_closed_is_not_used(
    serve: Callable[[list[bytes]], tuple[_Server, Endpoint]],
) -> None:
    # The upstream closes it after answering, as a server whose keep-alive timeout passed.
    server, endpoint = serve([_Hangup(_HEAD + b"Content-Length: 2\r\n\r\nok"), OK_2])
    assert _exchange(endpoint) == b"ok"
    assert server.hung_up.wait(5)
    assert _exchange(endpoint) == b"2"
    assert server.requests == [1, 2]


def test_a_request_the_upstream_read_is_never_sent_again(
    serve: Callable[[list[bytes]], tuple[_Server, Endpoint]],
) -> None:
    # On a reused connection the upstream reads the request, then closes without a word: it
    # may have started the work, so sending it again could pay for the answer twice.
    server, endpoint = serve([_HEAD + b"Content-Length: 2\r\n\r\nok", _Hangup(b""), OK_2])
    assert _exchange(endpoint) == b"ok"
    with pytest.raises(ConnectionError):
        _exchange(endpoint)
    assert server.requests == [1, 1]
    assert _exchange(endpoint) == b"2"  # the next request, on a fresh connection
    assert server.requests == [1, 1, 2]


@pytest.mark.parametrize(("bad", "before"), [
    (b"-2\r\n", b""), (b"zz\r\n", b""), (b"2\r\nokXX", b"ok"),  # a chunk's payload, then no CRLF
], ids=["size", "hex", "crlf"])
def test_the_answer_before_bad_framing_is_read_then_the_error(
    serve: Callable[[list[bytes]], tuple[_Server, Endpoint]], bad: bytes, before: bytes,
) -> None:
    # Good chunks and a bad one in one read: what the upstream sent before the fault is part of
    # its answer (stored, shown), and only the next read fails.
    server, endpoint = serve([_CHUNKED + b"5\r\nhello\r\n6\r\n world\r\n" + bad, OK_2])
    response = endpoint.post(b"{}")
    try:
        assert response.read() == b"hello world" + before
        with pytest.raises(ProtocolError):
            response.read()
    finally:
        endpoint.release(response)
    assert _exchange(endpoint) == b"2"
    assert server.requests == [1, 2]
