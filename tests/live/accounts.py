"""Users, sign-ins and API keys on a running live relay, made the way an operator and a user
make them: the `relay` CLI on the relay's instance, and the `/auth` endpoints."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from .relay_server import RELAY_BIN, RelayServer

PASSWORD = "correct horse battery staple 19"


def relay_cli(relay: RelayServer, *args: str, stdin: str = "") -> str:
    """Run `relay ARGS` on the running relay's instance (so its database); returns stdout."""
    instance = relay.log_path.parent
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["RELAY_INSTANCE_PATH"] = str(instance)
    done = subprocess.run([str(RELAY_BIN), *args], env=env, cwd=instance, input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_user(relay: RelayServer, password: str = PASSWORD) -> str:
    """A user made with the operator's CLI; returns its (new, unique) name."""
    name = f"u{uuid.uuid4().hex[:8]}"
    relay_cli(relay, "users", "create", name, "--password-stdin", stdin=password + "\n")
    return name


def new_key(relay: RelayServer, user: str) -> str:
    """A new API key of `user`, made with the operator's CLI (the last line it prints)."""
    return relay_cli(relay, "keys", "create", user).strip().splitlines()[-1]


@contextmanager
def signed_in(relay: RelayServer, name: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A client holding a session cookie of `name`."""
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        response = http.post("/auth/login", json={"username": name, "password": password})
        assert response.status_code == 200, response.text
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
