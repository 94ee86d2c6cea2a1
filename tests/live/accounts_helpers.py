"""Helpers for the live tests of accounts mode: users who sign in and hold a key, replayed
cookies, and the `relay` CLI on a server's store."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from .relay_server import RELAY_BIN

PASSWORD = "correct horse battery"
COOKIE = "relay_session"


def tag() -> str:
    return secrets.token_hex(6)


def unknown_id() -> str:
    """An id of the shape relay makes that names nothing."""
    return secrets.token_urlsafe(24)


def relay_cli(instance: Path, *args: str, stdin: str = "",
              database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `relay ...` on the store of the server whose instance folder is `instance`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env["RELAY_INSTANCE_PATH"] = str(instance)
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([str(RELAY_BIN), *args], env=env, cwd=instance, input=stdin,
                          capture_output=True, text=True, timeout=60)


def with_cookie(url: str, value: str) -> httpx.Client:
    """A client that sends exactly this session cookie (and keeps no other)."""
    return httpx.Client(base_url=url, timeout=30, headers={"Cookie": f"{COOKIE}={value}"})


def refused_within(check: Callable[[], httpx.Response], seconds: float = 2.5) -> None:
    """`check` answers 401 `unauthenticated` within `seconds` (the credential caches live a
    second) and keeps answering so, on whichever worker."""
    deadline = time.monotonic() + seconds
    while (response := check()).status_code != 401:
        assert response.status_code == 200, response.text
        assert time.monotonic() < deadline, "still accepted"
        time.sleep(0.1)
    for _ in range(6):
        response = check()
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthenticated"


@dataclass
class Person:
    """A user, signed in (`page`, with the cookie) and with an API key of their own (`api`)."""

    name: str
    page: httpx.Client
    api: httpx.Client
    key: str


class People:
    """Users of one fresh accounts-mode relay, made by its first admin (set up from the page)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = httpx.Client(base_url=url, timeout=30)
        self._clients = [self.admin]
        self.made: list[Person] = []
        made = self.admin.post("/auth/setup", json={"username": "root", "password": PASSWORD})
        assert made.status_code == 201, made.text

    def make(self, prefix: str, models: list[str] | None = None) -> Person:
        """A new user, signed in, with a key (allowed only `models` when given)."""
        name = f"{prefix}-{tag()}"
        created = self.admin.post("/admin/users", json={"username": name, "password": PASSWORD})
        assert created.status_code == 201, created.text
        page = httpx.Client(base_url=self.url, timeout=30)
        self._clients.append(page)
        signed_in = page.post("/auth/login", json={"username": name, "password": PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json() == {"user": {"name": name, "admin": False}}
        made = page.post("/auth/keys", json={"name": "test", "models": models})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        api = httpx.Client(base_url=self.url, timeout=30,
                           headers={"Authorization": f"Bearer {key}"})
        self._clients.append(api)
        self.made.append(Person(name, page, api, key))
        return self.made[-1]

    def close(self) -> None:
        for client in self._clients:
            client.close()
