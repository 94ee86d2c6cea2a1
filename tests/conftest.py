"""Fixtures for in-process tests: a fresh app per test on a temp SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from relay import create_app
from relay.db import MIGRATIONS_DIR


@pytest.fixture()
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for name in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    app = create_app({"INSTANCE_PATH": str(tmp_path), "MOCK_DELAY_MS": 0.0,
                      "MAX_PROMPT_BYTES": 64 * 1024})
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
    yield app
    with app.app_context():
        from relay.db import db

        db.engine.dispose()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()
