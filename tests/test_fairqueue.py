"""The queue's policy (`fairqueue.fair_order`): round-robin by owner, counting what each owner
already runs, ties by age."""

from __future__ import annotations

import pytest

from relay.fairqueue import fair_order

CASES = [
    # (queued as (id, owner, queued_at), running per owner, expected order)
    ([], {}, []),
    ([("a1", "A", 1.0), ("a2", "A", 2.0)], {}, ["a1", "a2"]),
    # One user's batch first in time does not block the others: they take turns.
    ([("a1", "A", 1.0), ("a2", "A", 2.0), ("a3", "A", 3.0), ("b1", "B", 4.0), ("c1", "C", 5.0)],
     {}, ["a1", "b1", "c1", "a2", "a3"]),
    # What an owner already runs counts: A runs two, so B and C go before A's next.
    ([("a3", "A", 3.0), ("a4", "A", 4.0), ("b1", "B", 5.0), ("c1", "C", 6.0)],
     {"A": 2}, ["b1", "c1", "a3", "a4"]),
    ([("a3", "A", 3.0), ("b1", "B", 5.0), ("b2", "B", 7.0)], {"A": 1, "B": 0},
     ["b1", "a3", "b2"]),
    # Same rank: the older first, whatever order the rows come in.
    ([("b1", "B", 2.0), ("a1", "A", 1.0)], {}, ["a1", "b1"]),
    # Same rank and time: by id, so every worker computes the same order.
    ([("y", "B", 1.0), ("x", "A", 1.0)], {}, ["x", "y"]),
    # An owner with nothing queued but much running changes nothing for the others.
    ([("b1", "B", 1.0)], {"A": 5}, ["b1"]),
]


@pytest.mark.parametrize(("queued", "running", "expected"), CASES)
def test_fair_order(queued: list[tuple[str, str, float]], running: dict[str, int],
                    expected: list[str]) -> None:
    assert fair_order(queued, running) == expected


def test_positions_fall_as_the_queue_is_served() -> None:
    queued = [(f"a{n}", "A", float(n)) for n in range(5)] + [("b", "B", 9.0)]
    running = {"A": 2}
    order = fair_order(queued, running)
    assert order.index("b") == 0
    # Serve the first: it runs, the rest move up by one.
    served = order[0]
    rest = [row for row in queued if row[0] != served]
    assert fair_order(rest, {"A": 2, "B": 1}) == order[1:]
