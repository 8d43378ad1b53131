"""One task's download as its clients see it: how it started, the pieces done, the outcome.

The creator of a ``Download`` learns first what the origin said (``wait_started``:
a record to serve from, the origin's own answer to relay, or a pass-through);
clients then wait for the pieces they need (``wait_piece``) while the fetch
(fetch.py) brings the rest. This class holds only that observable state; how the
pieces are fetched is fetch.py's business, and it reports here.

When the object's sha256 is known, the last piece is held back until the whole
object has been verified, so a client never completes a download of wrong bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from damselfly.errors import TransferError
from damselfly.peer.net.httputil import describe_error
from damselfly.peer.rules.taskid import TaskKey
from damselfly.peer.store.piecestore import PieceStore, TaskRecord


class DownloadFailed(TransferError):
    """The download cannot finish; clients still reading must be cut off."""


class ObjectChangedUnderDownload(DownloadFailed):
    """The origin now serves another version than the pieces stored so far: those are
    dropped, and the scheduler told, so that no later download mixes them in."""


@dataclass
class OriginAnswer:
    """A non-2xx origin answer, handed to the client as it came; nothing is cached."""

    response: aiohttp.ClientResponse


@dataclass(frozen=True)
class PassThrough:
    """Not kept (the origin forbids it, or there is no room): the client gets the
    object straight from the origin. An outcome, not an error."""

    reason: str


# What ``wait_started`` returns: serve from the record, relay the answer, or forward.
Start = TaskRecord | OriginAnswer | PassThrough


class Download:
    def __init__(self, key: TaskKey, store: PieceStore) -> None:
        self.key = key
        self.store = store
        self.record: TaskRecord | None = None
        self.answer: OriginAnswer | None = None
        self.pass_through: PassThrough | None = None
        self.error: BaseException | None = None
        self.complete = False
        self.last_progress = time.monotonic()
        self._done: set[int] = set()
        self._held_back: int | None = None  # piece withheld until the object is verified
        self._sources: dict[int, str] = {}  # piece number -> origin | parent
        self._started = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # --- running it ------------------------------------------------------------
    def start(
        self, fetch: Callable[[], Awaitable[None]], on_finish: Callable[[Download], None]
    ) -> None:
        """Run ``fetch`` (which reports here) in the background; then ``on_finish``."""

        async def run() -> None:
            try:
                await fetch()
            except asyncio.CancelledError:
                if not self.complete and self.error is None:
                    # Clients waiting for pieces are cut, not left waiting forever.
                    self.failed(DownloadFailed("the download was stopped (peer shutting down)"))
                raise
            finally:
                self._started.set()
                await self.notify()
                on_finish(self)

        self._task = asyncio.create_task(run(), name=f"download-{self.key.task_id[:12]}")

    async def cancel(self) -> None:
        """Stop downloading (peer shutdown); what was stored stays for a resume."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # --- what the fetch reports ----------------------------------------------------
    def began(self, start: Start) -> None:
        """The origin (or a parent) answered: clients may begin."""
        if isinstance(start, TaskRecord):
            self.record = start
            self._done = set(start.pieces)
        elif isinstance(start, OriginAnswer):
            self.answer = start
        else:
            self.pass_through = start
        self._started.set()

    def hold_back(self, number: int | None) -> None:
        """Keep piece ``number`` from clients until the object is verified."""
        self._held_back = number

    async def piece_stored(
        self, number: int, length: int, digest: str, source: str, may_complete: bool = True
    ) -> None:
        """A piece is written and checked. The one that completes an object needing
        no verification completes the task before any client can be sent it
        (``may_complete`` False: the caller still has checks to make)."""
        record = self.record
        assert record is not None
        self._sources[number] = source
        self.store.record_piece(record, number, length, digest)
        record.pieces[number] = digest
        self._done.add(number)
        if may_complete and self._held_back is None and self.all_stored():
            self.finish()
        self.last_progress = time.monotonic()
        await self.notify()

    def finish(self) -> None:
        """Complete in the store, then the last piece may go out: whoever asks after the
        first client's last byte finds a complete task (a hit), not a download closing."""
        record = self.record
        assert record is not None
        self.store.mark_complete(record.task_id)
        record.complete = True
        self.complete = True
        self._held_back = None

    def failed(self, error: BaseException) -> None:
        self.error = error

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- what clients and the fetch read ---------------------------------------------
    @property
    def done(self) -> frozenset[int]:
        return frozenset(self._done)

    def missing(self) -> list[int]:
        """Pieces not stored yet, in order (none while the size is unknown)."""
        total = self.record.total_pieces if self.record is not None else None
        return [n for n in range(total or 0) if n not in self._done]

    def all_stored(self) -> bool:
        record = self.record
        total = record.total_pieces if record is not None else None
        return total is not None and set(range(total)) <= self._done

    async def wait_started(self) -> Start:
        """Until the origin answered; DownloadFailed if the download failed first."""
        await self._started.wait()
        if self.record is not None:
            return self.record
        if self.answer is not None:
            return self.answer
        if self.pass_through is not None:
            return self.pass_through
        raise DownloadFailed(self._failure())

    def servable(self, number: int) -> bool:
        return number in self._done and number != self._held_back

    async def wait_piece(self, number: int) -> bool:
        """Wait until piece ``number`` may be served. False: the object has no such piece."""
        async with self._changed:
            while True:
                if self.servable(number):
                    return True
                if self.error is not None:
                    raise DownloadFailed(self._failure())
                record = self.record
                total = record.total_pieces if record is not None else None
                if self.complete or (total is not None and number >= total):
                    return self.servable(number)
                await self._changed.wait()

    def piece_source(self, number: int) -> str:
        """Where piece ``number`` came from: origin, parent, or local (stored before)."""
        return self._sources.get(number, "local")

    def servable_pieces(self) -> dict[int, str]:
        record = self.record
        if record is None:
            return {}
        return {n: d for n, d in record.pieces.items() if self.servable(n)}

    async def wait_progress(self, known: int) -> None:
        """Until more than ``known`` pieces are servable, or the download ends."""
        await self._wait_for(lambda: len(self.servable_pieces()) > known or self.complete)

    async def wait_complete(self) -> None:
        await self._wait_for(lambda: self.complete)

    async def _wait_for(self, reached: Callable[[], bool]) -> None:
        """Until ``reached()``; DownloadFailed if the download fails first."""
        async with self._changed:
            while not reached():
                if self.error is not None:
                    raise DownloadFailed(self._failure())
                await self._changed.wait()

    def _failure(self) -> str:
        if self.error is not None:
            return describe_error(self.error)
        return "download failed before it started"
