"""Screenshots of the chat page's main states, at desktop and phone widths, into screenshots/.

Run from the repository root: `.venv/bin/python scripts/screenshots.py [--out screenshots]`.
It starts its own relays (the built-in mock upstream, and one whose upstream is unreachable
for the error state) and drives Debian's headless Chromium.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.live.browser_helpers import DESKTOP, PHONE, ChatPage, launch_chromium  # noqa: E402
from tests.live.relay_server import RelayServer  # noqa: E402

SIZES = {"desktop": DESKTOP, "phone": PHONE}
PROMPT = "Show me how to greet someone in Python, with a code example."


def reserve_dead_port() -> socket.socket:
    """A bound socket that never listens: connecting to it is refused, like a down upstream."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def shoot(page: Page, out: Path, name: str) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def chat_states(browser: Browser, url: str, out: Path, size: str, scheme: str) -> None:
    """Empty, streaming and finished-with-code, in one conversation."""
    context = browser.new_context(viewport=SIZES[size], color_scheme=scheme, device_scale_factor=1)
    try:
        chat = ChatPage(context.new_page()).open(url)
        suffix = "" if scheme == "light" else "-dark"
        shoot(chat.page, out, f"{size}-empty{suffix}")
        chat.choose_model("mock-chat")
        answer = chat.send(PROMPT)
        chat.page.wait_for_function(
            "() => { const a = document.querySelector('#messages .message.assistant');"
            " return a && a.dataset.status === 'streaming' && a.innerText.length > 330; }"
        )
        shoot(chat.page, out, f"{size}-streaming{suffix}")
        chat.wait_status(answer, "completed")
        expect(answer.locator(".code-block")).to_be_visible()
        shoot(chat.page, out, f"{size}-finished-code{suffix}")
        if size == "phone":
            chat.page.click("#menu-toggle")
            chat.page.wait_for_timeout(300)
            shoot(chat.page, out, f"{size}-conversations{suffix}")
    finally:
        context.close()


def error_state(browser: Browser, url: str, out: Path, size: str) -> None:
    context = browser.new_context(viewport=SIZES[size], device_scale_factor=1)
    try:
        chat = ChatPage(context.new_page()).open(url)
        answer = chat.send("Summarise the latest release notes.")
        chat.wait_status(answer, "failed", timeout=60_000)
        expect(chat.page.locator("#toast")).to_be_hidden(timeout=10_000)
        shoot(chat.page, out, f"{size}-error")
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = tempfile.TemporaryDirectory(prefix="relay-screenshots-")
    with tmp_dir as tmp, reserve_dead_port() as dead:
        dead_port = dead.getsockname()[1]
        mock = RelayServer(Path(tmp, "mock"), {"RELAY_MOCK_DELAY_MS": "45"}, workers=1)
        broken = RelayServer(Path(tmp, "broken"), {
            "OPENAI_API_KEY": "unused", "OPENAI_BASE_URL": f"http://127.0.0.1:{dead_port}/v1",
            "RELAY_DEFAULT_MODEL": "gpt-4o-mini", "RELAY_UPSTREAM_TIMEOUT_SECONDS": "5",
        }, workers=1)
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for size in SIZES:
                    chat_states(browser, mock.url + "/", out, size, "light")
                    error_state(browser, broken.url + "/", out, size)
                chat_states(browser, mock.url + "/", out, "desktop", "dark")
                browser.close()
        finally:
            mock.stop()
            broken.stop()


if __name__ == "__main__":
    main()
