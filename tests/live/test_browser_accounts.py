"""The chat page in accounts mode, in headless Chromium against real relays: sign-in and setup
screens, sign-out, the API keys and users panels, and streams ended by a sign-out elsewhere."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from .accounts import PASSWORD, bearer, new_user
from .browser_helpers import (
    DESKTOP,
    PHONE,
    ChatPage,
    axe_violations,
    page_errors,
    sign_in,
    wait_for_screen,
)
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def accounts_relay(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """A relay in accounts mode with two gevent workers, pointed at the fake upstream, whose
    operator made an admin with the CLI (so the page offers no first-admin set-up)."""
    relay = start_relay(accounts_env(upstream))
    new_user(relay, admin=True)
    return relay


@pytest.fixture()
def tabs(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open tabs, each in a fresh profile (its own cookies), that must raise no uncaught error."""
    contexts: list[tuple[BrowserContext, list[object]]] = []

    def open_tab(url: str, **options: object) -> Page:
        context = browser.new_context(**{"viewport": DESKTOP, **options})  # type: ignore[arg-type]
        context.set_default_timeout(15_000)
        page = context.new_page()
        contexts.append((context, page_errors(page)))
        page.goto(url)
        expect(page.locator("html")).to_have_attribute("data-ready", "true")
        return page

    yield open_tab
    for context, errors in contexts:
        context.close()
        assert not errors, f"uncaught errors in the page: {errors}"


def accounts_env(upstream: FakeUpstream) -> dict[str, str]:
    return {
        "RELAY_AUTH": "accounts", "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": upstream.base_url, "RELAY_DEFAULT_MODEL": "echo",
        "RELAY_UPSTREAM_TIMEOUT_SECONDS": "3",
    }


def signed_in(tabs: Callable[..., Page], relay: RelayServer, name: str, **options: object) -> Page:
    page = tabs(relay.url + "/", **options)
    wait_for_screen(page, "signin")
    sign_in(page, name, PASSWORD)
    wait_for_screen(page, "chat")
    return page


def wait_until_every_worker_knows(revoked_at: float) -> None:
    """Each worker trusts a credential it looked up for the rest of that second (SecondCache),
    so a revocation holds everywhere one second after it was answered: wait that out."""
    time.sleep(max(0.0, revoked_at + 1.1 - time.monotonic()))


def key_status(relay: RelayServer, key: str) -> int:
    return httpx.get(relay.url + "/v1/models", headers=bearer(key), timeout=10).status_code


def wait_key_status(relay: RelayServer, key: str, status: int, timeout: float = 10.0) -> None:
    """Credential caches may lag a revocation by a second or two, never more."""
    deadline = time.monotonic() + timeout
    while (got := key_status(relay, key)) != status:
        assert time.monotonic() < deadline, f"the key still answers {got}, not {status}"
        time.sleep(0.2)


def test_open_mode_shows_no_account_controls(
    tabs: Callable[..., Page], relay: RelayServer
) -> None:
    page = tabs(relay.url + "/")
    wait_for_screen(page, "chat")
    assert page.request.get(relay.url + "/auth/me").json()["auth"] == "open"
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#account")).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_focused()


