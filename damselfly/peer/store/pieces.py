"""Piece geometry: how an object of a given size is cut into pieces."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
MIN_PIECE = 4 * MiB
MAX_PIECE = 64 * MiB
TARGET_PIECES = 500
# Pieces of a body whose length the origin did not tell us.
UNKNOWN_SIZE_PIECE = MIN_PIECE


def piece_length(size: int | None) -> int:
    """Next power of two of size/500, clamped to 4-64 MiB (1 GiB -> 4 MiB)."""
    if size is None or size <= 0:
        return UNKNOWN_SIZE_PIECE
    wanted = -(-size // TARGET_PIECES)  # ceil
    length = 1 << (wanted - 1).bit_length()
    return max(MIN_PIECE, min(MAX_PIECE, length))


def piece_count(size: int, length: int) -> int:
    return -(-size // length) if size > 0 else 0


@dataclass(frozen=True)
class Piece:
    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        """Offset one past the piece's last byte."""
        return self.offset + self.length


def piece_at(number: int, size: int, length: int) -> Piece:
    offset = number * length
    if number < 0 or offset >= size:
        raise IndexError(f"piece {number} is outside an object of {size} bytes")
    return Piece(number, offset, min(length, size - offset))


def pieces_covering(start: int, end: int, length: int) -> range:
    """Numbers of the pieces holding bytes [start, end) of the object."""
    if end <= start:
        return range(0)
    return range(start // length, (end - 1) // length + 1)
