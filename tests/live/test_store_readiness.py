"""A web process never serves a store it cannot use: the embedded SQLite store is migrated on
start, a configured database behind the code's migrations stops `relay serve`, and `/healthz`
says why whenever the database is unreachable or behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..helpers import assert_error_shape
from .conftest import upgrade_database
from .relay_server import RELAY_BIN, free_port

pytestmark = [pytest.mark.timeout(90)]


def _env(instance: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELAY_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "RELAY_INSTANCE_PATH": str(instance), "RELAY_MOCK_DELAY_MS": "0", **extra}


@pytest.fixture()
def gunicorn(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """Start gunicorn itself on relay's config and app (no `relay serve` before it), as a
    platform's web process may; returns its URL once it answers anything."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:relay.gunicorn_conf",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "relay:create_app()"],
            env=_env(tmp_path, **env), cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, "gunicorn exited"
            try:
                httpx.get(url + "/healthz", timeout=2)
                return url
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("gunicorn did not answer")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.postgres
def test_serve_refuses_a_database_behind_the_migrations(
    tmp_path: Path, new_database: Callable[[], str]
) -> None:
    url = new_database().replace("postgres@", "postgres:not-for-logs@")  # trust auth ignores it
    serve = subprocess.run(
        [str(RELAY_BIN), "serve", "--bind", f"127.0.0.1:{free_port()}"],
        env=_env(tmp_path, DATABASE_URL=url), cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )
    assert serve.returncode != 0
    assert "relay db upgrade" in serve.stderr and "never migrated" in serve.stderr
    assert "not-for-logs" not in serve.stderr + serve.stdout


@pytest.mark.postgres
def test_healthz_says_the_database_is_behind_until_it_is_upgraded(
    tmp_path: Path, new_database: Callable[[], str],
    gunicorn: Callable[[dict[str, str]], str],
) -> None:
    url = new_database()
    relay = gunicorn({"DATABASE_URL": url})
    error = assert_error_shape(httpx.get(relay + "/healthz"), 503, "database_not_migrated")
    assert "relay db upgrade" in error["message"]
    upgraded = upgrade_database(url, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert httpx.get(relay + "/healthz").json() == {"status": "ok"}
    created = httpx.post(relay + "/new", json={"prompt": "now it works"})
    assert created.status_code == 201, created.text


def test_healthz_says_an_unreachable_database_is_unavailable_and_nothing_more(
    gunicorn: Callable[[dict[str, str]], str],
) -> None:
    closed = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nowhere"
    relay = gunicorn({"DATABASE_URL": closed})
    response = httpx.get(relay + "/healthz")
    assert_error_shape(response, 503, "database_unavailable")
    for leak in ("someone", "secret", "127.0.0.1", "nowhere", "psycopg"):
        assert leak not in response.text


def test_serve_migrates_the_embedded_store_in_an_empty_folder(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(RELAY_BIN), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=_env(tmp_path / "instance"), cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        created = httpx.post(f"http://127.0.0.1:{port}/new", json={"prompt": "hello"})
        assert created.status_code == 201, created.text
        assert (tmp_path / "instance" / "relay.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=15)
