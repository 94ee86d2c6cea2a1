"""The load generator's HTTP: a small gevent raw-socket HTTP/1.1 client that times streams.

One stream is one connection: relay's is `POST /new` then a GET of the `stream_url` it answers
on that keep-alive connection (the session cookie carried over, as a browser would), the
OpenAI-style targets' is one streaming `POST /v1/chat/completions`. A `Visitor` carries relay's
cookie from one stream to the next, as a browser does for every message after its first; a
target with an account's user signs its visitor in first, and one with an API key sends
`Authorization: Bearer` on `POST /new` and no cookie at all (its `stream_url` carries an
`access_token`, the path of a client that can only GET). Bodies are scanned as raw bytes (no SSE
parsing in Python), so the client stays cheap next to the servers it measures.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

from gevent import socket as gsocket

_RELAY_TOKEN = b'data: {"delta"'
_RELAY_DONE = b"event: done"
_OPENAI_DONE = b"data: [DONE]"


class HTTPError(Exception):
    """An unexpected status, a broken connection or a malformed response."""


@dataclass(frozen=True)
class Target:
    """A system under test: `kind` is `relay` (two steps) or `openai` (one streaming POST).

    A relay target may call as an account's user (`user`: name and password, signed in once per
    visitor) or with an API key (`api_key`), rather than as an open relay's anonymous visitor.
    """

    name: str
    host: str
    port: int
    kind: str
    path: str = "/v1/chat/completions"
    user: tuple[str, str] | None = field(default=None, repr=False)
    api_key: str = field(default="", repr=False)


@dataclass
class Visitor:
    """One browser's session cookie, kept from stream to stream; `cookies_issued` counts the
    streams that were answered with a new one (the first, as a new visitor)."""

    cookie: str = ""
    cookies_issued: int = 0


@dataclass
class StreamResult:
    ok: bool = False
    ttft: float = 0.0
    duration: float = 0.0
    tokens: int = 0
    max_gap: float = 0.0
    late_at: list[float] = field(default_factory=list)
    error: str | None = None
    error_at: float = 0.0


class Connection:
    """One keep-alive connection with a cookie jar of one session."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = gsocket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.cookie = ""

    def close(self) -> None:
        self.sock.close()

    def send(
        self, method: str, path: str, body: bytes = b"", ctype: str = "", api_key: str = ""
    ) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        if api_key:
            head += f"Authorization: Bearer {api_key}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        if self.cookie:
            head += f"Cookie: {self.cookie}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise HTTPError("connection closed by the server")
        return data

    def read_head(self) -> tuple[int, dict[str, str]]:
        """Read a status line and headers, keeping the session cookie."""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "set-cookie":
                self.cookie = value.strip().split(";", 1)[0]
            headers[name] = value.strip()
        return status, headers

    def read_body(self, headers: dict[str, str]) -> bytes:
        """Read a Content-Length body (the only kind the short answers use)."""
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self._recv()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body

    def request(
        self, method: str, path: str, body: bytes = b"", ctype: str = "", api_key: str = ""
    ) -> tuple[int, bytes]:
        self.send(method, path, body, ctype, api_key)
        status, headers = self.read_head()
        return status, self.read_body(headers)

    def stream_until(
        self, done: bytes, start: float, result: StreamResult, late_after: float, deadline: float
    ) -> bytes:
        """Read a streaming body until `done` and the blank line after it; time it into result."""
        body = bytearray(self.buf)
        self.buf.clear()
        last = time.monotonic()
        while True:
            if not result.ttft and b"data:" in body:
                result.ttft = time.monotonic() - start
            found = body.find(done)
            if found >= 0 and body.find(b"\n\n", found) >= 0:
                return bytes(body)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HTTPError("stream deadline passed")
            self.sock.settimeout(min(remaining, self.timeout))
            try:
                data = self._recv()
            except TimeoutError as exc:
                raise HTTPError("stream read timed out") from exc
            now = time.monotonic()
            gap = now - last
            result.max_gap = max(result.max_gap, gap)
            if late_after and gap > late_after:
                result.late_at.append(last)  # when the silence began
            last = now
            body += data


