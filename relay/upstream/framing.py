"""An HTTP/1.1 response's framing, read from one connection: status, head, and a body that ends
exactly where its framing says (RFC 9112 sections 4 to 7), so that a reused connection starts
with the next response and nothing else.

Hand-written rather than h11 by measurement: h11's event per chunk cost a quarter of relay's
tokens per CPU-second (bench/README.md, 2026-12-03); tests/test_upstream_framing.py holds the
cases it is proven against. Strict where leniency would let a response's end be misread: one
Transfer-Encoding, exactly `chunked`; Content-Length values identical and digits only, never
with a Transfer-Encoding; chunk sizes hex digits only; each chunk followed by CRLF; bytes after
the end rule the connection out. Lenient where RFC 9112 lets a client be: an obsolete folded
line continues its header. Must not know sockets, pools, SSE or JSON.
"""

from __future__ import annotations

import re
from typing import Protocol

_MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 1024  # a chunk's size in hex, and any extensions
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_HEX = b"0123456789abcdefABCDEF"


class ProtocolError(ValueError):
    """The upstream's response is not valid HTTP/1.1 framing."""


class Source(Protocol):
    """Where a response's bytes come from: a connection."""

    def recv(self) -> bytes: ...

    def recv_arrived(self) -> bytes | None: ...


class _NothingYet(Exception):
    """No bytes have arrived (in `read_arrived`, which never waits)."""


class Response:
    """A response's status and framing; `read()` returns its body's bytes as they arrive."""

    __slots__ = ("conn", "status", "chunked", "length", "keep_alive", "complete", "_pending",
                 "_left", "_trailing", "_nowait", "_broken")

    def __init__(self, conn: Source, received: bytes) -> None:
        """The response whose first bytes are `received`: reads the rest of its head."""
        self.conn = conn
        self._nowait = False
        self._trailing = False  # bytes came after the response's end
        self._broken: ProtocolError | None = None  # met after bytes still to be returned
        while True:
            head, received = self._head(received)
            version, status, fields = _parse_head(head)
            if not 100 <= status < 200:
                break  # else an interim response: the final one follows
        self.status = status
        self.chunked, length = _body_framing(fields)
        if status in (204, 304):
            length = 0
        self.length = length
        connection = {t.strip() for t in b",".join(fields.get(b"connection", [])).split(b",")}
        self.keep_alive = (b"close" not in connection
                           and (version == b"1" or b"keep-alive" in connection)
                           and (self.chunked or length is not None))
        self.complete = length == 0
        self._pending = received  # received, not yet returned
        # Chunked: payload bytes still to come in the current chunk, then its CRLF (2 more);
        # with a Content-Length: body bytes still to come.
        self._left = 0 if length is None else length
        if self.complete and received:
            self._trailing = True

    @property
    def reusable(self) -> bool:
        """Read to its end, nothing after it, and the server keeps the connection open."""
        return self.complete and self.keep_alive and not self._trailing

    def read(self) -> bytes:
        """The body's next bytes as they arrive, b"" once it has all been read."""
        if self.complete:
            return b""
        if self._broken is not None:
            raise self._broken
        if self.chunked:
            return self._read_chunked()
        data, self._pending = self._pending or self._recv(), b""
        if self.length is None:  # the body ends when the connection does
            self.complete = not data
            return data
        if not data:
            raise ConnectionError("the upstream closed the connection mid-body")
        if len(data) > self._left:
            data, self._trailing = data[: self._left], True
        self._left -= len(data)
        self.complete = self._left == 0
        return data

    def read_arrived(self) -> None:
        """Read and drop the rest of the body as far as it has arrived, without waiting: if its
        end is here, the connection can be reused."""
        self._nowait = True
        try:
            while self.read():
                pass
        except (_NothingYet, ProtocolError, OSError):
            pass  # not complete: not reused
        finally:
            self._nowait = False

    def _recv(self) -> bytes:
        if not self._nowait:
            return self.conn.recv()
        received = self.conn.recv_arrived()
        if received is None:
            raise _NothingYet
        return received

    def _head(self, received: bytes) -> tuple[bytes, bytes]:
        """The next head (without its blank line) and the bytes after it."""
        while (end := received.find(b"\r\n\r\n")) < 0:
            if len(received) > _MAX_HEAD:
                raise ProtocolError("the upstream's response head is too large")
            data = self._recv()
            if not data:
                raise ConnectionError("the upstream closed the connection mid-head")
            received += data
        return received[:end], received[end + 4 :]

    def _read_chunked(self) -> bytes:
        """Decode from all the bytes at hand: one recv often holds dozens of chunks, an event
        each, and the caller wants them in one piece. Walked by offset: slicing off each chunk
        copied the rest of the buffer, once per chunk."""
        pending, left, at = self._pending, self._left, 0
        payload: list[bytes] = []
        while True:
            end = len(pending)
            try:
                at, left = self._decode(pending, at, end, left, payload)
            except ProtocolError as exc:
                if not payload:
                    raise
                # What came before the bad framing is the upstream's answer: returned now, the
                # error at the next read.
                self._broken, self._pending = exc, b""
                return b"".join(payload)
            if self.complete:
                return b"".join(payload)
            pending, at = pending[at:], 0
            if payload:
                self._pending, self._left = pending, left
                return b"".join(payload)
            received = self._recv()
            if not received:
                raise ConnectionError("the upstream closed the connection mid-body")
            pending += received

    def _decode(
        self, pending: bytes, at: int, end: int, left: int, payload: list[bytes]
    ) -> tuple[int, int]:
        """Walk `pending` from `at`, appending chunk payload; returns where it stopped and what
        is left of the current chunk (sets `complete` at the last chunk)."""
        while at < end:
            if left > 2:
                take = min(left - 2, end - at)
                payload.append(pending[at : at + take])
                at += take
                left -= take
            elif left == 2 and pending.startswith(b"\r\n", at):  # the chunk's CRLF
                at += 2
                left = 0
            elif left:  # the chunk's CRLF, split between reads
                skipped = min(left, end - at)
                if pending[at : at + skipped] != b"\r\n"[2 - left : 2 - left + skipped]:
                    raise ProtocolError("a chunk not followed by CRLF")
                at += skipped
                left -= skipped
            else:
                line_end = pending.find(b"\n", at)
                if line_end < 0:
                    if end - at > _MAX_CHUNK_LINE:
                        raise ProtocolError("a chunk header without its end")
                    break
                size = _chunk_size(pending[at:line_end])
                at = line_end + 1
                if size == 0:
                    self._trailing = bool(self._skip_trailers(pending[at:]))
                    self.complete, self._pending = True, b""
                    return at, 0
                left = size + 2
        return at, left

    def _skip_trailers(self, pending: bytes) -> bytes:
        """Read the trailer section after the last chunk, up to its blank line; the bytes after
        it."""
        size = 0
        while True:
            while b"\n" not in pending:
                if len(pending) > _MAX_HEAD:
                    raise ProtocolError("the upstream's trailers are too large")
                received = self._recv()
                if not received:
                    raise ConnectionError("the upstream closed the connection in the trailers")
                pending += received
            line, _, pending = pending.partition(b"\n")
            if line == b"\r":
                return pending
            size += len(line)
            if not line.endswith(b"\r") or b":" not in line or size > _MAX_HEAD:
                raise ProtocolError("a malformed trailer")


