"""Clients that send or read too slowly, or not at all, hold nothing for long and stop nobody:
a trickled request body or head, a reader that never reads, thousands of idle connections."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from ..helpers import new_ticket, read_stream, text_of
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(90)

READ_TIMEOUT = 1  # RELAY_CLIENT_READ_TIMEOUT_SECONDS of the relay below
WRITE_TIMEOUT = 1  # RELAY_CLIENT_WRITE_TIMEOUT_SECONDS
PATIENCE = 20.0  # how long a test client waits for the relay to close on it


@pytest.fixture(scope="module")
def relay_1w(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """One worker, so the slow clients and the user who must not notice them share it."""
    return start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo",
        "RELAY_CLIENT_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
        "RELAY_CLIENT_WRITE_TIMEOUT_SECONDS": str(WRITE_TIMEOUT),
        "RELAY_CANCEL_ON_DISCONNECT": "true", "RELAY_DISCONNECT_GRACE_SECONDS": "0",
        "RELAY_MAX_PROMPT_BYTES": str(16 * 1024 * 1024),
    }, workers=1)


def _connect(relay: RelayServer, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:  # before connecting, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", relay.port))
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the relay sends until it closes the connection (fails if it does not)."""
    sock.settimeout(PATIENCE)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the relay kept the connection open; received {received[:200]!r}")
    except ConnectionResetError:
        pass
    return received


def _answer_flows(relay: RelayServer, prompt: str) -> None:
    """Another user's whole turn: POST /new, then the stream to `done`."""
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        ticket = new_ticket(http, prompt)
        events = read_stream(http, ticket["stream_url"])
    assert text_of(events) == prompt and events[-1][2]["status"] == "completed"


def _streams_open(relay: RelayServer) -> float:
    text = httpx.get(relay.url + "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("relay_streams_open"))
    return float(line.split()[-1])


def test_a_trickled_body_gets_408_and_is_closed_while_others_stream(relay_1w: RelayServer) -> None:
    body = json.dumps({"prompt": "never finished"}).encode()
    sock = _connect(relay_1w)
    sock.sendall(b"POST /new HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    for byte in body[:5]:  # a trickle, then nothing: the next byte would come in a minute
        sock.sendall(bytes([byte]))
        time.sleep(0.05)
    _answer_flows(relay_1w, "streams flow while a body trickles in")
    answer = _until_closed(sock)
    sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert "Traceback" not in relay_1w.log()


def test_a_trickled_request_head_is_closed(relay_1w: RelayServer) -> None:
    sock = _connect(relay_1w)
    sock.sendall(b"POST /new HTTP/1.1\r\nHost: relay\r\nX-Slow")
    _answer_flows(relay_1w, "streams flow while a head trickles in")
    assert _until_closed(sock) == b""  # gunicorn's keepalive bounds a head: closed unanswered
    sock.close()


def test_a_reader_that_never_reads_is_dropped_and_its_slot_released(
    relay_1w: RelayServer, upstream: FakeUpstream
) -> None:
    tag = uuid.uuid4().hex[:12]
    # 1,000 chunks of 6 kB, 10 ms apart: more than loopback's socket buffers take (~3 MB
    # here), and generation still goes on when they are full and the write times out.
    prompt = tag + "x" * 6_000_000
    with httpx.Client(base_url=relay_1w.url, timeout=30) as http:
        ticket = new_ticket(http, prompt, model="echo:10")
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        with _stalled_reader(relay_1w, ticket["stream_url"], cookie):
            _answer_flows(relay_1w, "streams flow while a reader stalls")
            deadline = time.monotonic() + PATIENCE
            while _streams_open(relay_1w) > 0:
                assert time.monotonic() < deadline, "the stalled reader still holds its stream"
                time.sleep(0.1)
            call = upstream.calls_with(tag)[0]
            # The last reader left, as by a disconnect: RELAY_CANCEL_ON_DISCONNECT applies.
            assert call.ended.wait(PATIENCE) and call.disconnected and not call.completed
        body = http.get(f"/tickets/{ticket['id']}").json()
    assert body["status"] == "cancelled"
    assert "Traceback" not in relay_1w.log()


def test_idle_connections_and_slowloris_do_not_stop_a_turn(relay_1w: RelayServer) -> None:
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(_connect(relay_1w)) for _ in range(2000)]
        for index in range(100):
            partial = stack.enter_context(_connect(relay_1w))
            partial.sendall(b"POST /new HTTP/1.1\r\nHost: relay\r\n" if index % 2 else
                            b"POST /new HTTP/1.1\r\nHost: relay\r\nContent-Length: 999\r\n\r\n{")
        _answer_flows(relay_1w, f"one turn past {len(idle)} idle and 100 partial requests")
    _answer_flows(relay_1w, "and after they are gone")


@contextlib.contextmanager
def _stalled_reader(relay: RelayServer, url: str, cookie: str) -> Iterator[socket.socket]:
    """A GET of the stream from a client that reads its response head and then nothing."""
    sock = _connect(relay, receive_buffer=4096)
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: relay\r\nCookie: {cookie}\r\n\r\n".encode())
    assert sock.recv(12) == b"HTTP/1.1 200"  # and nothing more is read from here on
    try:
        yield sock
    finally:
        sock.close()
