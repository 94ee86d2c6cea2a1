"""`LiveLog`: the newest encoded frames of a ticket being generated in this worker, which its
readers here stream from without a database read. Must not know the store or HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Committed frames a LiveLog keeps for readers that are behind (it holds up to twice this many);
# a reader further behind, or resuming from further back, reads the database.
KEEP_COMMITTED = 64


@dataclass(slots=True)
class LiveLog:
    """The newest encoded frames of a ticket being generated here: event ids dropped+1 ... count.

    Events up to `visible` are committed, and readers send no others, so every event a client has
    seen survives this worker's death. Only the newest committed frames are kept, so a long
    answer's memory stays bounded. `has_done` once the last frame is this producer's committed
    `done`; a log that `finished` without it (the claim was lost, the end could not be stored, or
    the ticket was deleted) sends its readers to the database.
    """

    frames: list[bytes] = field(default_factory=list)
    dropped: int = 0
    visible: int = 0
    finished: bool = False
    has_done: bool = False

    @property
    def count(self) -> int:
        """The id of the newest event (0 before the first)."""
        return self.dropped + len(self.frames)

    def append(self, frame: bytes) -> None:
        self.frames.append(frame)

    def read_after(self, last_seen: int) -> tuple[list[bytes], bool] | None:
        """The committed frames after event `last_seen` and whether they end with `done`; None
        when the reader must use the database (frames it needs were dropped, or `done` was
        written by someone else)."""
        if (self.finished and not self.has_done) or last_seen < self.dropped:
            return None
        frames = self.frames[last_seen - self.dropped : self.visible - self.dropped]
        return frames, self.has_done and last_seen + len(frames) == self.count

    def commit(self, upto: int) -> None:
        """Events up to id `upto` are committed; drop old committed frames, in batches."""
        self.visible = max(self.visible, upto)
        excess = self.visible - self.dropped - KEEP_COMMITTED
        if excess >= KEEP_COMMITTED:
            del self.frames[:excess]
            self.dropped += excess

    def end_here(self, done_frame_of: Callable[[int], bytes]) -> None:
        """End after the last committed event with a `done` nobody stored (the store refused
        it): frames never committed are dropped, never sent."""
        del self.frames[self.visible - self.dropped :]
        self.append(done_frame_of(self.visible + 1))
        self.commit(self.visible + 1)
        self.has_done = True
