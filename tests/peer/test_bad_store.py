"""A peer starts on a damaged store instead of crash-looping, and says what it did.

A node's cache outlives the peer: a node that lost power mid-write, a disk that
filled up, someone who truncated or restored files by hand. Each case is made for
real on a store a real peer filled, then a new peer starts on it: it must come up,
log one line naming what it found and did, and serve correct bytes again (from the
origin when what it had cannot be trusted).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, start_peer

MiB = 1 << 20


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    (tmp_path / "www" / "files").mkdir(parents=True)
    (tmp_path / "www" / "files" / "model.bin").write_bytes(os.urandom(10 * MiB + 99))
    return start_origin(processes, tmp_path / "www")


def fetch(peer: PeerHandle, url: str) -> bytes:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "60", "-x", peer.proxy_url, url],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def log_messages(peer: PeerHandle) -> list[dict[str, Any]]:
    text = peer.proc.log_path.read_text()
    assert "Traceback" not in text
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def stopped_after_a_fetch(
    processes: Any, tmp_path: Path, origin: Origin
) -> tuple[PeerHandle, str, bytes]:
    """A peer that stored the object whole, then stopped: its store is what we damage."""
    url = origin.url("files/model.bin")
    expected = (origin.directory / "files" / "model.bin").read_bytes()
    peer = start_peer(processes, tmp_path, rule_list=[{"regex": r"/files/"}])
    assert fetch(peer, url) == expected
    peer.proc.stop()
    return peer, url, expected


def restarted(processes: Any, tmp_path: Path, peer: PeerHandle) -> PeerHandle:
    """A new peer on the same config and store (start_peer waits until it is ready)."""
    config = yaml.safe_load(peer.config_path.read_text())
    return start_peer(processes, tmp_path, config=config, name="peer-again")


def garbage(store: Path) -> None:
    (store / "store.db").write_bytes(b"this is not SQLite\n" * 1000)
    for suffix in ("-wal", "-shm"):
        (store / f"store.db{suffix}").unlink(missing_ok=True)


def truncated(store: Path) -> None:
    database = store / "store.db"
    os.truncate(database, database.stat().st_size // 2)


DAMAGE: dict[str, Callable[[Path], None]] = {"garbage": garbage, "truncated": truncated}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_database_is_moved_aside_and_the_store_starts_empty(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    origin: Origin,
    damage: str,
) -> None:
    first, url, expected = stopped_after_a_fetch(processes, tmp_path, origin)
    DAMAGE[damage](first.store_dir)

    again = restarted(processes, tmp_path, first)
    assert again.status()["store"]["tasks"] == 0, "started empty"
    assert fetch(again, url) == expected
    assert origin.hits("files/model.bin") >= 2, "what it had could not be trusted: refetched"
    moved = [m for m in log_messages(again) if m["msg"].startswith("the store's database is")]
    assert len(moved) == 1, "said once, as one line"
    aside = Path(moved[0]["moved_to"])
    assert aside.exists()
    assert aside.parent == first.store_dir
    assert len(list((first.store_dir / "data").glob("*/*"))) == 1, "the new object's file only"


def test_a_task_file_shorter_than_its_record_is_dropped(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    origin: Origin,
) -> None:
    first, url, expected = stopped_after_a_fetch(processes, tmp_path, origin)
    (data_file,) = (first.store_dir / "data").glob("*/*")
    os.truncate(data_file, 3 * MiB)

    again = restarted(processes, tmp_path, first)
    assert again.status()["store"]["tasks"] == 0
    dropped = [m for m in log_messages(again) if m["msg"].startswith("dropped a task")]
    assert [(m["bytes"], m["expected"]) for m in dropped] == [(3 * MiB, len(expected))]
    got = fetch(again, url)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert origin.hits("files/model.bin") >= 2
