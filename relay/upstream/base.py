"""What every upstream yields: text deltas, then exactly one Finish, or an UpstreamError."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ErrorCode


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request as relay stores and forwards it."""

    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int | None = None

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> ChatRequest:
        """Rebuild a request from the JSON stored on a ticket."""
        return cls(
            model=stored["model"],
            messages=stored["messages"],
            temperature=stored.get("temperature"),
            max_tokens=stored.get("max_tokens"),
        )


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finish:
    finish_reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)


Chunks = Generator[Delta | Finish, None, None]
"""What `Upstream.stream` returns: a generator, so that closing it closes the upstream call."""


class UpstreamError(Exception):
    """The upstream failed; `code` and `message` go into the ticket's `done` event as is."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Upstream(Protocol):
    """A source of chat completions. `stream` is called in the claiming request's greenlet: it
    may send the request at once but must neither wait nor raise (failures come out of the
    iterator). Closing the iterator must close the upstream call, even before its first item."""

    def stream(self, request: ChatRequest) -> Chunks: ...

    def models(self) -> list[str]: ...
