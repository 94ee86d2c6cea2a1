"""A full disk under the store (a small tmpfs as the database folder): new tickets are refused
with 503 in the contract's shape, streams in flight end with a clear failure, nothing stored is
lost, and once space returns new tickets work again without a restart."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import assert_error_shape, new_ticket, read_stream, text_of
from .conftest import upgrade_database
from .fake_upstream import FakeUpstream
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file:
        for block in (1 << 16, 1 << 12):
            try:
                while True:
                    file.write(b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_disk_refuses_clearly_loses_nothing_and_recovers(
    start_relay: Callable[..., RelayServer], upstream: FakeUpstream, tmp_path: Path,
    small_disk: Path,
) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    database = small_disk / "relay.db"
    url = f"sqlite:///{database}"
    assert upgrade_database(url, instance).returncode == 0
    relay = start_relay({
        "DATABASE_URL": url, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.base_url,
        "RELAY_DEFAULT_MODEL": "echo", "RELAY_LEASE_SECONDS": "2",
    }, workers=1, instance=instance)
    tag = uuid.uuid4().hex[:8]
    try:
        with httpx.Client(base_url=relay.url, timeout=30) as http:
            answered = new_ticket(http, f"{tag} answered")
            answered_events = read_stream(http, answered["stream_url"])
            accepted = [new_ticket(http, f"{tag} accepted {n}") for n in range(5)]
            slow = new_ticket(http, f"{tag} slow " + "x" * 2400, model="echo:40")
            seen: list[tuple[str, str, Any]] = []
            started = threading.Event()

            def read_slow() -> None:
                with httpx.Client(base_url=relay.url, timeout=30,
                                  cookies=dict(http.cookies)) as reader:
                    seen.extend(read_stream(reader, slow["stream_url"], stop_after=3))
                    started.set()
                    seen.extend(read_stream(reader, slow["stream_url"],
                                            last_event_id=int(seen[-1][0])))

            reader = threading.Thread(target=read_slow)
            reader.start()
            assert started.wait(timeout=30)

            filler = _fill(small_disk)
            # The WAL may still have room it reuses: tickets keep being accepted until it is
            # used up, and a checkpoint may free some again. Each one answered 201 must survive.
            refused = None
            for n in range(1000):
                response = http.post("/new", json={"prompt": f"{tag} fill {n} " + "f" * 8000})
                if response.status_code != 201:
                    refused = response
                    break
                accepted.append(response.json())
            assert refused is not None, "the full disk never refused a ticket"
            assert_error_shape(refused, 503, "storage_full")

            # The stream in flight cannot be stored further: it ends, failed, with no gap.
            # Small tickets meanwhile take whatever room a checkpoint frees.
            deadline = time.monotonic() + 60
            while reader.is_alive() and time.monotonic() < deadline:
                response = http.post("/new", json={"prompt": f"{tag} small"})
                if response.status_code == 201:
                    accepted.append(response.json())
                else:
                    assert_error_shape(response, 503, "storage_full")
                time.sleep(0.05)
            reader.join(timeout=5)
            assert not reader.is_alive()
            assert [int(i) for i, _, _ in seen] == list(range(1, len(seen) + 1))
            assert seen[-1][1] == "done" and seen[-1][2]["status"] == "failed", seen[-1]
            assert seen[-1][2]["error"]["code"] == "storage_full"

            filler.unlink()
            after = new_ticket(http, f"{tag} after")
            assert text_of(read_stream(http, after["stream_url"])) == f"{tag} after"
            assert read_stream(http, answered["stream_url"]) == answered_events
            for ticket in accepted:
                assert http.get(f"/tickets/{ticket['id']}").json()["status"] == "pending"
            # What the slow stream's reader saw was stored; its end, once the store takes
            # writes, is a failure at the same id.
            stored = read_stream(http, slow["stream_url"])
            assert stored[:-1] == seen[:-1]
            assert stored[-1][0] == seen[-1][0] and stored[-1][2]["status"] == "failed"
        log = relay.log()
        assert "Traceback" not in log, log[-3000:]
        # One line when writes start failing, one when they work again: not one per retry.
        refusals = log.count("the store refuses writes")
        assert 1 <= refusals <= log.count("the store takes writes again") + 1, log[-3000:]
    finally:
        relay.stop()
    with closing(sqlite3.connect(database)) as store:
        assert store.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
