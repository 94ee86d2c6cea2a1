"""Fixtures for in-process tests: a fresh app per test on a temp SQLite database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from relay import create_app
from relay.db import MIGRATIONS_DIR, db

_TEST_CONFIG = {"MOCK_DELAY_MS": 0.0, "MAX_PROMPT_BYTES": 64 * 1024}


def _isolate(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """No store, Redis or upstream from the environment, and no `.env` but the folder's."""
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(folder)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the code's migrations, made once: each app starts from a copy of it
    (running the migrations took most of every in-process test's time)."""
    instance = tmp_path_factory.mktemp("migrated")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, instance)
        app = create_app({**_TEST_CONFIG, "INSTANCE_PATH": str(instance)})
        with app.app_context():
            upgrade(directory=MIGRATIONS_DIR)
            db.engine.dispose()  # closing the last connection checkpoints the WAL into the file
    return instance / "relay.db"


@pytest.fixture()
def app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_store: Path
) -> Iterator[Flask]:
    _isolate(monkeypatch, tmp_path)
    shutil.copyfile(migrated_store, tmp_path / "relay.db")
    app = create_app({**_TEST_CONFIG, "INSTANCE_PATH": str(tmp_path)})
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()
