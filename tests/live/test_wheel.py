"""The built wheel, installed outside the checkout, serves the chat page and chats through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from . import relay_server
from .browser_helpers import DESKTOP, ChatPage, launch_chromium, page_errors

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the working tree, as `pip wheel` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources, and a stale
    # build/lib (a module since deleted) would end up in the wheel.
    source = out / "source"
    shutil.copytree(ROOT / "relay", source / "relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
         str(source)], check=True, timeout=120)
    (built,) = out.glob("relay-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the wheel installed, borrowing the dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
         str(wheel)], check=True, timeout=120)
    # Plain path lines, appended after the venv's own site-packages: this project's .pth files
    # (the editable install's finder) are not run, so `relay` can only come from the wheel.
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    dependencies = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site_packages) / "project-dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return venv


def test_the_wheel_carries_the_page_the_migrations_and_the_server_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {p.relative_to(ROOT).as_posix() for p in (ROOT / "relay/frontend").rglob("*")
            if p.is_file()}
    assert page <= names, f"missing from the wheel: {sorted(page - names)}"
    assert any(name.startswith("relay/frontend/vendor/LICENSE") for name in names)
    migrations = {p.relative_to(ROOT).as_posix()
                  for p in (ROOT / "relay/migrations/versions").glob("*.py")}
    assert migrations and migrations <= names
    for name in ("relay/migrations/alembic.ini", "relay/migrations/env.py",
                 "relay/migrations/script.py.mako", "relay/gunicorn_conf.py"):
        assert name in names


def test_the_installed_wheel_serves_the_page_and_chats_from_an_empty_folder(
    venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import relay; print(relay.__file__)"],
        cwd=empty, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(imported).is_relative_to(venv), imported

    monkeypatch.setattr(relay_server, "RELAY_BIN", venv / "bin" / "relay")
    # RELAY_INSTANCE_PATH empty is unset: the instance folder is the default, ./instance.
    server = relay_server.RelayServer(
        empty, {"RELAY_INSTANCE_PATH": "", "RELAY_MOCK_DELAY_MS": "2"}, workers=1)
    try:
        assert (empty / "instance" / "relay.db").exists()
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page(viewport=DESKTOP)
                errors = page_errors(page)
                console: list[str] = []
                page.on("console",
                        lambda m: console.append(m.text) if m.type == "error" else None)
                failed: list[str] = []
                page.on("response",
                        lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                chat = ChatPage(page).open(server.url + "/")
                tag = uuid.uuid4().hex[:10]
                answer = chat.send(f"**{tag}**\n\n```python\nprint('{tag}')\n```\n",
                                   model="mock-echo")
                chat.wait_status(answer, "completed")
                content = answer.locator(".content")
                expect(content.locator("strong")).to_have_text(tag)
                code = content.locator(".code-block pre code")
                expect(code).to_have_class("language-python hljs")
                expect(code.locator(".hljs-built_in")).to_have_text("print")
                assert not errors and not console and not failed, (errors, console, failed)
            finally:
                browser.close()
    finally:
        server.stop()
