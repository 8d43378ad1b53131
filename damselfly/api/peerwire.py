"""The peer-to-peer wire: what a child asks of a parent's upload server, and its answers.

The upload server (port 65002) of every peer serves:

- ``GET piece_stream_path(id)``: NDJSON, one message a line. ``StreamStart``
  first (geometry, headers, the pieces held), then while the parent still
  downloads ``NewPiece`` for each piece it gets, ``Alive`` when it has had
  none for a while, and ``Complete`` at the end. The stream of a task the
  parent holds whole is the one ``StreamStart`` line, ``complete`` true.
- ``GET piece_path(id)`` with ``Range`` covering exactly one piece: its bytes
  (206); 503 when no upload slot is free (not a failure: ask again later), 404
  when the piece or the task is not held.
- ``POST /v1/seed`` (``scheduler.SEED_PATH``): from the scheduler, not peers.

During a rolling update peers of two versions stream to each other, so the
key names never change, unknown fields are ignored and a line of an unknown
kind is skipped (``parse_line`` returns None). Extend the wire with optional
fields or new kinds of line, each recognised by a key of its own.
"""

from __future__ import annotations

import json

from pydantic import Field, ValidationError, field_validator

from damselfly.api.scheduler import Digest, Model
from damselfly.errors import TransferError, describe_validation

PIECE_STREAM_ROUTE = "/v1/tasks/{task_id}/pieces"
PIECE_ROUTE = "/v1/tasks/{task_id}"
STREAM_CONTENT_TYPE = "application/x-ndjson"


def piece_stream_path(task_id: str) -> str:
    return PIECE_STREAM_ROUTE.format(task_id=task_id)


def piece_path(task_id: str) -> str:
    return PIECE_ROUTE.format(task_id=task_id)


class StreamStart(Model):
    """The first line: enough for a child to start its record, and the pieces held now."""

    size: int | None = None  # None while the parent does not know it yet
    piece_length: int
    headers: dict[str, str] = Field(default_factory=dict)
    pieces: dict[int, Digest] = Field(default_factory=dict)  # keys are strings in JSON
    complete: bool = False

    @field_validator("headers", "pieces", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # Earlier peers read a null here as nothing; so do we.
        return {} if value is None else value


class NewPiece(Model):
    """The parent has one more piece."""

    piece: int
    digest: Digest


class Alive(Model):
    """Still downloading, just slowly: so that children do not take silence for a stall."""

    alive: bool = True


class Complete(Model):
    """The parent holds the whole object now."""

    complete: bool = True
    size: int | None = None


Message = StreamStart | NewPiece | Alive | Complete

# The key that tells each kind of line, in the order they are tried.
_KINDS: tuple[tuple[str, type[Message]], ...] = (
    ("pieceLength", StreamStart),
    ("piece", NewPiece),
    ("complete", Complete),
    ("alive", Alive),
)


class BadLine(TransferError, ValueError):
    """A line of the piece stream that is not JSON, or a known kind with bad fields."""


def parse_line(line: bytes | str) -> Message | None:
    """One line of the piece stream as its message; None for a kind this version does not know."""
    try:
        data = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise BadLine(f"piece stream line is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadLine(f"piece stream line is not a JSON object: {line[:80]!r}")
    for key, kind in _KINDS:
        if key in data:
            try:
                return kind.model_validate(data)
            except ValidationError as exc:
                raise BadLine(f"bad {kind.__name__} line: {describe_validation(exc)}") from None
    return None


def render(message: Message) -> bytes:
    """One line of the piece stream: compact JSON and a newline."""
    return message.to_json() + b"\n"
