"""Piece digests: BLAKE3 with a prefix, and sha256 digests of earlier versions still verify."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.pieces import MiB
from damselfly.peer.store.piecestore import PieceCorrupt, PieceStore


def digest_of(data: bytes, like: str | None = None) -> str:
    hasher = PieceHasher(like)
    hasher.update(data)
    return hasher.digest()


def test_new_digests_are_tagged_blake3() -> None:
    # BLAKE3's published test vector for empty input.
    assert digest_of(b"") == (
        "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    assert digest_of(b"a") != digest_of(b"b")


def test_a_recorded_digest_picks_the_algorithm_that_made_it() -> None:
    legacy = hashlib.sha256(b"piece").hexdigest()
    assert digest_of(b"piece", like=legacy) == legacy
    assert digest_of(b"piece", like=digest_of(b"other")).startswith("blake3:")


@pytest.mark.parametrize("era", ["blake3", "sha256 (earlier versions)"])
def test_stored_pieces_verify_and_a_flipped_byte_is_caught(tmp_path: Path, era: str) -> None:
    data = os.urandom(MiB + 5)
    store = PieceStore(tmp_path / "store", quota=8 * MiB)
    try:
        record = store.begin("t" * 64, "http://o/x", len(data), 4 * MiB, None, {})
        fd = store.open_for_write(record.task_id)
        store.write_at(fd, 0, [data])
        os.close(fd)
        recorded = hashlib.sha256(data).hexdigest() if era.startswith("sha256") else None
        recorded = recorded or digest_of(data)
        store.record_piece(record, 0, len(data), recorded)
        store.close()
        store = PieceStore(tmp_path / "store", quota=8 * MiB)  # a restart: nothing verified yet
        stored = store.get(record.task_id)
        assert stored is not None
        fd = store.open_for_read(record.task_id)
        store.verify_piece(fd, stored, 0)
        os.close(fd)
        store.close()
        with store.data_path(record.task_id).open("r+b") as handle:
            handle.seek(MiB)
            handle.write(bytes([data[MiB] ^ 1]))
        store = PieceStore(tmp_path / "store", quota=8 * MiB)
        fd = store.open_for_read(record.task_id)
        with pytest.raises(PieceCorrupt):
            store.verify_piece(fd, stored, 0)
        os.close(fd)
    finally:
        store.close()


def test_a_reader_of_an_old_generation_neither_trusts_nor_deletes_the_new_one(
    tmp_path: Path,
) -> None:
    """A client still reading a dropped file, while the task downloads anew.

    The new download's pieces are known good, but they say nothing of the old
    file that client reads; and that client finding the old file corrupt must
    not delete the new download.
    """
    data = os.urandom(MiB)
    store = PieceStore(tmp_path / "store", quota=8 * MiB)
    try:
        old = store.begin("t" * 64, "http://o/x", len(data), 4 * MiB, None, {})
        store.record_piece(old, 0, len(data), digest_of(data))
        new = store.begin(old.task_id, "http://o/x", len(data), 4 * MiB, None, {})
        assert new.created != old.created
        store.record_piece(new, 0, len(data), digest_of(data))
        assert store.is_verified(new, 0)
        assert not store.is_verified(old, 0)  # the old file is checked before it is sent
        store.delete(old.task_id, old.created)  # what dropping the old generation does
        assert store.get(new.task_id) is not None
        assert store.data_path(new.task_id).exists()
        store.delete(new.task_id, new.created)
        assert store.get(new.task_id) is None
    finally:
        store.close()
