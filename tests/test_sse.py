"""Byte-exact, table-driven tests of the pure SSE encoder and Last-Event-ID parser."""

from __future__ import annotations

import pytest

from relay import sse

ENCODE_CASES = [
    ({"data": "hello"}, b"data: hello\n\n"),
    ({"data": ""}, b"data: \n\n"),
    ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
    ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
    ({"data": "a\rb"}, b"data: a\ndata: b\n\n"),
    ({"data": "a\n\nb\n"}, b"data: a\ndata: \ndata: b\ndata: \n\n"),
    ({"data": "\r\n\r"}, b"data: \ndata: \ndata: \n\n"),
    ({"data": "x", "id": 7}, b"id: 7\ndata: x\n\n"),
    ({"data": "{}", "event": "done", "id": 3}, b"event: done\nid: 3\ndata: {}\n\n"),
    ({"retry": 2000}, b"retry: 2000\n\n"),
    ({"comment": "ping"}, b": ping\n\n"),
    ({"comment": "two\nlines"}, b": two\n: lines\n\n"),
    ({"comment": ""}, b":\n\n"),
    ({"data": "🎉 中文"}, "data: 🎉 中文\n\n".encode()),
    ({"data": "data: fake\nid: 9"}, b"data: data: fake\ndata: id: 9\n\n"),
    ({"data": " leading space"}, b"data:  leading space\n\n"),
]


@pytest.mark.parametrize(("kwargs", "expected"), ENCODE_CASES)
def test_encode(kwargs: dict, expected: bytes) -> None:
    assert sse.encode(**kwargs) == expected


def test_ping_is_a_comment() -> None:
    assert sse.PING == sse.encode(comment="ping")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"data": "x", "id": "1\n2"}, {"data": "x", "event": "a\rb"}, {"data": "x", "id": "\0"},
     {"retry": -1}],
)
def test_encode_rejects_what_cannot_be_framed(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sse.encode(**kwargs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), ("  ", None), ("0", 0), ("42", 42), (" 7 ", 7)],
)
def test_parse_last_event_id(raw: str | None, expected: int | None) -> None:
    assert sse.parse_last_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "1.0", "abc", "0x10", "١", "9" * 20, "1 2"])
def test_parse_last_event_id_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        sse.parse_last_event_id(raw)


def test_event_and_data_reads_back_the_blocks_relay_encodes() -> None:
    assert sse.event_and_data(sse.encode_json(b'{"delta": "a"}', id=3)) == (None, b'{"delta": "a"}')
    done = sse.encode('{"status": "completed"}', event="done", id=4)
    assert sse.event_and_data(done) == ("done", b'{"status": "completed"}')
    with pytest.raises(ValueError):
        sse.event_and_data(sse.PING)
