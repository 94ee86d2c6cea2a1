"""The chat page in headless Chromium against a real relay and the fault-injecting upstream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from .browser_helpers import (
    DESKTOP,
    PHONE,
    ChatPage,
    SeveringProxy,
    axe_violations,
    header,
    page_errors,
)
from .fake_upstream import FakeUpstream, UpstreamCall
from .relay_server import RelayServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]
expect.set_options(timeout=10_000)


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile per test: its own cookie, so its own anonymous identity."""
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture()
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab that must raise no uncaught error and fetch nothing but the relay (works offline)."""
    tab = context.new_page()
    errors = page_errors(tab)
    urls: list[str] = []
    tab.on("request", lambda request: urls.append(request.url))
    yield tab
    assert not errors, f"uncaught errors in the page: {errors}"
    foreign = [u for u in urls if not u.startswith(("http://127.0.0.1:", "data:"))]
    assert not foreign, f"the page fetched from outside the relay: {foreign}"


@pytest.fixture()
def chat(page: Page, relay: RelayServer) -> ChatPage:
    return ChatPage(page).open(relay.url + "/")


def marker() -> str:
    return uuid.uuid4().hex[:10]


def wait_for_call(upstream: FakeUpstream, tag: str, timeout: float = 10.0) -> UpstreamCall:
    """The upstream call whose last message contains `tag`, once it has arrived."""
    deadline = time.monotonic() + timeout
    while not (calls := upstream.calls_with(tag)):
        assert time.monotonic() < deadline, f"the upstream never received {tag!r}"
        time.sleep(0.05)
    return calls[-1]


def words(tag: str, count: int) -> str:
    """A prompt whose every segment is distinct, so a duplicated piece would show."""
    return " ".join(f"{tag}{i:03d}" for i in range(count))


def test_prompt_streams_token_by_token_with_a_cursor(chat: ChatPage) -> None:
    prompt = words(f"s{marker()}-", 40)
    answer = chat.send(prompt, model="echo:30")
    chat.wait_status(answer, "streaming")
    expect(answer.locator(".cursor")).to_be_visible()
    expect(chat.page.locator("#stop")).to_be_visible()
    expect(chat.page.locator("#send")).to_be_hidden()
    expect(answer.locator(".content")).to_have_attribute("aria-busy", "true")
    partial = chat.text_of(answer)
    assert 0 < len(partial) < len(prompt)
    chat.wait_status(answer, "completed")
    assert chat.text_of(answer) == prompt
    expect(answer.locator(".cursor")).to_have_count(0)
    expect(answer.locator(".content")).to_have_attribute("aria-busy", "false")
    expect(chat.page.locator("#messages")).to_have_attribute("aria-live", "polite")
    expect(chat.page.locator("#send")).to_be_visible()
    assert chat.conversation_titles() == [prompt[:60] + "…"]


def test_multi_turn_context_reaches_upstream_survives_reload_and_regenerates(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    tag = marker()
    first = chat.send(f"first {tag}", model="echo")
    chat.wait_status(first, "completed")
    second = chat.send(f"second {tag}")
    chat.wait_status(second, "completed")
    call = upstream.calls_with(f"second {tag}")[-1]
    assert [(m["role"], m["content"]) for m in call.messages] == [
        ("user", f"first {tag}"), ("assistant", f"first {tag}"), ("user", f"second {tag}"),
    ]

    chat.page.reload()
    chat.wait_ready()
    expect(chat.messages).to_have_count(4)
    assert chat.messages.locator(".content").all_inner_texts() == [
        f"first {tag}", f"first {tag}", f"second {tag}", f"second {tag}",
    ]

    expect(chat.answers.nth(0).locator(".regenerate")).to_be_hidden()
    replaced = chat.answers.nth(1).get_attribute("data-ticket")
    chat.answers.nth(1).locator(".regenerate").click()
    expect(chat.page.locator(f'[data-ticket="{replaced}"]')).to_have_count(0)
    chat.wait_status(chat.answers.nth(1), "completed")
    expect(chat.messages).to_have_count(4)
    calls = upstream.calls_with(f"second {tag}")
    assert len(calls) == 2
    assert calls[-1].messages == call.messages


def test_stop_ends_the_stream_and_closes_the_upstream_call(
    page: Page, relay: RelayServer, upstream: FakeUpstream
) -> None:
    # On the two-worker `relay`, a cancel that lands on the other worker is only noticed at the
    # producer's next lease renewal (LEASE_SECONDS / 3), after that relay's 3 s upstream timeout.
    chat = ChatPage(page).open(relay.url + "/")
    tag = marker()
    answer = chat.send(f"stop me {tag}", model="stall:2")
    chat.wait_status(answer, "streaming")
    chat.page.click("#stop")
    chat.wait_status(answer, "cancelled", timeout=10_000)
    expect(answer.locator(".note")).to_have_text("Stopped.")
    call = upstream.calls_with(tag)[-1]
    assert call.ended.wait(10), "the upstream call was never closed"
    assert call.disconnected and not call.completed
    assert chat.text_of(answer) == f"stop me {tag}"[:6]
    expect(chat.page.locator("#send")).to_be_visible()


def test_waiting_state_then_stop_before_the_first_token(
    page: Page, relay: RelayServer, upstream: FakeUpstream
) -> None:
    chat = ChatPage(page).open(relay.url + "/")
    chat.add_model_option("stall:0")  # a model that never sends a token
    tag = marker()
    answer = chat.send(f"wait {tag}", model="stall:0")
    chat.wait_status(answer, "waiting")
    expect(answer.locator(".note")).to_have_text("Waiting for the model…")
    call = wait_for_call(upstream, tag)
    page.keyboard.press("Escape")
    chat.wait_status(answer, "cancelled", timeout=10_000)
    expect(answer.locator(".note")).to_have_text("Stopped before any text arrived.")
    assert call.ended.wait(10) and call.disconnected
    page.reload()
    chat.wait_ready()
    expect(chat.answers.last).to_have_attribute("data-status", "cancelled")
    expect(chat.answers.last.locator(".regenerate")).to_be_visible()


def test_dropped_connection_resumes_without_duplicated_text(
    page: Page, relay: RelayServer
) -> None:
    proxy = SeveringProxy(relay.port)
    try:
        chat = ChatPage(page).open(proxy.url + "/")
        prompt = words(f"d{marker()}-", 60)
        answer = chat.send(prompt, model="echo:30")
        chat.wait_status(answer, "streaming")
        page.wait_for_function(
            "n => document.querySelector('#messages .message.assistant .content')"
            ".innerText.length > n", arg=60,
        )
        assert proxy.sever() > 0
        chat.wait_status(answer, "reconnecting", timeout=5_000)
        expect(answer.locator(".note")).to_contain_text("Reconnecting")
        chat.wait_status(answer, "completed", timeout=30_000)
        assert chat.text_of(answer) == prompt
        resumed = [header(h, "Last-Event-ID") for h in proxy.heads_for("/sse/")]
        assert resumed[0] is None and len(resumed) >= 2, resumed
        assert int(resumed[1] or 0) > 0, resumed
    finally:
        proxy.close()


def test_an_http_error_on_the_stream_is_recovered_from(chat: ChatPage) -> None:
    # EventSource gives up on an HTTP error (it only retries network errors); the page then
    # checks GET /tickets/<id> and opens a new EventSource from its last event id.
    refused: list[str] = []

    def refuse_first(route: Route) -> None:
        if refused:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.fulfill(status=503, content_type="application/json",
                          body='{"error": {"code": "unavailable", "message": "try later"}}')

    chat.page.route("**/sse/*", refuse_first)
    prompt = words(f"h{marker()}-", 10)
    answer = chat.send(prompt, model="echo")
    chat.wait_status(answer, "reconnecting", timeout=5_000)
    chat.wait_status(answer, "completed")
    assert chat.text_of(answer) == prompt
    assert len(refused) == 1


def test_reload_mid_answer_reattaches_to_the_running_ticket(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    prompt = words(f"r{marker()}-", 40)
    answer = chat.send(prompt, model="echo:30")
    chat.wait_status(answer, "streaming")
    chat.page.reload()
    chat.wait_ready()
    answer = chat.answers.last
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".cursor")).to_be_visible()
    chat.wait_status(answer, "completed")
    assert chat.text_of(answer) == prompt
    expect(chat.messages).to_have_count(2)
    assert len(upstream.calls_with(prompt)) == 1


def test_markdown_is_sanitised_and_code_is_highlighted_with_a_copy_button(
    chat: ChatPage, context: BrowserContext
) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    prompt = (
        "**bold** text\n\n"
        "<script>window.__pwned = 1</script>\n"
        '<img src="x" onerror="window.__pwned = 2">\n\n'
        "[click](javascript:window.__pwned=3)\n\n"
        "```python\nprint('hi')\n```\n"
    )
    answer = chat.send(prompt, model="echo")
    chat.wait_status(answer, "completed")
    content = answer.locator(".content")
    expect(content.locator("strong")).to_have_text("bold")
    expect(content.locator("script")).to_have_count(0)
    expect(content.locator("[onerror]")).to_have_count(0)
    expect(content.locator("a[href^='javascript']")).to_have_count(0)
    assert chat.page.evaluate("window.__pwned") is None
    user_bubble = chat.messages.first.locator(".content")
    expect(user_bubble).to_contain_text("<script>window.__pwned = 1</script>")
    code = content.locator(".code-block pre code")
    expect(code).to_have_class("language-python hljs")
    expect(code.locator(".hljs-built_in")).to_have_text("print")
    copy = content.locator(".code-block .copy-code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert chat.page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("status:500", "The upstream failed (HTTP 500)"),
        ("status:429", "rate limiting"),
    ],
)
def test_upstream_failure_shows_its_message(chat: ChatPage, model: str, message: str) -> None:
    answer = chat.send(f"fail {marker()}", model=model)
    chat.wait_status(answer, "failed", timeout=30_000)
    expect(answer.locator(".error")).to_be_visible()
    expect(answer.locator(".error")).to_contain_text(message)
    expect(answer.locator(".regenerate")).to_be_visible()
    expect(chat.page.locator("#send")).to_be_visible()


def test_conversations_can_be_created_switched_renamed_and_deleted(chat: ChatPage) -> None:
    tag = marker()
    chat.wait_status(chat.send(f"alpha {tag}", model="echo"), "completed")
    chat.page.click("#new-chat")
    expect(chat.messages).to_have_count(0)
    expect(chat.page.locator("#empty-state")).to_be_visible()
    chat.wait_status(chat.send(f"beta {tag}"), "completed")
    expect(chat.page.locator("#conversation-list li")).to_have_count(2)
    assert chat.conversation_titles() == [f"beta {tag}", f"alpha {tag}"]

    chat.page.click(f"text=alpha {tag}")
    expect(chat.messages.first.locator(".content")).to_have_text(f"alpha {tag}")
    expect(chat.page.locator("#chat-title")).to_have_text(f"alpha {tag}")

    alpha = chat.page.locator("#conversation-list li", has_text=f"alpha {tag}")
    alpha.locator(".rename").click()
    chat.page.fill(".rename-input", "Renamed chat")
    chat.page.press(".rename-input", "Enter")
    expect(chat.page.locator("#chat-title")).to_have_text("Renamed chat")
    expect(chat.page.locator("#conversation-list")).to_contain_text("Renamed chat")

    beta = chat.page.locator("#conversation-list li", has_text=f"beta {tag}")
    beta.locator(".delete").click()
    dialog = chat.page.locator("#confirm-delete")
    expect(dialog).to_be_visible()
    dialog.locator("button[value=delete]").click()
    expect(chat.page.locator("#conversation-list li")).to_have_count(1)

    chat.page.reload()
    chat.wait_ready()
    assert chat.conversation_titles() == ["Renamed chat"]
    expect(chat.messages).to_have_count(2)


def test_keyboard_only_enter_sends_and_shift_enter_adds_a_line(chat: ChatPage) -> None:
    page = chat.page
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator("#prompt")).to_have_value("line one\nline two")
    expect(chat.messages).to_have_count(0)
    page.keyboard.press("Enter")
    answer = chat.answers.first
    chat.wait_status(answer, "completed")
    expect(chat.messages.first.locator(".content")).to_have_text("line one\nline two")
    expect(page.locator("#prompt")).to_have_value("")
    expect(page.locator("#prompt")).to_be_focused()
    # Tab reaches the answer's actions, and the conversation list is reachable too.
    focused = set()
    for _ in range(12):
        page.keyboard.press("Shift+Tab")
        focused.add(page.evaluate("document.activeElement.className"))
    assert any("regenerate" in name for name in focused), focused
    assert any("conversation-link" in name for name in focused), focused


@pytest.mark.parametrize(("viewport", "scheme"), [(DESKTOP, "light"), (PHONE, "dark")])
def test_no_accessibility_violations(
    browser: Browser, relay: RelayServer, viewport: dict[str, int], scheme: str
) -> None:
    # bypass_csp: axe-core is injected as an inline script, which the page's CSP rightly refuses.
    context = browser.new_context(viewport=viewport, color_scheme=scheme, bypass_csp=True)
    try:
        chat = ChatPage(context.new_page()).open(relay.url + "/")
        assert axe_violations(chat.page) == []
        answer = chat.send("**Hi** there\n\n```python\nprint(1)\n```\n", model="echo")
        chat.wait_status(answer, "completed")
        assert axe_violations(chat.page) == []
        chat.send("fail", model="status:500")
        chat.wait_status(chat.answers.last, "failed", timeout=30_000)
        assert axe_violations(chat.page) == []
    finally:
        context.close()


def test_phone_layout_and_dark_theme(browser: Browser, relay: RelayServer) -> None:
    context = browser.new_context(viewport=PHONE, color_scheme="dark", has_touch=True)
    try:
        page = context.new_page()
        chat = ChatPage(page).open(relay.url + "/")
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#menu-toggle")).to_be_visible()
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(33, 33, 33)"
        chat.wait_status(chat.send("x " * 200, model="echo"), "completed")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.click("#menu-toggle")
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.locator("#menu-toggle")).to_have_attribute("aria-expanded", "true")
        expect(page.locator("#conversation-list li")).to_have_count(1)
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#menu-toggle")).to_be_focused()
    finally:
        context.close()
