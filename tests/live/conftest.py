"""Live fixtures: the fault-injecting upstream and real relay servers on loopback ports."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, sync_playwright

from .browser_helpers import launch_chromium
from .fake_upstream import FakeUpstream
from .relay_server import RELAY_BIN, RelayServer
from .usage_helpers import Store

POSTGRES_URL = os.environ.get(
    "RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/live/" in str(item.path):
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture(scope="session")
def start_relay(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RelayServer]]:
    """Start relays that are all stopped at the end of the session."""
    servers: list[RelayServer] = []

    def start(
        env: dict[str, str] | None = None, *, workers: int = 2, instance: Path | None = None
    ) -> RelayServer:
        path = instance or tmp_path_factory.mktemp("relay")
        server = RelayServer(path, env or {}, workers=workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def relay(start_relay: Callable[..., RelayServer], upstream: FakeUpstream) -> RelayServer:
    """A shared relay with two gevent workers, pointed at the fake upstream."""
    return start_relay({
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_UPSTREAM_TIMEOUT_SECONDS": "3",
    })


@pytest.fixture()
def new_database() -> Iterator[Callable[[], str]]:
    """Make fresh, empty PostgreSQL databases (URLs returned), dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"relay_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade_database(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`relay db upgrade` on the database at `url`, as a release phase runs it."""
    env = {**os.environ, "DATABASE_URL": url, "RELAY_INSTANCE_PATH": str(cwd)}
    return subprocess.run([str(RELAY_BIN), "db", "upgrade"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for one test module (the chat page's tests)."""
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture()
def client(relay: RelayServer) -> Iterator[httpx.Client]:
    """A client with its own cookie jar (its own anonymous identity)."""
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def migrated_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL database for one test module, migrated as a release phase would, and
    dropped afterwards."""
    name = f"relay_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgraded = upgrade_database(url, tmp_path_factory.mktemp("release"))
        assert upgraded.returncode == 0, upgraded.stderr
        yield url
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, new_database: Callable[[], str]
) -> Store:
    """The store of a relay a test starts (`instance=store.instance`, `store.env` in its
    settings): SQLite, then a fresh PostgreSQL database, migrated as a release phase would."""
    instance = tmp_path / f"relay-{request.param}"
    instance.mkdir()
    url = None
    if request.param == "postgres":
        url = new_database()
        upgraded = upgrade_database(url, instance)
        assert upgraded.returncode == 0, upgraded.stderr
    return Store(instance, url)
