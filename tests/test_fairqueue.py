"""The queue's policy (`fairqueue.next_round`, `fair_order`): start-time fair queueing, so owners
take turns whatever the size of their batches; table-driven, and a simulation of the issue's
case (10, 1 and 1 tickets, two slots)."""

from __future__ import annotations

import pytest

from relay.fairqueue import fair_order, next_round


@pytest.mark.parametrize(("current", "owners_last", "expected"), [
    (0, None, 0),  # nothing of the owner's waits or runs: the current round
    (5, None, 5),
    (0, 0, 1),  # one after the owner's latest
    (3, 7, 8),
    (9, 2, 9),  # an owner's old round never puts it ahead of the current one
])
def test_next_round(current: int, owners_last: int | None, expected: int) -> None:
    assert next_round(current, owners_last) == expected


@pytest.mark.parametrize(("queued", "expected"), [
    ([], []),
    ([("a", 1, 1.0), ("b", 0, 2.0)], ["b", "a"]),  # by round first
    ([("b", 0, 2.0), ("a", 0, 1.0)], ["a", "b"]),  # then by age
    ([("y", 0, 1.0), ("x", 0, 1.0)], ["x", "y"]),  # then by id: every worker agrees
])
def test_fair_order(queued: list[tuple[str, int, float]], expected: list[str]) -> None:
    assert fair_order(queued) == expected


class _Queue:
    """The store's queue in memory, as `fairqueue.enqueue` and `claim_queued` change it."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.round = 0
        self.queued: list[tuple[str, int, float]] = []
        self.running: dict[str, int] = {}  # id: round
        self.started: list[str] = []
        self.clock = 0.0

    def owners_last(self, owner: str) -> int | None:
        rounds = [r for i, r, _ in self.queued if i[0] == owner]
        rounds += [r for i, r in self.running.items() if i[0] == owner]
        return max(rounds, default=None)

    def enqueue(self, ticket_id: str) -> None:
        self.clock += 1
        self.queued.append((ticket_id, next_round(self.round, self.owners_last(ticket_id[0])),
                            self.clock))
        self.dispatch()

    def finish(self, ticket_id: str) -> None:
        del self.running[ticket_id]
        self.dispatch()

    def dispatch(self) -> None:
        chosen = fair_order(self.queued)[: self.slots - len(self.running)]
        for row in [row for row in self.queued if row[0] in chosen]:
            self.queued.remove(row)
            self.running[row[0]] = row[1]
            self.round = max(self.round, row[1])
            self.started.append(row[0])

    def positions(self) -> dict[str, int]:
        return {ticket_id: n for n, ticket_id in enumerate(fair_order(self.queued), 1)}


def test_single_tickets_start_before_a_batchs_third() -> None:
    queue = _Queue(slots=2)
    for n in range(10):
        queue.enqueue(f"A{n}")
    queue.enqueue("B0")
    queue.enqueue("C0")
    assert queue.positions()["B0"] == 1 and queue.positions()["C0"] == 2
    # Even when both of A's running tickets end before anything else happens.
    queue.finish("A0")
    queue.finish("A1")
    while queue.running:
        queue.finish(next(iter(queue.running)))
    assert queue.started[:4] == ["A0", "A1", "B0", "C0"]
    assert queue.started[4:] == [f"A{n}" for n in range(2, 10)]


def test_owners_take_turns_and_positions_fall() -> None:
    queue = _Queue(slots=1)
    for n in range(3):
        queue.enqueue(f"A{n}")
    for n in range(3):
        queue.enqueue(f"B{n}")
    seen: list[int] = []
    while queue.running:
        if "B2" in queue.positions():
            seen.append(queue.positions()["B2"])
        queue.finish(next(iter(queue.running)))
    assert queue.started == ["A0", "B0", "A1", "B1", "A2", "B2"]
    assert seen == sorted(seen, reverse=True) and seen[-1] == 1
