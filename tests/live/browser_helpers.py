"""Headless Chromium for the chat page tests: launching it, driving the page, and a TCP proxy
that can cut the browser's connections to the relay mid-stream."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, Playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parents[2] / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; never a Playwright browser download."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's `chromium` package")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)


class ChatPage:
    """The chat page, seen the way a user sees it."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def open(self, url: str) -> ChatPage:
        self.page.goto(url)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        expect(self.page.locator("html")).to_have_attribute("data-ready", "true")

    def choose_model(self, model: str) -> None:
        self.page.select_option("#model", model)

    def add_model_option(self, model: str) -> None:
        """Offer a model the upstream accepts but does not list (a fault-injecting name)."""
        script = "(select, name) => select.add(new Option(name))"
        self.page.eval_on_selector("#model", script, model)

    def send(self, prompt: str, model: str | None = None) -> Locator:
        """Type `prompt`, press Enter; returns the new answer's element."""
        if model is not None:
            self.choose_model(model)
        count = self.answers.count()
        self.page.fill("#prompt", prompt)
        self.page.press("#prompt", "Enter")
        answer = self.answers.nth(count)
        expect(answer).to_be_attached()
        return answer

    @property
    def answers(self) -> Locator:
        return self.page.locator("#messages .message.assistant")

    @property
    def messages(self) -> Locator:
        return self.page.locator("#messages .message")

    def wait_status(self, answer: Locator, status: str, timeout: float = 20_000) -> None:
        expect(answer).to_have_attribute("data-status", status, timeout=timeout)

    def text_of(self, answer: Locator) -> str:
        return answer.locator(".content").inner_text()

    def conversation_titles(self) -> list[str]:
        return self.page.locator("#conversation-list .conversation-link").all_inner_texts()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.1 A/AA and best-practice violations on the page as it is now."""
    if not AXE.exists():
        raise RuntimeError(f"{AXE} is missing: run `npm ci` in frontend/")
    if not page.evaluate("typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate("""async () => {
        const tags = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"];
        const result = await axe.run(document, { runOnly: { type: "tag", values: tags } });
        return result.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5),
        }));
    }""")


class SeveringProxy:
    """A loopback TCP proxy in front of the relay whose open connections can be cut at will."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.request_heads: list[str] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def sever(self) -> int:
        """Reset every open connection, as a dropped network would; returns how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shutdown(sock)
        return len(pairs)

    def heads_for(self, path_prefix: str) -> list[str]:
        with self._lock:
            return [h for h in self.request_heads if h.split(" ", 2)[1].startswith(path_prefix)]

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.sever()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_browser: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_browser and data[:4] in (b"GET ", b"POST", b"PATC", b"DELE"):
                    with self._lock:
                        self.request_heads.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(sink)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def header(head: str, name: str) -> str | None:
    """The value of header `name` in a raw HTTP request head."""
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def page_errors(page: Page) -> list[Any]:
    """Collect the page's uncaught exceptions, for a test to assert there were none."""
    errors: list[Any] = []
    page.on("pageerror", lambda exc: errors.append(exc))
    return errors


def sign_in(page: Page, username: str, password: str) -> None:
    """Fill the sign-in (or first-admin) screen and submit it with Enter, as a keyboard user."""
    page.fill("#signin-username", username)
    page.fill("#signin-password", password)
    page.press("#signin-password", "Enter")


def wait_for_screen(page: Page, screen: str) -> None:
    """Wait until the page shows `screen` ("signin" or "chat") and has finished loading it."""
    expect(page.locator("html")).to_have_attribute("data-screen", screen)
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