def relay_body(prompt: str, model: str) -> bytes:
    return json.dumps({"prompt": prompt, "model": model}).encode()


def openai_body(prompt: str, model: str) -> bytes:
    return json.dumps({
        "model": model, "stream": True, "messages": [{"role": "user", "content": prompt}],
    }).encode()


def create_ticket(conn: Connection, body: bytes, api_key: str = "") -> str:
    """POST /new on conn; returns the ticket's `stream_url`."""
    status, raw = conn.request("POST", "/new", body, "application/json", api_key)
    if status != 201:
        raise HTTPError(f"POST /new answered {status}: {raw[:200]!r}")
    stream_url = str(json.loads(raw)["stream_url"])
    if api_key and "?access_token=" not in stream_url:
        raise HTTPError(f"a key's stream_url carries no access_token: {stream_url!r}")
    return stream_url


def visitor_for(target: Target, timeout: float = 30.0) -> Visitor | None:
    """A returning visitor of `target` (signed in first when it has a user), or None for a
    target with an API key, which sends no cookie at all."""
    if target.api_key:
        return None
    visitor = Visitor()
    if target.user is not None:
        username, password = target.user
        conn = Connection(target.host, target.port, timeout=timeout)
        try:
            status, raw = conn.request("POST", "/auth/login", json.dumps(
                {"username": username, "password": password}).encode(), "application/json")
        finally:
            conn.close()
        if status != 200 or not conn.cookie:
            raise HTTPError(f"POST /auth/login answered {status}: {raw[:200]!r}")
        visitor.cookie = conn.cookie
    return visitor


def run_stream(
    target: Target, body: bytes, *, late_after: float = 0.0, deadline_s: float = 60.0,
    result: StreamResult | None = None, visitor: Visitor | None = None,
) -> StreamResult:
    """Open one stream through target on a fresh connection and read it to its end.

    `result` (default a new one) is filled in as the stream goes, so others can watch it live.
    `visitor` (default none: a new visitor each time) sends its cookie and keeps the one the
    server sets.
    """
    result = result or StreamResult()
    start = time.monotonic()
    deadline = start + deadline_s
    conn: Connection | None = None
    try:
        conn = Connection(target.host, target.port, timeout=deadline_s)
        if visitor is not None:
            conn.cookie = visitor.cookie
        if target.kind == "relay":
            stream_url = create_ticket(conn, body, target.api_key)
            if target.api_key:
                conn.cookie = ""  # a key's client keeps no cookie jar
            conn.send("GET", stream_url)
            done = _RELAY_DONE
        else:
            conn.send("POST", target.path, body, "application/json")
            done = _OPENAI_DONE
        status, _ = conn.read_head()
        if status != 200:
            raise HTTPError(f"stream answered {status}")
        raw = conn.stream_until(done, start, result, late_after, deadline)
        if target.kind == "relay":
            result.tokens = raw.count(_RELAY_TOKEN)
            result.ok = b'"completed"' in raw[raw.find(done) :]
        else:
            result.tokens = _openai_tokens(raw)
            result.ok = True
    except (OSError, HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.error_at = time.monotonic()
    finally:
        if conn is not None:
            conn.close()
            if visitor is not None and conn.cookie != visitor.cookie:
                visitor.cookie = conn.cookie
                visitor.cookies_issued += 1
    result.duration = time.monotonic() - start
    return result


def _openai_tokens(raw: bytes) -> int:
    """Chunks that carry text, whatever spacing the server's JSON encoder uses."""
    compact = raw.replace(b'"content": ', b'"content":')
    return compact.count(b'"content":"') - compact.count(b'"content":""')
