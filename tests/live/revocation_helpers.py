"""test_revocation's helpers in `accounts` mode: users made with the CLI on any store, signed-in
clients, streams read in a thread with each event's arrival time, polling for a refusal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import connect_sse

from .relay_server import RELAY_BIN

PASSWORD = "a long enough password"
SECRET = "shared-secret-of-the-two-hosts-0123456789"


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run `relay ARGS` as the operator would, against the store `env` names; its stdout."""
    full_env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    full_env.update(env)
    done = subprocess.run([str(RELAY_BIN), *args], env=full_env, input=stdin, text=True,
                          capture_output=True, timeout=60, cwd=env["RELAY_INSTANCE_PATH"])
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_user(env: dict[str, str], *, admin: bool = False) -> str:
    """A new user (a fresh name) with PASSWORD, made with `relay users create`."""
    name = "u" + uuid.uuid4().hex[:10]
    run_cli(env, "users", "create", name, "--password-stdin", *(["--admin"] if admin else []),
            stdin=PASSWORD + "\n")
    return name


@contextmanager
def signed_in(url: str, name: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A client of `url` holding a new session of `name`."""
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post("/auth/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        yield http


def new_key(http: httpx.Client) -> tuple[str, str]:
    """A new API key of the signed-in user of `http`: (id, key)."""
    response = http.post("/auth/keys", json={"name": "test"})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Reader(threading.Thread):
    """Reads one stream to its `done`, keeping (arrival time, id, event, data) of each event."""

    def __init__(self, http: httpx.Client, url: str, headers: dict[str, str] | None = None):
        super().__init__(daemon=True)
        self.http, self.url, self.headers = http, url, headers or {}
        self.events: list[tuple[float, str, str, Any]] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.streaming = threading.Event()  # set at the third event, or when it ended
        self.start()

    def run(self) -> None:
        try:
            with connect_sse(self.http, "GET", self.url, headers=self.headers) as source:
                self.status = source.response.status_code
                if self.status != 200:
                    return
                for sse in source.iter_sse():
                    if sse.data == "":
                        continue
                    self.events.append((time.monotonic(), sse.id, sse.event, json.loads(sse.data)))
                    if len(self.events) >= 3:
                        self.streaming.set()
                    if sse.event == "done":
                        return
        except BaseException as exc:  # reported by `result`
            self.error = exc
        finally:
            self.streaming.set()

    def result(self, timeout: float) -> tuple[float, dict[str, Any], str]:
        """Wait for the end: (when `done` arrived, its data, the text streamed)."""
        self.join(timeout)
        assert not self.is_alive(), f"the stream did not end within {timeout}s"
        assert self.error is None, repr(self.error)
        assert self.status == 200 and self.events, (self.status, self.events)
        arrived, _, event, data = self.events[-1]
        assert event == "done", self.events[-1]
        text = "".join(d["delta"] for _, _, e, d in self.events if e == "message")
        return arrived, data, text

    def wait_streaming(self, timeout: float = 20) -> None:
        assert self.streaming.wait(timeout), "the stream did not start"
        assert len(self.events) >= 3 and self.events[-1][2] != "done", self.events


def probe(
    url: str, cookies: Any = None, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, str | None]:
    """One request on a new connection (either worker of the host may answer it), not reading
    a stream it starts: (status, error code if any)."""
    with httpx.stream(method, url, cookies=cookies, headers=headers or {}, timeout=10) as reply:
        if reply.status_code < 300:
            return reply.status_code, None
        body = reply.read()
        return reply.status_code, json.loads(body)["error"]["code"] if body else None


def refused_after(send: Callable[[], tuple[int, str | None]], since: float, limit: float) -> float:
    """Poll `send()` until it answers 401; seconds from `since` (fails after `limit`)."""
    while True:
        status, code = send()
        elapsed = time.monotonic() - since
        if status == 401:
            return elapsed
        assert status == 200, (status, code)
        assert elapsed < limit, f"still accepted {elapsed:.2f}s after the revocation"
        time.sleep(0.05)
