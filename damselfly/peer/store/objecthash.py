"""The whole object's sha256, computed in piece order while the download runs.

Content-addressed objects (LFS oids, OCI digests, HF objects) are verified
before their last piece is released. Hashing the file only once the last piece
has landed would make every client wait for a full re-read at the end (about
1.2 s per GiB here); instead each piece is folded in as soon as it and all
pieces before it are stored, so only the tail is left at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Set

from damselfly.peer.store.piecestore import PieceStore, TaskRecord, read_chunks


class ObjectHasher:
    def __init__(self, store: PieceStore, record: TaskRecord) -> None:
        self.store = store
        self.record = record
        self.next_piece = 0
        self._digest = hashlib.sha256()
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None

    def advance(self, done: Set[int]) -> None:
        """Fold in the stored pieces that now follow on, in the background."""
        if self.next_piece in done and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._advance(done))

    async def _advance(self, done: Set[int]) -> None:
        while self.next_piece in done:
            await asyncio.to_thread(self._hash_piece, self.next_piece)
            self.next_piece += 1

    def _hash_piece(self, number: int) -> None:
        if self._fd is None:
            self._fd = self.store.open_for_read(self.record.task_id)
        piece = self.record.piece(number)
        for chunk in read_chunks(self._fd, piece.offset, piece.length):
            self._digest.update(chunk)

    async def finish(self, done: Set[int]) -> str:
        """The object's sha256 once every piece in ``done`` is folded in."""
        try:
            if self._task is not None:
                await self._task
            await self._advance(done)
            return self._digest.hexdigest()
        finally:
            self.close()

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
