"""HTTP/1.1 framing of upstream responses and pooled connections, over real loopback sockets;
the bounds on what an upstream may make relay hold."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from relay.upstream import ChatRequest, UpstreamError
from relay.upstream.connection import Connection, Endpoint, ProtocolError, Response
from relay.upstream.openai_compat import OpenAIUpstream, _EventParser

pytestmark = pytest.mark.timeout(30)


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _response(raw: bytes) -> Response:
    """The Response read from a socket whose peer sent `raw`, then closed its end."""
    ours, theirs = socket.socketpair()
    _opened.append(ours)
    theirs.sendall(raw)
    theirs.close()
    conn = Connection(ours)
    return Response(conn, conn.recv())


def _body(response: Response) -> bytes:
    received = b""
    while data := response.read():
        received += data
    return received


def test_content_length_body_is_read_exactly_and_reusable() -> None:
    response = _response(b"HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\n\r\nhello")
    assert response.status == 429
    assert _body(response) == b"hello"
    assert response.reusable


def test_body_until_close_is_read_to_the_end_and_not_reused() -> None:
    response = _response(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: a\n\ndata: b\n\n")
    assert _body(response) == b"data: a\n\ndata: b\n\n"
    assert response.complete and not response.reusable


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    response = _response(raw)
    assert _body(response) == b"hello world"
    assert response.reusable


def test_chunked_body_split_anywhere_between_reads() -> None:
    # What was received with the head, then the rest in the next read: every split point, so
    # each piece of the framing (size line, payload, its CRLF, the last chunk) is cut once.
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5;x=y\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: t\r\n\r\n"
    for split in range(len(body) + 1):
        ours, theirs = socket.socketpair()
        _opened.append(ours)
        theirs.sendall(body[split:])
        theirs.close()
        response = Response(Connection(ours), head + body[:split])
        assert _body(response) == b"hello 0123456789", split
        assert response.reusable, split


def test_http_1_0_without_keep_alive_is_not_reused() -> None:
    response = _response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert _body(response) == b"ok"
    assert not response.reusable


@pytest.mark.parametrize("raw", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
])
def test_malformed_heads_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        _response(raw)


def test_bad_chunk_size_is_a_protocol_error() -> None:
    response = _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n")
    with pytest.raises(ProtocolError, match="chunk header"):
        _body(response)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly part",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
])
def test_a_body_cut_short_is_a_connection_error(raw: bytes) -> None:
    response = _response(raw)
    with pytest.raises(ConnectionError):
        _body(response)
    assert not response.reusable


class _Cut(bytes):
    """An answer after which the server closes the connection."""


class _Upstream:
    """A loopback server answering the n-th request with `answer(request, n)`, one thread a
    client: None closes the connection without answering, a `_Cut` closes it after answering."""

    def __init__(self, answer: Callable[[bytes, int], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.hangups = 0  # connections the client closed
        self.listener = socket.create_server(("127.0.0.1", 0))
        _opened.append(self.listener)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                for request in _requests(client):
                    self.requests.append(request)
                    reply = self.answer(request, len(self.requests))
                    if reply is None:
                        return
                    client.sendall(reply)
                    if isinstance(reply, _Cut):
                        return
            except ConnectionResetError:  # closed by the client with an answer unread
                pass
            self.hangups += 1


def _requests(client: socket.socket) -> Iterator[bytes]:
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = client.recv(65536)
            if not data:
                return
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(buffer) < length:
            buffer += client.recv(65536)
        yield head + b"\r\n\r\n" + buffer[:length]
        buffer = buffer[length:]


@pytest.fixture()
def endpoint_to() -> Iterator[Callable[[int], Endpoint]]:
    endpoints: list[Endpoint] = []

    def make(port: int) -> Endpoint:
        endpoint = Endpoint("127.0.0.1", port, "/v1/chat/completions",
                            {"Authorization": "Bearer k"}, https=False, connect_timeout=5,
                            read_timeout=5)
        endpoints.append(endpoint)
        return endpoint

    yield make
    for endpoint in endpoints:
        endpoint.close_idle()


def test_request_head_and_keep_alive_reuse(endpoint_to: Callable[[int], Endpoint]) -> None:
    upstream = _Upstream(lambda request, n: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
    endpoint = endpoint_to(upstream.port)
    for expected in (b"1", b"2"):
        response = endpoint.post(b'{"x": 1}')
        assert _body(response) == expected
        endpoint.release(response)
    first = upstream.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{upstream.port}\r\n".encode() in first
    assert b"Authorization: Bearer k\r\n" in first
    assert first.endswith(b'Content-Length: 8\r\n\r\n{"x": 1}')
    assert len(endpoint._idle) == 1  # one connection served both


def test_interim_responses_are_skipped(endpoint_to: Callable[[int], Endpoint]) -> None:
    upstream = _Upstream(lambda request, n: b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    endpoint = endpoint_to(upstream.port)
    response = endpoint.post(b"{}")
    assert response.status == 200 and _body(response) == b"ok"
    endpoint.release(response)


def test_a_chunk_size_line_without_its_end_is_a_protocol_error() -> None:
    response = _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 2000)
    with pytest.raises(ProtocolError, match="chunk header"):
        _body(response)


def test_an_event_without_its_end_is_refused_before_it_fills_the_memory() -> None:
    parser = _EventParser()
    first = parser.feed(b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n')
    assert [delta.text for delta in first] == ["ok"]
    with pytest.raises(UpstreamError) as error:
        for _ in range(5):
            list(parser.feed(b"data: " + b"x" * (1 << 20)))
    assert error.value.code == "upstream_bad_response"


def test_a_pooled_connection_that_broke_mid_answer_is_not_tried_again(
    endpoint_to: Callable[[int], Endpoint],
) -> None:
    # The server began its answer, so it may have begun the work: sending the request again
    # could pay for it twice.
    upstream = _Upstream(
        lambda request, n: _Cut(b"HTTP/1.1 200 OK\r\nContent-Le") if n == 2
        else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    endpoint = endpoint_to(upstream.port)
    response = endpoint.post(b"{}")
    assert _body(response) == b"ok"
    endpoint.release(response)
    with pytest.raises(ConnectionError, match="mid-head"):
        endpoint.post(b"{}")
    assert len(upstream.requests) == 2


def _until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def _pool_a_connection(endpoint: Endpoint) -> None:
    """One exchange, read to its end: its connection stays idle in the pool."""
    response = endpoint.post(b"{}")
    _body(response)
    endpoint.release(response)
    assert len(endpoint._idle) == 1


def test_a_started_call_is_sent_before_its_answer_is_asked_for(
    endpoint_to: Callable[[int], Endpoint],
) -> None:
    upstream = _Upstream(lambda request, n: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    endpoint = endpoint_to(upstream.port)
    _pool_a_connection(endpoint)
    call = endpoint.start(b'{"n": 2}')
    assert _until(lambda: len(upstream.requests) == 2)
    assert upstream.requests[1].endswith(b'\r\n\r\n{"n": 2}')
    response = endpoint.answer(call)
    assert _body(response) == b"ok"
    endpoint.release(response)
    # Abandoned, a started call's connection is closed, so the upstream stops working on it.
    endpoint.abandon(endpoint.start(b"{}"))
    assert _until(lambda: upstream.hangups == 1)
    assert not endpoint._idle and not endpoint._active


def test_a_started_call_too_large_for_one_send_is_finished_by_its_answer(
    endpoint_to: Callable[[int], Endpoint],
) -> None:
    upstream = _Upstream(lambda request, n: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
    endpoint = endpoint_to(upstream.port)
    _pool_a_connection(endpoint)
    body = b"x" * (8 << 20)
    call = endpoint.start(body)
    assert 0 < call.sent < len(body)  # what the socket's buffer took, without waiting
    response = endpoint.answer(call)
    assert _body(response) == b"2"
    assert upstream.requests[1].endswith(b"\r\n\r\n" + body)


def test_a_stream_closed_before_its_first_item_closes_the_upstream_call() -> None:
    answer = (b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
              b"data: [DONE]\n\n")
    upstream = _Upstream(lambda request, n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(answer), answer))
    source = OpenAIUpstream(api_key="k", base_url=f"http://127.0.0.1:{upstream.port}/v1",
                            read_timeout=5, connect_timeout=5)
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "hello"}])
    assert [type(item).__name__ for item in source.stream(request)] == ["Delta", "Finish"]
    chunks = source.stream(request)  # sent at once on the pooled connection
    assert _until(lambda: len(upstream.requests) == 2)
    chunks.close()
    assert _until(lambda: upstream.hangups == 1)


@pytest.mark.parametrize("late_bytes", [True, False], ids=["arrived-unread", "silent"])
def test_only_a_silent_upstream_is_closed_not_a_late_reader(late_bytes: bool) -> None:
    # A worker busy elsewhere for longer than the read timeout must not turn bytes that have
    # arrived into `upstream_timeout`; an upstream that really sent nothing is closed.
    listener = socket.create_server(("127.0.0.1", 0))
    _opened.append(listener)

    def serve() -> None:
        client, _ = listener.accept()
        with client:
            next(_requests(client))
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
            time.sleep(0.2)
            if late_bytes:
                client.sendall(b"ok")
            time.sleep(3)

    threading.Thread(target=serve, daemon=True).start()
    endpoint = Endpoint("127.0.0.1", listener.getsockname()[1], "/v1/chat/completions", {},
                        https=False, connect_timeout=5, read_timeout=0.3)
    response = endpoint.post(b"{}")
    assert response.read() == b"ok"
    time.sleep(1.0)  # the worker busy: no greenlet runs, the bytes arrive unread
    gevent.sleep(0.5)  # the watchdog's turn
    if late_bytes:
        assert response.read() == b"ok"
    else:
        with pytest.raises(TimeoutError):
            response.read()
    endpoint.close_idle()