def test_first_visit_creates_the_first_admin(
    tabs: Callable[..., Page], start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> None:
    relay = start_relay(accounts_env(upstream), workers=1)
    page = tabs(relay.url + "/", bypass_csp=True)
    wait_for_screen(page, "signin")
    expect(page.locator("#signin-title")).to_have_text("Create the first admin account")
    expect(page.locator("#signin-username")).to_be_focused()
    assert axe_violations(page) == []
    sign_in(page, "root", PASSWORD)
    wait_for_screen(page, "chat")
    expect(page.locator("#account-name")).to_have_text("root")
    expect(page.locator("#open-users")).to_be_visible()
    # Nobody can set the relay up a second time, and a new visitor gets the plain sign-in.
    again = tabs(relay.url + "/")
    wait_for_screen(again, "signin")
    expect(again.locator("#signin-title")).to_have_text("Sign in to relay")
    assert httpx.post(relay.url + "/auth/setup", json={"username": "x", "password": PASSWORD},
                      timeout=10).status_code == 409


def test_sign_in_chat_create_and_revoke_a_key_then_sign_out(
    tabs: Callable[..., Page], accounts_relay: RelayServer
) -> None:
    relay = accounts_relay
    name = new_user(relay)
    page = tabs(relay.url + "/")
    wait_for_screen(page, "signin")
    expect(page.locator("#app")).to_be_hidden()
    expect(page.locator("#signin-username")).to_be_focused()

    sign_in(page, name, "not the password")
    expect(page.locator("#signin-error")).to_have_text("Wrong username or password.")
    expect(page.locator("#signin-password")).to_be_focused()
    expect(page.locator("#signin-password")).to_have_value("")
    sign_in(page, name, PASSWORD)
    wait_for_screen(page, "chat")
    expect(page.locator("#account-name")).to_have_text(name)
    expect(page.locator("#open-users")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_focused()

    chat = ChatPage(page)
    prompt = f"hello {uuid.uuid4().hex[:8]}"
    answer = chat.send(prompt, model="echo")
    chat.wait_status(answer, "completed")
    assert chat.text_of(answer) == prompt

    page.click("#open-keys")
    panel = page.locator("#keys-dialog")
    expect(panel).to_be_visible()
    expect(panel.locator("#no-keys")).to_be_visible()
    page.fill("#key-name", "laptop script")
    page.fill("#key-expires", "30")
    page.press("#key-expires", "Enter")
    secret_box = page.locator("#new-key-value")
    expect(secret_box).to_be_focused()
    secret = secret_box.input_value()
    expect(panel.locator("#new-key")).to_contain_text("you will not see it again")
    row = panel.locator("#keys-list tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("laptop script")
    assert secret not in row.inner_text()
    assert key_status(relay, secret) == 200

    # Shown once: closing the panel forgets it, and reopening lists the key without it.
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(page.locator("#open-keys")).to_be_focused()
    page.keyboard.press("Enter")
    expect(row).to_have_count(1)
    expect(panel.locator("#new-key")).to_be_hidden()
    assert secret not in page.content()

    row.locator(".revoke").click()
    confirm = page.locator("#confirm-action")
    expect(confirm).to_be_visible()
    confirm.locator("button[value=confirm]").click()
    expect(row).to_contain_text("Revoked")
    expect(row.locator(".revoke")).to_have_count(0)
    expect(page.locator("#key-name")).to_be_focused()
    wait_key_status(relay, secret, 401)
    page.keyboard.press("Escape")

    page.click("#sign-out")
    wait_for_screen(page, "signin")
    expect(page.locator("#signin-status")).to_have_text("You have signed out.")
    expect(page.locator("#signin-username")).to_be_focused()
    expect(page.locator("#messages .message")).to_have_count(0)
    expect(page.locator("#conversation-list li")).to_have_count(0)
    page.reload()
    wait_for_screen(page, "signin")


def test_admin_creates_a_user_who_signs_in_and_is_then_disabled(
    tabs: Callable[..., Page], accounts_relay: RelayServer
) -> None:
    relay = accounts_relay
    admin = signed_in(tabs, relay, new_user(relay, admin=True))
    expect(admin.locator("#account-role")).to_be_visible()
    admin.click("#open-users")
    panel = admin.locator("#users-dialog")
    expect(panel.locator("#users-list tr").first).to_be_visible()
    name = f"u{uuid.uuid4().hex[:8]}"
    admin.fill("#user-name", name)
    admin.fill("#user-password", PASSWORD)
    admin.click("#user-form [type=submit]")
    row = panel.locator("#users-list tr", has_text=name)
    expect(row).to_contain_text("Active")
    expect(admin.locator("#user-name")).to_be_focused()

    user = signed_in(tabs, relay, name)
    expect(user.locator("#open-users")).to_be_hidden()
    chat = ChatPage(user)
    answer = chat.send(f"stalled {uuid.uuid4().hex[:8]}", model="stall:2")
    chat.wait_status(answer, "streaming")

    row.locator(".disable").click()
    admin.locator("#confirm-action button[value=confirm]").click()
    expect(row).to_contain_text("Disabled")
    disabled = time.monotonic()
    expect(row.locator(".disable")).to_have_count(0)

    # The disabled user's open stream ends within seconds and says why.
    chat.wait_status(answer, "cancelled", timeout=15_000)
    expect(answer.locator(".error")).to_be_visible()
    expect(answer.locator(".error")).not_to_be_empty()
    # Their next request finds no session and brings back the sign-in screen.
    wait_until_every_worker_knows(disabled)
    user.click("#new-chat")
    user.fill("#prompt", "anyone there?")
    user.press("#prompt", "Enter")
    wait_for_screen(user, "signin")
    expect(user.locator("#signin-status")).to_contain_text("session has ended")
    sign_in(user, name, PASSWORD)
    expect(user.locator("#signin-error")).to_have_text("Wrong username or password.")

    # Enabled again with a new password set in the panel, they sign in with that one.
    row.locator(".enable").click()
    expect(row).to_contain_text("Active")
    row.locator(".set-password").click()
    expect(admin.locator("#new-password")).to_be_focused()
    admin.keyboard.type("short")
    admin.keyboard.press("Enter")
    expect(admin.locator("#password-error")).to_contain_text("at least 8 characters")
    admin.fill("#new-password", PASSWORD + " renewed")
    admin.press("#new-password", "Enter")
    expect(admin.locator("#password-dialog")).to_be_hidden()
    expect(row.locator(".set-password")).to_be_focused()
    sign_in(user, name, PASSWORD + " renewed")
    wait_for_screen(user, "chat")
    expect(user.locator("#account-name")).to_have_text(name)


def test_a_sign_out_elsewhere_ends_the_stream_and_the_session(
    tabs: Callable[..., Page], accounts_relay: RelayServer
) -> None:
    relay = accounts_relay
    name = new_user(relay)
    first = signed_in(tabs, relay, name)
    second = signed_in(tabs, relay, name)
    chat = ChatPage(first)
    answer = chat.send(f"stalled {uuid.uuid4().hex[:8]}", model="stall:2")
    chat.wait_status(answer, "streaming")

    second.click("#sign-out")
    wait_for_screen(second, "signin")
    signed_out = time.monotonic()
    chat.wait_status(answer, "cancelled", timeout=15_000)
    expect(answer.locator(".error")).to_be_visible()
    expect(answer.locator(".error")).not_to_be_empty()
    expect(first.locator("#account-name")).to_have_text(name)  # the answer stays readable

    wait_until_every_worker_knows(signed_out)
    first.click("#open-keys")
    wait_for_screen(first, "signin")
    expect(first.locator("#keys-dialog")).to_be_hidden()
    expect(first.locator("#signin-status")).to_have_text("Your session has ended. Sign in again.")
    expect(first.locator("#signin-username")).to_be_focused()


def test_repeated_failures_say_when_to_retry(
    tabs: Callable[..., Page], start_relay: Callable[..., RelayServer], upstream: FakeUpstream
) -> None:
    # One worker: without Redis each worker counts failures on its own.
    relay = start_relay({**accounts_env(upstream), "RELAY_SIGNIN_ATTEMPTS": "3"}, workers=1)
    name = new_user(relay, admin=True)
    page = tabs(relay.url + "/")
    wait_for_screen(page, "signin")
    error = page.locator("#signin-error")
    statuses = []
    for attempt in range(4):
        with page.expect_response("**/auth/login") as response:
            sign_in(page, name, f"wrong {attempt}")
        statuses.append(response.value.status)
        if statuses[-1] == 429:
            break
        expect(error).to_have_text("Wrong username or password.")
    assert statuses == [401, 401, 401, 429], statuses
    expect(error).to_contain_text("Too many sign-in attempts. Try again in")


def test_keyboard_alone_signs_in_and_works_the_keys_panel(
    tabs: Callable[..., Page], accounts_relay: RelayServer
) -> None:
    relay = accounts_relay
    name = new_user(relay)
    page = tabs(relay.url + "/")
    wait_for_screen(page, "signin")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    wait_for_screen(page, "chat")
    expect(page.locator("#prompt")).to_be_focused()

    for _ in range(30):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.id") == "open-keys":
            break
    expect(page.locator("#open-keys")).to_be_focused()
    page.keyboard.press("Enter")
    panel = page.locator("#keys-dialog")
    expect(panel).to_be_visible()
    page.locator("#key-name").focus()
    page.keyboard.type("keyboard key")
    page.keyboard.press("Enter")
    expect(page.locator("#new-key-value")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#copy-key")).to_be_focused()
    for _ in range(10):
        page.keyboard.press("Tab")
        if "revoke" in page.evaluate("document.activeElement.className"):
            break
    page.keyboard.press("Enter")
    confirm = page.locator("#confirm-action")
    expect(confirm).to_be_visible()
    expect(confirm.locator("button[value=cancel]")).to_be_focused()
    page.keyboard.press("Escape")
    expect(confirm).to_be_hidden()
    expect(panel.locator("#keys-list .revoke")).to_be_focused()
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(page.locator("#open-keys")).to_be_focused()


@pytest.mark.parametrize(("viewport", "scheme"), [(DESKTOP, "light"), (PHONE, "dark")])
def test_no_accessibility_violations_in_accounts_mode(
    tabs: Callable[..., Page], accounts_relay: RelayServer, viewport: dict[str, int], scheme: str
) -> None:
    relay = accounts_relay
    name = new_user(relay, admin=True)
    options = {"viewport": viewport, "color_scheme": scheme, "bypass_csp": True}
    page = tabs(relay.url + "/", **options)
    wait_for_screen(page, "signin")
    assert axe_violations(page) == []
    sign_in(page, name, "not the password")
    expect(page.locator("#signin-error")).not_to_be_empty()
    assert axe_violations(page) == []
    sign_in(page, name, PASSWORD)
    wait_for_screen(page, "chat")
    assert axe_violations(page) == []

    if viewport is PHONE:
        page.click("#menu-toggle")
    page.click("#open-keys")
    expect(page.locator("#no-keys")).to_be_visible()
    assert axe_violations(page) == []
    page.fill("#key-name", "axe")
    page.press("#key-name", "Enter")
    expect(page.locator("#new-key-value")).to_be_focused()
    assert axe_violations(page) == []
    page.locator("#keys-list .revoke").click()
    expect(page.locator("#confirm-action")).to_be_visible()
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")

    page.click("#open-users")
    expect(page.locator("#users-list tr").first).to_be_visible()
    assert axe_violations(page) == []
    page.locator("#users-list tr").first.locator(".set-password").click()
    expect(page.locator("#new-password")).to_be_focused()
    assert axe_violations(page) == []
