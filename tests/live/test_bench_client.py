"""The benchmark's load generator against a real relay: a visitor's cookie carries over, as a
browser's does, so relay's measured streams are a returning visitor's."""

from __future__ import annotations

import pytest

from bench.client import Target, Visitor, relay_body, run_stream

from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)


def test_a_visitor_gets_one_cookie_and_sends_it_with_every_later_stream(
    relay: RelayServer,
) -> None:
    target = Target("relay", "127.0.0.1", relay.port, "relay")
    body = relay_body("hello there", "echo")
    visitor = Visitor()
    results = [run_stream(target, body, deadline_s=20, visitor=visitor) for _ in range(3)]
    assert all(r.ok and r.tokens > 0 and r.error is None for r in results), results
    assert "=" in visitor.cookie
    # Set once, by the first stream: the later two sent it back and were given no other.
    assert visitor.cookies_issued == 1

    other = Visitor()
    assert run_stream(target, body, deadline_s=20, visitor=other).ok
    assert other.cookies_issued == 1 and other.cookie != visitor.cookie
