"""Decoding a server-sent event stream into its events' data, by the WHATWG rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

Pure: bytes in, each dispatched event's data out, no I/O. Linear in the bytes fed: only the new
bytes are scanned, and an unfinished line is kept as pieces until its end arrives.

Intentional divergences (do not fix):
- Only `data` is kept: `event`, `id` and `retry` are read and dropped (a chat completion stream
  has one kind of event and is never resumed). Bytes are not decoded to text here: the data goes
  to a JSON parser, which decodes it.
- `end()` dispatches an event the stream ended without its blank line, where the spec discards
  it: it is called only when the HTTP body ended by its own framing, not when a connection broke.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"


class EventTooLarge(ValueError):
    """An event, or a line, grew past the decoder's limit without its end."""


class EventDecoder:
    """Feed it a stream's bytes as they arrive; it returns the data of each completed event."""

    __slots__ = ("_limit", "_partial", "_partial_size", "_data", "_data_size", "_after_cr",
                 "_start")

    def __init__(self, limit: int) -> None:
        self._limit = limit  # bytes one event may hold before its end
        self._partial: list[bytes] = []  # the unfinished last line, in pieces
        self._partial_size = 0
        self._data: list[bytes] = []  # the current event's data lines
        self._data_size = 0
        self._after_cr = False  # the last feed ended in CR: an LF starting the next is its pair
        self._start: bytes | None = b""  # the stream's first bytes until a BOM is ruled out

    def feed(self, received: bytes) -> list[bytes]:
        """The data of each event that `received` completes, in order."""
        if self._start is not None:
            received = self._start + received
            if len(received) < len(_BOM) and _BOM.startswith(received):
                self._start = received
                return []
            self._start = None
            if received.startswith(_BOM):
                received = received[len(_BOM) :]
        if self._after_cr:
            self._after_cr = False
            if received.startswith(b"\n"):
                received = received[1:]
        if not received:
            return []
        self._after_cr = received.endswith(b"\r")
        if b"\r" in received:  # every line end becomes LF
            received = received.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if (not self._partial and not self._data and received.startswith(b"data: ")
                and received.endswith(b"\n\n") and received.count(b"\n") == 2):
            return [received[6:-2]]  # the usual read: one whole one-line event
        lines = received.split(b"\n")
        last = lines.pop()
        if not lines:
            self._keep_partial(last)
            return []
        if self._partial:
            lines[0] = b"".join(self._partial) + lines[0]
            self._partial, self._partial_size = [], 0
        events: list[bytes] = []
        for line in lines:
            self._line(line, events)
        if last:
            self._keep_partial(last)
        return events

    def end(self) -> list[bytes]:
        """The stream ended: the data of an event it ended without a blank line, if any."""
        events: list[bytes] = []
        if self._partial:
            self._line(b"".join(self._partial), events)
            self._partial, self._partial_size = [], 0
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:  # a blank line dispatches the event, if it has data
            if self._data:
                events.append(b"\n".join(self._data))
                self._data, self._data_size = [], 0
        elif line.startswith(b"data"):
            if len(line) == 4:  # `data` without a colon: an empty value
                value = b""
            elif line[4:5] == b":":
                value = line[6:] if line[5:6] == b" " else line[5:]
            else:
                return  # another field, such as `database`
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self._limit:
                raise EventTooLarge(f"an event of more than {self._limit} bytes")
        # anything else is a comment (`:`) or a field relay does not use

    def _keep_partial(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size + self._data_size > self._limit:
            raise EventTooLarge(f"an event of more than {self._limit} bytes")
