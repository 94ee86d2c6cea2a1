"""The store's durability setting, and a store that refuses writes told apart from a bug."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import exc, text

from relay import create_app, sql
from relay import db as store
from relay.db import db
from relay.errors import ErrorCode

from .helpers import assert_error_shape

FULL, NORMAL = 2, 1  # PRAGMA synchronous


def _synchronous(app: Flask) -> tuple[int, int]:
    """PRAGMA synchronous on a SQLAlchemy connection and on a hot-path transaction's."""
    with app.app_context():
        with db.engine.connect() as conn:
            orm = conn.execute(text("PRAGMA synchronous")).scalar_one()
        with sql.Transaction(db.engine) as tx:
            hot = tx.execute("PRAGMA synchronous").fetchone()[0]
    return orm, hot


def test_commits_survive_an_os_crash_by_default(app: Flask) -> None:
    # A ticket answered 201 must survive an OS crash: the WAL is synced at every commit.
    assert _synchronous(app) == (FULL, FULL)


def test_the_writers_chunks_wait_for_no_fsync_and_the_connection_syncs_again(app: Flask) -> None:
    # The writer's chunk commits are NORMAL; a ticket's creation and end stay FULL (which syncs
    # the WAL, chunks included), and the kept connection is FULL again for the next caller.
    with app.app_context():
        with sql.Transaction(db.engine, synced=False) as tx:
            assert tx.execute("PRAGMA synchronous").fetchone()[0] == NORMAL
        with pytest.raises(RuntimeError), sql.Transaction(db.engine, synced=False):
            raise RuntimeError("rolled back")
        for _ in range(3):  # every kept connection
            with sql.Transaction(db.engine) as tx:
                assert tx.execute("PRAGMA synchronous").fetchone()[0] == FULL


def test_normal_synchronous_is_a_setting(tmp_path: Path, migrated_store: Path) -> None:
    (tmp_path / "relay.db").write_bytes(migrated_store.read_bytes())
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SQLITE_SYNCHRONOUS": "normal"})
    try:
        assert _synchronous(app) == (NORMAL, NORMAL)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_a_full_store_is_told_apart_from_a_bug(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "small.db")) as small:
        small.execute("CREATE TABLE t (x BLOB)")
        small.execute("PRAGMA max_page_count = 3")  # SQLite's own "database or disk is full"
        with pytest.raises(sqlite3.OperationalError) as full:
            small.execute("INSERT INTO t VALUES (zeroblob(100000))")
        with pytest.raises(sqlite3.OperationalError) as bug:
            small.execute("SELECT nothing FROM nowhere")
    assert store.storage_failure(full.value) == ErrorCode.STORAGE_FULL
    wrapped = exc.OperationalError("INSERT ...", {}, full.value)
    assert store.storage_failure(wrapped) == ErrorCode.STORAGE_FULL
    assert store.storage_failure(bug.value) is None
    assert store.storage_failure(ValueError("a bug")) is None


@contextmanager
def _files_cannot_grow(app: Flask) -> Iterator[None]:
    """Every write that grows a file fails (as on a disk that filled up): SQLite's I/O error."""
    with app.app_context():
        wal = f"{db.engine.url.database}-wal"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(wal), limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)


def test_a_store_refusing_writes_answers_503_and_recovers(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/new", json={"prompt": "before"}).status_code == 201
    with _files_cannot_grow(app):
        refused = client.post("/new", json={"prompt": "x" * 20_000})
    assert_error_shape(refused, 503, "database_unavailable")
    assert refused.headers["Retry-After"]
    assert client.post("/new", json={"prompt": "after"}).status_code == 201