def _parse_head(head: bytes) -> tuple[bytes, int, dict[bytes, list[bytes]]]:
    """The minor version, status and fields (lower-case names, each value of each line)."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    fields: dict[bytes, list[bytes]] = {}
    values: list[bytes] | None = None
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # an obsolete fold: the line continues the field
            if values is None:
                raise ProtocolError("a folded line before any header")
            values[-1] = values[-1] + b" " + line.strip(b" \t")
            continue
        name, colon, value = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        values = fields.setdefault(name.lower(), [])
        values.append(value.strip(b" \t"))
    return status_line[1], int(status_line[2]), fields


def _body_framing(fields: dict[bytes, list[bytes]]) -> tuple[bool, int | None]:
    """Chunked or not, and the Content-Length if any (RFC 9112 6.3)."""
    codings = fields.get(b"transfer-encoding")
    lengths = fields.get(b"content-length")
    if codings is not None:
        if lengths is not None:
            # A sign of request smuggling or response splitting: "ought to be handled as an
            # error".
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if len(codings) > 1 or codings[0].lower() != b"chunked":
            raise ProtocolError(f"unsupported Transfer-Encoding: {b', '.join(codings)[:40]!r}")
        return True, None
    if lengths is None:
        return False, None
    found = {value.strip(b" \t") for line in lengths for value in line.split(b",")}
    if len(found) != 1 or _CONTENT_LENGTH.fullmatch(value := found.pop()) is None:
        raise ProtocolError(f"bad Content-Length: {b', '.join(lengths)[:40]!r}")
    return False, int(value)


def _chunk_size(line: bytes) -> int:
    digits = line[:-1]
    if line.endswith(b"\r") and 0 < len(digits) <= 16 and not digits.translate(None, _HEX):
        return int(digits, 16)  # the usual size line, faster than the pattern
    size = _CHUNK_SIZE.fullmatch(line)
    if size is None:
        raise ProtocolError(f"bad chunk header: {line[:40]!r}")
    return int(size[1], 16)
