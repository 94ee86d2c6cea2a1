"""The upstream queue on the chat page, in headless Chromium: an answer waiting for the model
says where it waits (in a status region), then streams once a slot is free; axe-clean."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from ..helpers import new_ticket
from .browser_helpers import ChatPage, axe_violations
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer
from .test_browser_usage import tab  # noqa: F401 (a fresh profile that may run axe-core)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def test_a_queued_answer_shows_how_many_are_ahead_then_streams(
    tab: Page, start_relay: Callable[..., RelayServer], upstream: FakeUpstream,  # noqa: F811
) -> None:
    relay = start_relay({
        "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_MAX_CONCURRENCY": "1",
    })
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=relay.url, timeout=30) as other:
        # Someone else's answer holds the one slot; a third user's waits first.
        holding = new_ticket(other, f"{tag} holds the slot", model="stall:1")
        with other.stream("GET", holding["stream_url"]) as response:
            assert response.status_code == 200
        deadline = time.monotonic() + 10
        while not upstream.calls_with(f"{tag} holds"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.Client(base_url=relay.url, timeout=30) as third:  # a third user's turn first
            ahead = new_ticket(third, f"{tag} waits first", model="stall:1")
            with third.stream("GET", ahead["stream_url"]) as response:
                assert response.status_code == 200
            ahead_cookies = dict(third.cookies)

        chat = ChatPage(tab).open(relay.url + "/")
        answer = chat.send(f"{tag} my question")
        note = answer.locator(".queue-note")
        expect(note).to_have_text("Waiting for the model: 1 ahead")
        expect(note).to_have_attribute("role", "status")
        chat.wait_status(answer, "waiting")
        assert axe_violations(tab) == []

        assert other.post(f"/sse/{holding['id']}/cancel").status_code == 202
        expect(note).to_have_text("Waiting for the model: next")
        cancel = httpx.post(f"{relay.url}/sse/{ahead['id']}/cancel", cookies=ahead_cookies)
        assert cancel.status_code == 202
    chat.wait_status(answer, "completed")
    expect(note).to_be_hidden()
    assert chat.text_of(answer) == f"{tag} my question"
    assert axe_violations(tab) == []
