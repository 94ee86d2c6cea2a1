"""Limits and usage on the chat page, in headless Chromium against a real relay with a small daily
token quota: a refusal says which limit and when to try again (or, for a request larger than the
whole quota, that it can never fit), a refused start offers Retry, and the usage panel shows what
GET /usage says."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from relay.estimate import count_prompt

from .browser_helpers import DESKTOP, ChatPage, axe_violations, page_errors
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
expect.set_options(timeout=10_000)

WORDS = 30
PROMPT = " ".join(["abcdef"] * WORDS)  # a token a word to the estimate; 3 characters a chunk
# Its claim reserves its prompt and an answer's cap of 1, which the fake upstream ignores: relay
# stops it after a chunk and charges what was reserved. It fits, and after it nothing is left.
QUOTA = count_prompt([{"role": "user", "content": PROMPT}]) + 1
LONG_PROMPT = " ".join(["abcdef"] * (QUOTA + 5))  # needs more than the whole quota
SMALL_PROMPT = "hi"  # the fake spends 7 and one token on it, 8 in all
# Fits the quota alone, not once the small answer spent its 8: refused at the claim.
MIDDLE_PROMPT = " ".join(["abcdef"] * (QUOTA - 8 - 8 + 1))


@pytest.fixture(scope="module")
def quota_relay(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    assert QUOTA - 8 < count_prompt([{"role": "user", "content": MIDDLE_PROMPT}]) + 1 <= QUOTA
    return start_relay({
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_TIMEOUT_SECONDS": "3",
        "RELAY_TOKENS_PER_DAY": str(QUOTA), "RELAY_DEFAULT_MAX_TOKENS_RESERVED": "1",
        "RELAY_MODEL_PRICES": '{"nousage": [1.0, 2.0]}',
    })


@pytest.fixture()
def tab(browser: Browser) -> Iterator[Page]:  # noqa: F811
    """A fresh profile (its own anonymous identity, so its own quota) that may run axe-core
    (injected inline, which the page's CSP rightly refuses) and must raise no uncaught error."""
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors = page_errors(page)
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def hours_to_midnight() -> float:
    return ((int(time.time()) // 86400 + 1) * 86400 - time.time()) / 3600


def assert_says_when(text: str) -> None:
    """`text` says to try again in the time left to the next UTC day, rounded up."""
    found = re.search(r"Daily token quota reached\. Try again in (\d+) (hour|minute|second)s?\.",
                      text)
    assert found, text
    count, unit = int(found[1]), found[2]
    left = hours_to_midnight()
    expected = {"hour": math.ceil(left), "minute": math.ceil(left * 60),
                "second": math.ceil(left * 3600)}[unit]
    assert abs(count - expected) <= 1, (text, left)


def refused_start(chat: ChatPage, prompt: str) -> Locator:
    """Send `prompt`, whose start the relay refuses: its answer, once shown refused."""
    answer = chat.send(prompt)
    chat.wait_status(answer, "refused")
    return answer


def figure(page: Page, name: str) -> int:
    text = page.locator(f'#usage-totals dd[data-figure="{name}"]').inner_text()
    return int(re.sub(r"[^\d]", "", text))


def test_a_used_up_quota_is_refused_with_when_to_try_again_and_usage_matches(
    tab: Page, quota_relay: RelayServer
) -> None:
    chat = ChatPage(tab).open(quota_relay.url + "/")
    first = chat.send(PROMPT)
    chat.wait_status(first, "completed")
    assert chat.text_of(first) == PROMPT[:3]  # the chunk within its cap
    posted: list[int] = []
    tab.on("response", lambda r: posted.append(r.status) if r.url.endswith("/new") else None)
    tab.fill("#prompt", "one more, please")  # not chat.send: no answer stays to wait for
    tab.press("#prompt", "Enter")
    refusal = tab.locator("#messages .refusal")
    expect(refusal).to_be_visible()
    assert posted == [429]
    expect(refusal).to_have_attribute("data-code", "quota_exceeded")
    assert_says_when(refusal.locator(".refusal-title").inner_text())
    expect(refusal.locator(".refusal-detail")).to_contain_text("nothing is left")
    expect(tab.locator("#prompt")).to_have_value("one more, please")
    expect(chat.messages).to_have_count(2)  # nothing was stored or shown for the refused one
    expect(tab.locator("#send")).to_be_visible()
    assert axe_violations(tab) == []

    shown = tab.request.get(quota_relay.url + "/usage").json()
    tab.click("#open-usage")
    panel = tab.locator("#usage-dialog")
    expect(panel).to_be_visible()
    expect(panel).to_have_attribute("data-loaded", "true")
    totals = shown["totals"]
    # Stopped at its cap before the upstream's report: the reservation, estimated.
    assert totals["total_tokens"] == QUOTA and totals["estimated"] is True
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "tickets"):
        assert figure(tab, name) == totals[name], name
    [day] = shown["by_day"]
    expect(panel.locator("#usage-days tr")).to_have_count(1)
    cells = panel.locator("#usage-days tr td").all_inner_texts()
    assert cells[:2] == [day["day"], "echo"]
    assert [int(re.sub(r"[^\d]", "", cell)) for cell in cells[2:]] == [
        day["prompt_tokens"], day["completion_tokens"], day["total_tokens"]]
    assert day["completion_tokens"] == 1
    expect(panel.locator("#usage-cost-column")).to_be_hidden()  # no prices configured
    expect(panel.locator("#usage-estimated-note")).to_be_visible()
    limits = shown["limits"]["user"]
    assert (limits["tokens_per_day"], limits["used_today"]) == (QUOTA, QUOTA)
    today = panel.locator('dd[data-figure="tokens-today"]')
    expect(today).to_have_text(f"{QUOTA} of {QUOTA} used, 0 left")
    expect(panel.locator('dd[data-figure="tokens-this-month"]')).to_have_text("No limit")
    assert axe_violations(tab) == []
    panel.locator(".panel-close").click()
    expect(panel).to_be_hidden()
    expect(tab.locator("#open-usage")).to_be_focused()


def test_a_start_refused_at_the_claim_says_why_and_retries(
    tab: Page, quota_relay: RelayServer
) -> None:
    # The pre-check passes (some is left); the claim cannot reserve the prompt: the page's
    # EventSource fails unread, the ticket stays pending, and the page reads why.
    streams: list[str] = []
    chat = ChatPage(tab).open(quota_relay.url + "/")
    chat.wait_status(chat.send(SMALL_PROMPT), "completed")
    tab.click("#new-chat")
    expect(chat.messages).to_have_count(0)
    tab.on("request", lambda r: streams.append(r.method) if "/sse/" in r.url else None)
    answer = refused_start(chat, MIDDLE_PROMPT)
    error = answer.locator(".error")
    expect(error).to_contain_text("Could not start: Daily token quota reached.")
    assert_says_when(error.inner_text().removeprefix("Could not start: "))
    expect(error).to_contain_text("needs up to")
    ticket = answer.get_attribute("data-ticket")
    assert tab.request.get(f"{quota_relay.url}/tickets/{ticket}").json()["status"] == "pending"
    expect(answer.locator(".regenerate")).to_be_hidden()
    retry = answer.locator(".retry-start")
    expect(retry).to_be_visible()
    expect(tab.locator("#send")).to_be_visible()
    assert axe_violations(tab) == []
    opened = len(streams)
    assert opened >= 2  # the EventSource, then the fetch that read the 429
    retry.click()
    chat.wait_status(answer, "refused")
    assert len(streams) >= opened + 2
    assert tab.request.get(f"{quota_relay.url}/tickets/{ticket}").json()["status"] == "pending"
    usage = tab.request.get(quota_relay.url + "/usage").json()
    assert usage["totals"]["tickets"] == 1 and usage["limits"]["user"]["reserved"] == 0


def test_a_start_that_can_never_fit_the_quota_says_so(
    tab: Page, quota_relay: RelayServer
) -> None:
    # More than the whole quota: no Retry-After, and the page shows the relay's sentence,
    # not a time to come back.
    answer = refused_start(ChatPage(tab).open(quota_relay.url + "/"), LONG_PROMPT)
    error = answer.locator(".error")
    expect(error).to_contain_text(
        f"Could not start: This request can never fit your daily token quota ({QUOTA})")
    expect(error).to_contain_text("send a shorter one")
    assert "Try again" not in error.inner_text()
    ticket = answer.get_attribute("data-ticket")
    assert tab.request.get(f"{quota_relay.url}/tickets/{ticket}").json()["status"] == "pending"
    usage = tab.request.get(quota_relay.url + "/usage").json()
    assert usage["totals"]["tickets"] == 0 and usage["limits"]["user"]["reserved"] == 0
    assert axe_violations(tab) == []


def test_estimated_figures_are_marked_and_a_price_gives_a_cost(
    tab: Page, quota_relay: RelayServer
) -> None:
    chat = ChatPage(tab).open(quota_relay.url + "/")
    chat.add_model_option("nousage")  # never reports usage: the relay estimates
    chat.wait_status(chat.send("hello there", model="nousage"), "completed")
    shown = tab.request.get(quota_relay.url + "/usage").json()
    totals = shown["totals"]
    assert totals["estimated"] is True and totals["cost"] > 0
    tab.click("#open-usage")
    panel = tab.locator("#usage-dialog")
    expect(panel).to_have_attribute("data-loaded", "true")
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        dd = panel.locator(f'#usage-totals dd[data-figure="{name}"]')
        expect(dd.locator(".estimated")).to_contain_text("≈")
        assert figure(tab, name) == totals[name], name
    expect(panel.locator("#usage-estimated-note")).to_be_visible()
    cost = panel.locator('#usage-totals dd[data-figure="cost"]').inner_text()
    assert float(cost.replace("$", "")) == pytest.approx(totals["cost"])
    expect(panel.locator("#usage-cost-column")).to_be_visible()
    [day] = shown["by_day"]
    row = panel.locator("#usage-days tr td")
    expect(row).to_have_count(6)
    assert float(row.nth(5).inner_text().replace("$", "")) == pytest.approx(day["cost"])
    expect(row.nth(4).locator(".estimated")).to_have_count(1)
    assert axe_violations(tab) == []
