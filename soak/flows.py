"""What one soak client does with one ticket, chosen at random: read it to `done`, leave and
resume at a random id, read it from several connections at once, cancel it, abandon it, or go on
to a next turn in its conversation. Every request and every event seen is kept on its `Ticket`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import gevent

from .client import ClientError, Read, read_stream, request_json

FAULT_WEIGHTS = {
    "ok": 40, "noise": 8, "429": 3, "500": 3, "503": 2, "drop": 8, "hang": 3, "hanghead": 2,
    "malformed": 4, "bytes": 3, "array": 3, "framing": 4, "longline": 1, "errevent": 4,
    "truncated": 4,
}
ACTION_WEIGHTS = {
    "read": 30, "resume": 25, "fanout": 15, "cancel": 12, "cancel_pending": 5, "abandon": 8,
    "turns": 5,
}
SMALL = 16 * 1024  # most prompts are under this; the rest reach up to the limit
_ALPHABET = ("abcdefghijklmnopqrstuvwxyz" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     "
             + ".,;:!?'\"\\/<>{}[]()=+-*&%$#@\n\téèüßçøåæœ€£¥→←∀∃世界你好こんにちは🙂🚀👍🏽")


@dataclass
class Ticket:
    """One ticket the soak created (or tried to): what it asked for and everything it saw."""

    marker: str
    model: str
    fault: str
    body_bytes: int
    action: str
    id: str | None = None
    conversation: str | None = None
    cookie: str = ""
    create_status: int = 0
    create_error: dict[str, Any] | None = None
    cancel_statuses: list[int] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def cancel_asked(self) -> bool:
        return bool(self.cancel_statuses)


@dataclass
class Soak:
    """What every flow shares: the relay's port, the limits, the tickets made so far."""

    port: int
    limit: int
    big_share: float
    timeout: float
    faults: dict[str, int]
    pool: str = field(repr=False)
    tickets: list[Ticket] = field(default_factory=list, repr=False)

    def flow(self, rng: random.Random, forced_bytes: int | None = None) -> None:
        """Make one ticket and do one randomly chosen thing with it."""
        action = rng.choices(list(ACTION_WEIGHTS), list(ACTION_WEIGHTS.values()))[0]
        ticket = self._create(rng, action, forced_bytes)
        if ticket.id is None:
            return
        try:
            self._act(rng, ticket, action)
        except (ClientError, OSError) as exc:
            ticket.errors.append(f"{action}: {exc}")

    def _create(self, rng: random.Random, action: str, forced_bytes: int | None,
                conversation: str | None = None, cookie: str = "") -> Ticket:
        fault = rng.choices(list(self.faults), list(self.faults.values()))[0]
        over = forced_bytes is None and conversation is None and rng.random() < 0.005
        if forced_bytes is not None:
            target = forced_bytes
        elif over:
            target = self.limit + rng.randint(1, 4096)
        else:
            target = self._size(rng, SMALL if conversation else self.limit)
        marker = f"[soak:{len(self.tickets):07d}]"
        ticket = Ticket(marker, "", fault, 0, "refused" if over else action, cookie=cookie)
        self.tickets.append(ticket)
        chars = max(1, target)
        pieces = max(rng.randint(1, 64), -(-chars // 65536))
        n = rng.randint(0, pieces)
        ms = 0 if rng.random() < 0.4 else rng.randint(100, 3000)
        ticket.model = f"soak-{fault}:{n}:{pieces}:{ms}"
        body = self._body(rng, marker, ticket.model, target, conversation)
        ticket.body_bytes = len(body)
        try:
            ticket.create_status, answer, ticket.cookie = request_json(
                self.port, "POST", "/new", cookie, raw=body, timeout=self.timeout)
        except (ClientError, OSError) as exc:
            ticket.create_error = {"client": f"no answer: {exc}"}
            return ticket
        if ticket.create_status == 201:
            ticket.id = answer["id"]
            ticket.conversation = answer.get("conversation_id")
        else:
            ticket.create_error = answer.get("error")
        return ticket

    def _size(self, rng: random.Random, limit: int) -> int:
        low, high = (SMALL, limit) if rng.random() < self.big_share else (1, min(SMALL, limit))
        return int(math.exp(rng.uniform(math.log(low), math.log(high))))

    def _body(self, rng: random.Random, marker: str, model: str, target: int,
              conversation: str | None) -> bytes:
        """A JSON body of exactly `target` bytes (when that is above its minimum)."""
        start = rng.randrange(len(self.pool))
        filler = (self.pool[start:] + self.pool * (target // len(self.pool) + 1))[:target]
        fields: dict[str, Any] = {"model": model}
        if conversation:
            fields["conversation_id"] = conversation

        def encode(text: str) -> bytes:
            return json.dumps({**fields, "prompt": marker + " " + text},
                              ensure_ascii=False).encode()

        body = encode(filler)
        while len(body) > target and filler:
            raw = filler.encode()
            filler = raw[: max(0, len(raw) - (len(body) - target))].decode("utf-8", "ignore")
            body = encode(filler)
        if len(body) < target:
            body = encode(filler + "x" * (target - len(body)))
        return body

    def _act(self, rng: random.Random, ticket: Ticket, action: str) -> None:
        if action == "read":
            self._read_to_done(rng, ticket)
        elif action == "resume":
            self._read_to_done(rng, ticket, leaves=rng.randint(1, 3))
        elif action == "fanout":
            readers = [gevent.spawn(self._read_to_done, rng, ticket, rng.randint(0, 1))
                       for _ in range(rng.randint(2, 3))]
            gevent.joinall(readers, raise_error=True)
        elif action == "cancel":
            reader = gevent.spawn(self._read_to_done, rng, ticket)
            gevent.sleep(rng.uniform(0, 1.5))
            self._cancel(ticket)
            reader.get()
        elif action == "cancel_pending":
            self._cancel(ticket)
            self._read_to_done(rng, ticket)
        elif action == "abandon":
            self._read(ticket, 0, rng.randint(0, 5), rng.random() < 0.5)
        elif action == "turns":
            self._read_to_done(rng, ticket)
            for _ in range(rng.randint(1, 3)):
                follow = self._create(rng, "turns", None, ticket.conversation, ticket.cookie)
                if follow.id is None:
                    return
                self._read_to_done(rng, follow)

    def _read_to_done(self, rng: random.Random, ticket: Ticket, leaves: int = 0) -> None:
        """Read to `done`, first leaving `leaves` times after a few events and coming back at a
        random id no later than the last one seen; sometimes ask once more after `done`."""
        after = 0
        for _ in range(leaves):
            read = self._read(ticket, after, rng.randint(0, 8), rng.random() < 0.3)
            if read.done or read.status != 200 or read.error:
                return
            seen = read.events[-1][0] if read.events else after
            after = rng.randint(0, seen)
            gevent.sleep(rng.uniform(0, 0.3))
        read = self._read(ticket, after, None, False)
        if read.done and rng.random() < 0.3:
            self._read(ticket, read.events[-1][0], None, False)  # must be 204

    def _read(self, ticket: Ticket, after: int, stop_after: int | None, reset: bool) -> Read:
        assert ticket.id is not None
        read = read_stream(self.port, ticket.id, ticket.cookie, after, stop_after=stop_after,
                           reset=reset, timeout=self.timeout)
        ticket.reads.append(read)
        return read

    def _cancel(self, ticket: Ticket) -> None:
        status, _, _ = request_json(self.port, "POST", f"/sse/{ticket.id}/cancel", ticket.cookie,
                                    timeout=self.timeout)
        ticket.cancel_statuses.append(status)


def make_pool(rng: random.Random, size: int = 1 << 18) -> str:
    """Random text to cut prompts from: mixed scripts, quotes, backslashes, breaks, emoji."""
    return "".join(rng.choices(_ALPHABET, k=size))
