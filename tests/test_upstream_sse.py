"""The upstream's event stream, decoded by the WHATWG rules: the spec's own examples and its
parsing steps as a table, each fed whole and split at every byte; then the OpenAI layer over a
real socket (a leading BOM, a bare `data` line, an empty `data:`, an upstream quiet after
[DONE])."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from relay.upstream import ChatRequest, Delta, Finish, UpstreamError
from relay.upstream.eventstream import EventDecoder, EventTooLarge
from relay.upstream.openai_compat import OpenAIUpstream

pytestmark = pytest.mark.timeout(30)

# (stream, the data of each event dispatched before its end)
SPEC = {
    # The spec's examples (9.2.4 and 9.2.6).
    "stock ticker": (b"data: YHOO\ndata: +2\ndata: 10\n\n", [b"YHOO\n+2\n10"]),
    "comment, ids, an unterminated last event": (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n", [b"first event", b"second event"]),
    "bare data lines": (b"data\n\ndata\ndata\n\ndata:", [b"", b"\n"]),
    "one space after the colon is dropped": (b"data:test\n\ndata: test\n\n", [b"test", b"test"]),
    # Its parsing steps.
    "only one leading space is dropped": (b"data:  x\n\n", [b" x"]),
    "empty data is an event with empty data": (b"data:\n\n", [b""]),
    "no data, no event": (b"event: add\nid: 7\nretry: 10\n\n\n\n", []),
    "comments only": (b":a\n:b\n\n", []),
    "other fields are not data": (b"database: x\ndata : y\nDATA: z\n\n", []),
    "a colon in the value": (b"data: a: b\n\n", [b"a: b"]),
    "CR line ends": (b"data: a\rdata: b\r\rdata: c\r\r", [b"a\nb", b"c"]),
    "CRLF line ends": (b"data: a\r\ndata: b\r\n\r\n", [b"a\nb"]),
    "mixed line ends": (b"data: a\n\r\ndata: b\r\rdata: c\r\n\n", [b"a", b"b", b"c"]),
    "a leading BOM is dropped": (b"\xef\xbb\xbfdata: a\n\n", [b"a"]),
    "only one leading BOM is dropped": (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
                                        [b"b"]),
    "a BOM later is data": (b"data: \xef\xbb\xbfa\n\n", [b"\xef\xbb\xbfa"]),
}


def _fed(stream: bytes, *cuts: int) -> list[bytes]:
    decoder = EventDecoder(1 << 20)
    events: list[bytes] = []
    at = 0
    for cut in (*cuts, len(stream)):
        events += decoder.feed(stream[at:cut])
        at = cut
    return events


@pytest.mark.parametrize(("stream", "expected"), SPEC.values(), ids=SPEC.keys())
def test_the_spec(stream: bytes, expected: list[bytes]) -> None:
    assert _fed(stream) == expected
    for cut in range(len(stream) + 1):  # a CRLF, a BOM, a field name cut between reads
        assert _fed(stream, cut) == expected, cut
    assert _fed(stream, *range(1, len(stream))) == expected  # a byte at a time


def test_a_stream_ending_mid_event_dispatches_it_at_the_end() -> None:
    # Divergence: end() is called only when the HTTP body ended by its own framing.
    decoder = EventDecoder(1 << 20)
    assert decoder.feed(b"data: a\n\ndata: b") == [b"a"]
    assert decoder.end() == [b"b"]
    assert EventDecoder(100).end() == []


def test_an_event_or_line_past_the_limit_is_refused() -> None:
    decoder = EventDecoder(10)
    assert decoder.feed(b"data: 0123456\n\n") == [b"0123456"]
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: 0123456789abc")
    decoder = EventDecoder(10)
    with pytest.raises(EventTooLarge):
        for _ in range(4):
            decoder.feed(b"data: 012\n")


# The OpenAI layer over a real socket.

def _chunk(content: str, finish: str | None = None) -> bytes:
    delta = f'{{"content": "{content}"}}' if content else "{}"
    reason = f'"{finish}"' if finish else "null"
    return (f'{{"choices": [{{"index": 0, "delta": {delta}, "finish_reason": {reason}}}]}}'
            .encode())


_ANSWER = (b"data: " + _chunk("Hel") + b"\n\ndata: " + _chunk("lo") + b"\n\ndata: "
           + _chunk("", "stop") + b"\n\ndata: [DONE]\n\n")


class _Upstream:
    """Answers every request with `head` and `body`, then keeps the connection open, silent,
    until the client closes it (`closed` is then set)."""

    def __init__(self, head: bytes, body: bytes) -> None:
        self.head, self.body = head, body
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        with client:
            received = b""
            while b"\r\n\r\n" not in received:
                received += client.recv(65536)
            client.sendall(self.head + self.body)
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            self.closed.set()


@pytest.fixture()
def answer() -> Iterator[type]:
    made: list[_Upstream] = []

    class Made(_Upstream):
        def __init__(self, head: bytes, body: bytes) -> None:
            super().__init__(head, body)
            made.append(self)

    yield Made
    for upstream in made:
        upstream.listener.close()


def _stream(upstream: _Upstream, read_timeout: float = 5) -> list[Delta | Finish]:
    source = OpenAIUpstream(api_key="k", base_url=f"http://127.0.0.1:{upstream.port}/v1",
                            read_timeout=read_timeout, connect_timeout=5)
    items: list[Delta | Finish] = []
    for item in source.stream(ChatRequest(model="m", messages=[])):
        items.append(item)
        if isinstance(item, Finish):
            break
    return items


_UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"

OPENAI = {
    "plain": _ANSWER,
    "a leading BOM": b"\xef\xbb\xbf" + _ANSWER,
    "a bare data line": b"data\n\n" + _ANSWER,
    "an empty data line": b"data:\n\n" + _ANSWER,
    "CR line ends": _ANSWER.replace(b"\n", b"\r"),
}


@pytest.mark.parametrize("body", OPENAI.values(), ids=OPENAI.keys())
def test_openai_events_by_the_spec(answer: type, body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert _stream(answer(head, body)) == [Delta("Hel"), Delta("lo"), Finish("stop", {})]


def test_an_upstream_quiet_after_done_in_a_body_until_close(answer: type) -> None:
    # The body ends when the connection does, and the upstream stays silent after [DONE]: the
    # answer is complete at [DONE], so it is not kept waiting for the close.
    upstream = answer(_UNTIL_CLOSE, _ANSWER)
    assert _stream(upstream) == [Delta("Hel"), Delta("lo"), Finish("stop", {})]


def test_an_upstream_quiet_after_done_in_a_chunked_body(answer: type) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = [event + b"\n\n" for event in _ANSWER.split(b"\n\n")[:-1]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
    upstream = answer(head, body)  # and no last chunk: the body has not ended
    assert _stream(upstream) == [Delta("Hel"), Delta("lo"), Finish("stop", {})]
    assert upstream.closed.wait(5)  # not reused: its body never ended


def test_done_without_a_finish_reason_is_not_a_complete_answer(answer: type) -> None:
    upstream = answer(_UNTIL_CLOSE, b"data: " + _chunk("Hel") + b"\n\ndata: [DONE]\n\n")
    with pytest.raises(UpstreamError) as error:
        _stream(upstream)
    assert error.value.code == "upstream_disconnected"
