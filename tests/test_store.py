"""The store's durability setting, and a store that refuses writes told apart from a bug."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import gevent
import pytest
from flask import Flask
from sqlalchemy import exc, text

from relay import create_app, sql
from relay import db as store
from relay.db import db
from relay.errors import ErrorCode

from .helpers import assert_error_shape, wal_cannot_grow


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files fsynced from now on (by any thread)."""
    synced: list[str] = []
    real_fdatasync = os.fdatasync

    def recording(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fdatasync(descriptor)

    monkeypatch.setattr(os, "fdatasync", recording)
    return synced


def _new_ticket(app: Flask) -> None:
    response = app.test_client().post("/new", json={"prompt": "keep me"})
    assert response.status_code == 201


def test_an_answered_ticket_is_on_disk_by_default(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ticket answered 201 must survive an OS crash: its commit's WAL is fsynced first.
    synced = _fsyncs(monkeypatch)
    _new_ticket(app)
    assert synced == [str(tmp_path / "relay.db-wal")]


def test_only_durable_commits_wait_for_the_disk(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks, claims, ends and reads commit without an fsync (the next durable commit, or a
    # checkpoint, syncs them); a rolled-back durable transaction syncs nothing.
    synced = _fsyncs(monkeypatch)
    with app.app_context():
        with sql.Transaction(db.engine) as tx:
            tx.execute("SELECT 1")
        with pytest.raises(RuntimeError), sql.Transaction(db.engine, durable=True):
            raise RuntimeError("rolled back")
        assert synced == []
        with sql.Transaction(db.engine, durable=True) as tx:
            tx.execute("SELECT 1")
        assert len(synced) == 1
        with db.engine.connect() as conn:  # no commit waits for fsync inside SQLite
            assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL


def test_durable_commits_that_meet_share_one_fsync(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten tickets committed while an fsync runs wait for the next one: two fsyncs, not ten.
    synced = _fsyncs(monkeypatch)

    with app.app_context():
        engine = db.engine

    def durable_commit() -> None:
        with sql.Transaction(engine, durable=True) as tx:
            tx.execute("SELECT 1")

    with app.app_context():
        gevent.joinall([gevent.spawn(durable_commit) for _ in range(10)], raise_error=True)
    assert len(synced) == 2


def test_normal_synchronous_is_a_setting(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "relay.db").write_bytes(migrated_store.read_bytes())
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SQLITE_SYNCHRONOUS": "normal"})
    try:
        synced = _fsyncs(monkeypatch)
        _new_ticket(app)
        assert synced == []
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


def test_a_store_refusing_writes_answers_503_and_recovers(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/new", json={"prompt": "before"}).status_code == 201
    with wal_cannot_grow(app):
        refused = client.post("/new", json={"prompt": "x" * 20_000})
    assert_error_shape(refused, 503, "database_unavailable")
    assert refused.headers["Retry-After"]
    assert client.post("/new", json={"prompt": "after"}).status_code == 201
