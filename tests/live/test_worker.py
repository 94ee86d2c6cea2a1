"""The gunicorn worker itself: a busy keep-alive client cannot hold a worker while others wait,
and every response is framed whole."""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Callable

import httpx
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


def test_every_kind_of_response_is_framed_whole_on_one_keep_alive_connection(
    client: httpx.Client,
) -> None:
    # The worker sends a response's head with its first body bytes: a head with no body after
    # it, a body too large to carry the head, and a chunked stream must each still arrive
    # whole, or the next response on the same connection would not parse.
    page = client.head("/")
    assert page.status_code == 200 and int(page.headers["Content-Length"]) > 0
    assert page.content == b""
    prompt = "long " * 40_000  # a 200 KB conversation: far over what carries the head
    created = client.post("/new", json={"prompt": prompt, "model": "status:500"})
    assert created.status_code == 201
    ticket = created.json()
    conversation = client.get(f"/conversations/{ticket['conversation_id']}")
    assert conversation.status_code == 200
    assert conversation.json()["messages"][0]["content"] == prompt
    short = client.post("/new", json={"prompt": "framed whole"}).json()
    with client.stream("GET", short["stream_url"]) as stream:
        raw = b"".join(stream.iter_bytes())
    assert raw.startswith(b"retry:") and b"event: done" in raw and b'"completed"' in raw
    done_id = int(raw.rsplit(b"id: ", 1)[1].split(b"\n", 1)[0])
    ended = client.get(short["stream_url"], headers={"Last-Event-ID": str(done_id)})
    assert ended.status_code == 204 and ended.content == b""
    assert client.get("/healthz").status_code == 200


def _raw_request(
    port: int, request_line: str, framing: str, body: bytes,
    content_type: str = "application/json", cookie: str = "",
) -> bytes:
    """A request with the body framed by `framing`: a Content-Length or chunked; the head back."""
    if framing == "chunked":
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                          for part in (body[: len(body) // 2], body[len(body) // 2 :]))
        head = b"Transfer-Encoding: chunked\r\n\r\n"
        payload = framed + b"0\r\n\r\n"
    else:
        head, payload = b"Content-Length: %d\r\n\r\n" % len(body), body
    if cookie:
        head = b"Cookie: %s\r\n%s" % (cookie.encode(), head)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"%s HTTP/1.1\r\nHost: relay\r\nContent-Type: %s\r\n%s%s"
                     % (request_line.encode(), content_type.encode(), head, payload))
        return _read_response(sock)


def _raw_post_new(
    port: int, framing: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    return _raw_request(port, "POST /new", framing, body, content_type)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_is_read_whole_under_the_limit_and_refused_over_it(
    start_relay: Callable[..., RelayServer], framing: str, content_type: str
) -> None:
    # A declared length is read straight from the worker's input; werkzeug's guarded stream
    # stopped a chunked body at the limit without a word. Both framings, as JSON or as a form,
    # must store the whole prompt, and answer 413 once over the limit (never a cut prompt).
    relay = start_relay({"RELAY_MAX_PROMPT_BYTES": "4096"}, workers=1)

    def encode(prompt: str) -> bytes:
        if content_type == "application/json":
            return json.dumps({"prompt": prompt}).encode()
        return b"prompt=" + prompt.encode()

    prompt = "p" * 3000
    head = _raw_post_new(relay.port, framing, encode(prompt), content_type)
    assert head.startswith(b"HTTP/1.1 201"), head
    ticket_path = head.split(b"Location: ", 1)[1].split(b"\r\n", 1)[0].decode()
    cookie = head.split(b"Set-Cookie: ", 1)[1].split(b";", 1)[0].decode()
    ticket = httpx.get(f"http://127.0.0.1:{relay.port}/tickets/{ticket_path.rsplit('/', 1)[1]}",
                       headers={"Cookie": cookie}, timeout=30)
    conversation = httpx.get(
        f"http://127.0.0.1:{relay.port}/conversations/{ticket.json()['conversation_id']}",
        headers={"Cookie": cookie}, timeout=30,
    )
    assert conversation.json()["messages"][0]["content"] == prompt
    too_big = _raw_post_new(relay.port, framing, encode("p" * 5000), content_type)
    assert too_big.startswith(b"HTTP/1.1 413"), too_big
    assert httpx.get(f"http://127.0.0.1:{relay.port}/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_rename_is_read_whole_under_the_limit_and_refused_over_it(
    start_relay: Callable[..., RelayServer], framing: str
) -> None:
    # PATCH /conversations/<id> read its body through werkzeug's get_json, which stopped a
    # chunked body at the limit without a word: an oversized rename answered 400, not 413.
    relay = start_relay({"RELAY_MAX_PROMPT_BYTES": "4096"}, workers=1)
    base = f"http://127.0.0.1:{relay.port}"
    created = httpx.post(f"{base}/new", json={"prompt": "to be renamed"}, timeout=30)
    cookie = f"relay_session={created.cookies['relay_session']}"
    rename = f"PATCH /conversations/{created.json()['conversation_id']}"
    head = _raw_request(relay.port, rename, framing, json.dumps({"title": "Renamed"}).encode(),
                        cookie=cookie)
    assert head.startswith(b"HTTP/1.1 200"), head
    too_big = json.dumps({"title": "t" * 5000}).encode()
    head = _raw_request(relay.port, rename, framing, too_big, cookie=cookie)
    assert head.startswith(b"HTTP/1.1 413"), head
    listed = httpx.get(f"{base}/conversations", headers={"Cookie": cookie}, timeout=30)
    assert [c["title"] for c in listed.json()["conversations"]] == ["Renamed"]


def test_responses_carry_the_current_date(client: httpx.Client) -> None:
    # Over more than two seconds: a Date value kept too long would be two seconds old.
    for _ in range(4):
        sent = client.get("/healthz").headers["Date"]
        age = time.time() - email.utils.parsedate_to_datetime(sent).timestamp()
        assert 0 <= age < 2, sent
        time.sleep(0.7)
