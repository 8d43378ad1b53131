"""The one way bytes enter a data file: a writer that writes and hashes exactly one piece.

Every source (a ranged origin GET, a parent's piece, a slice of one whole origin
body) hands its bytes to a ``PieceWriter``; ``finish`` says whether exactly the
piece's length arrived and whether its digest matches the one it must match.
Hashing and writing happen off the event loop, on the bytes as received (no copy).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable
from typing import TYPE_CHECKING

from damselfly.errors import TransferError
from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.pieces import Piece

if TYPE_CHECKING:
    from damselfly.peer.store.piecestore import PieceStore

# Bytes handed to the writer thread at a time: fewer thread hops, bounded memory.
WRITE_BUFFER = 1 << 20


class PieceLengthWrong(TransferError):
    """A source sent more bytes than the piece holds, or its body ended early."""


class PieceMismatch(TransferError):
    """A piece's bytes do not hash to the digest it had to match."""

    def __init__(self, piece: Piece, digest: str, expected: str) -> None:
        super().__init__(f"piece {piece.number} has digest {digest}, expected {expected}")
        self.piece = piece
        self.digest = digest
        self.expected = expected


class PieceWriter:
    """Writes one piece at its offset through ``fd``, hashing it as it goes.

    ``expected``: the digest the piece must match (``None`` when this peer is the
    first to produce it); it also picks the algorithm, so an older store's bare
    sha256 digests still compare. ``short_ok``: the piece may end early (the last
    piece of a body whose length was not known).
    """

    def __init__(
        self,
        store: PieceStore,
        fd: int,
        piece: Piece,
        expected: str | None,
        short_ok: bool = False,
    ) -> None:
        self.store = store
        self.fd = fd
        self.piece = piece
        self.expected = expected
        self.short_ok = short_ok
        self.written = 0
        self._hasher = PieceHasher(expected)

    def write(self, chunk: bytes | memoryview) -> None:
        """Hash and write one chunk now (blocking: from a worker thread)."""
        self._write_batch([chunk], len(chunk))

    async def consume(self, chunks: AsyncIterable[bytes] | AsyncIterable[memoryview]) -> None:
        """Hash and write every chunk, about ``WRITE_BUFFER`` bytes per thread hop."""
        pending: list[bytes | memoryview] = []
        pending_bytes = 0
        async for chunk in chunks:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= WRITE_BUFFER:
                await self._flush(pending, pending_bytes)
                pending, pending_bytes = [], 0
        if pending:
            await self._flush(pending, pending_bytes)

    async def _flush(self, batch: list[bytes | memoryview], count: int) -> None:
        self._check_room(count)
        await finish_even_if_cancelled(asyncio.to_thread(self._write_batch, batch, count))

    def _check_room(self, count: int) -> None:
        if self.written + count > self.piece.length:
            raise PieceLengthWrong(
                f"piece {self.piece.number}: more than its {self.piece.length} bytes arrived"
            )

    def _write_batch(self, batch: list[bytes | memoryview], count: int) -> None:
        self._check_room(count)
        for chunk in batch:
            self._hasher.update(chunk)
        self.store.write_at(self.fd, self.piece.offset + self.written, batch)
        self.written += count

    def finish(self) -> str:
        """The piece's digest, once it is whole and matches what it must match."""
        if self.written != self.piece.length and not (self.short_ok and self.written):
            raise PieceLengthWrong(
                f"piece {self.piece.number}: body ended after {self.written} of "
                f"{self.piece.length} bytes"
            )
        digest = self._hasher.digest()
        if self.expected is not None and digest != self.expected:
            raise PieceMismatch(self.piece, digest, self.expected)
        return digest


async def finish_even_if_cancelled(work: Awaitable[None]) -> None:
    """Await ``work``; if cancelled, still wait for it before re-raising.

    A thread writing through a file descriptor cannot be stopped; the caller
    closes that descriptor once we return, and its number could be reused by
    another task's file while the thread still writes.
    """
    future = asyncio.ensure_future(work)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise
