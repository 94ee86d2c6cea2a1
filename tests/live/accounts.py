"""Users, keys and sign-ins on live relays, made the way an operator and a user make them (the
`relay` CLI on the relay's store, the `/auth` endpoints); waiting for a credential's refusal, and
streams read in a thread with each event's arrival time. No test relies on PASSWORD's value."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from .relay_server import RELAY_BIN, RelayServer, bare_environ

PASSWORD = "correct horse battery staple 19"
COOKIE = "relay_session"

# Where the CLI works: a running relay's instance folder, an instance folder, or the operator's
# settings (naming RELAY_INSTANCE_PATH, and DATABASE_URL, RELAY_SECRET_KEY... as the servers do).
Store = RelayServer | Path | Mapping[str, str]


def tag() -> str:
    return secrets.token_hex(6)


def unknown_id() -> str:
    """An id of the shape relay makes that names nothing."""
    return secrets.token_urlsafe(24)


def relay_cli(store: Store, *args: str, stdin: str = "",
              database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `relay ARGS` on `store` (and the database at `database_url` when given)."""
    env = bare_environ()
    if isinstance(store, RelayServer):
        env["RELAY_INSTANCE_PATH"] = str(store.log_path.parent)
    elif isinstance(store, Path):
        env["RELAY_INSTANCE_PATH"] = str(store)
    else:
        env.update(store)
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([str(RELAY_BIN), *args], env=env, cwd=env["RELAY_INSTANCE_PATH"],
                          input=stdin, capture_output=True, text=True, timeout=60)


def cli_output(store: Store, *args: str, stdin: str = "") -> str:
    """`relay ARGS` on `store`, which must succeed: its stdout."""
    done = relay_cli(store, *args, stdin=stdin)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def new_user(store: Store, prefix: str = "u", *, admin: bool = False,
             password: str = PASSWORD) -> str:
    """A user made with `relay users create` (a fresh name starting with `prefix`): its name."""
    name = f"{prefix}-{tag()}"
    cli_output(store, "users", "create", name, "--password-stdin", *(["--admin"] if admin else []),
               stdin=password + "\n")
    return name


def new_key(store: Store, user: str, *options: str) -> tuple[str, str]:
    """A new API key of `user` made with `relay keys create USER OPTIONS`: (its id, the key)."""
    said = cli_output(store, "keys", "create", user, *options)
    key_id = re.search(r"created key (key_\S+)", said)
    assert key_id, said
    return key_id.group(1), said.strip().splitlines()[-1]


@contextmanager
def signed_in(relay: RelayServer, name: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A client of `relay` holding a new session of `name`."""
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        response = http.post("/auth/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def with_cookie(url: str, value: str) -> httpx.Client:
    """A client that sends exactly this session cookie (and keeps no other)."""
    return httpx.Client(base_url=url, timeout=30, headers={"Cookie": f"{COOKIE}={value}"})


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


def refused_within(check: Callable[[], httpx.Response], seconds: float = 2.5) -> None:
    """`check` answers 401 `unauthenticated` within `seconds` (the credential caches live a
    second) and keeps answering so, on whichever worker."""
    def send() -> tuple[int, str | None]:
        response = check()
        return response.status_code, response.text

    refused_after(send, time.monotonic(), seconds)
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
        """A new user, signed in, with a key made in the page (allowed only `models` if given)."""
        name = f"{prefix}-{tag()}"
        created = self.admin.post("/admin/users", json={"username": name, "password": PASSWORD})
        assert created.status_code == 201, created.text
        page = httpx.Client(base_url=self.url, timeout=30)
        self._clients.append(page)
        signed = page.post("/auth/login", json={"username": name, "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        assert signed.json() == {"user": {"name": name, "admin": False}}
        made = page.post("/auth/keys", json={"name": "test", "models": models})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        api = httpx.Client(base_url=self.url, timeout=30, headers=bearer(key))
        self._clients.append(api)
        self.made.append(Person(name, page, api, key))
        return self.made[-1]

    def close(self) -> None:
        for client in self._clients:
            client.close()


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
