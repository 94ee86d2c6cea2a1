"""The WAL is checkpointed and started over while `POST /new` keeps writing, so it stays short.

SQLite starts the WAL file over only when a commit finds it fully copied; the worker's own last
checkpoint pass (after the thread's) is what makes that happen under load. The WAL header's
checkpoint sequence number counts those restarts.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(90)

# Writers go on until the WAL has started over twice, or this long: how many tickets a checkpoint
# cycle takes depends on the machine (8 writers commit ~1,000 tickets a second here, more when
# commits do not wait for the disk), so the test waits for the restarts rather than a fixed time.
LOAD_DEADLINE_SECONDS = 45.0
# SQLite checkpoints every 1,000 pages (4 MiB); a WAL restarting as it should stays far below.
MAX_WAL_BYTES = 64 * 1024 * 1024


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence number (big-endian, at byte 12)."""
    with wal.open("rb") as file:
        header = file.read(32)
    return int(struct.unpack(">I", header[12:16])[0])


def test_the_wal_starts_over_while_tickets_keep_being_written(
    start_relay: Callable[..., RelayServer], tmp_path: Path,
) -> None:
    relay = start_relay(instance=tmp_path / "instance", workers=1)
    url = f"http://127.0.0.1:{relay.port}/new"
    body = {"prompt": "x" * 1024}
    assert httpx.post(url, json=body, timeout=30).status_code == 201
    wal = tmp_path / "instance" / "relay.db-wal"
    before = _wal_restarts(wal)

    stop = threading.Event()
    statuses: list[int] = []

    def writer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post(url, json=body).status_code)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    largest_wal = 0
    deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
    try:
        while True:  # read while the writers still write
            during = _wal_restarts(wal)
            largest_wal = max(largest_wal, wal.stat().st_size)
            if (during - before >= 2 and len(statuses) > 500) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert len(statuses) > 500 and set(statuses) == {201}, (len(statuses), set(statuses))
    # The checkpointer runs every second: a WAL that only started over once the writes stopped
    # would still show the number it had before them.
    assert during - before >= 2, (before, during, len(statuses))
    assert largest_wal < MAX_WAL_BYTES, largest_wal
