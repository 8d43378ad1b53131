"""Fetching one task's pieces into the store, reporting to its ``Download``.

The order of business: ask the scheduler (``SchedulerSession``) for parents; if
one answers, take pieces from parents (``Swarm``) and fill what they cannot give
from the origin; otherwise take the object from the origin, by ranges when it
honours them, else as one body cut into pieces. Every piece goes through one
``PieceWriter`` checked against ``expected_digest``; a sha256-addressed object
is verified whole before its last piece is released.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, Protocol

import aiohttp

from damselfly.api import scheduler as api
from damselfly.config.peer import TransferSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.net.httputil import describe_error
from damselfly.peer.store import space
from damselfly.peer.store.objecthash import ObjectHasher
from damselfly.peer.store.pieces import piece_length
from damselfly.peer.store.piecestore import PieceStore, StoreFull, TaskRecord
from damselfly.peer.store.writer import PieceLengthWrong, PieceMismatch
from damselfly.peer.transfer import origin
from damselfly.peer.transfer.download import (
    Download,
    DownloadFailed,
    ObjectChangedUnderDownload,
    OriginAnswer,
    PassThrough,
)
from damselfly.peer.transfer.parents import ParentBusy, ParentError, ParentTransport
from damselfly.peer.transfer.session import SchedulerSession
from damselfly.peer.transfer.sources import OriginSource, PieceSource, body_chunks
from damselfly.peer.transfer.sources import ParentSource as OneParent
from damselfly.peer.transfer.swarm import Swarm, TaskInfo

log = logging.getLogger(__name__)


class Keeper(Protocol):
    """What a download needs from whoever keeps the store in bounds (the Cache)."""

    async def reserve(self, size: int) -> None:
        """Make room for ``size`` bytes; StoreFull if there is none."""

    def pieces_corrupt(self, record: TaskRecord, numbers: list[int]) -> None:
        """Stored pieces failed their digest: the one reaction to that."""

    def drop(self, record: TaskRecord, reason: str) -> None:
        """Remove a task whose stored bytes must not be served or resumed."""

    def disk_full(self, record: TaskRecord | None, error: str) -> None:
        """A write found no space: drop the partial task and free room at once."""


@dataclass
class P2P:
    """How downloads reach the swarm: a scheduler session per task, the parents'
    transport, and how long to wait for a quiet swarm before using the origin."""

    sessions: Callable[[str], SchedulerSession]
    parents: ParentTransport
    stall_timeout: float


def expected_digest(
    number: int, swarm: Mapping[int, str], claimed: Mapping[int, str] | None = None
) -> str | None:
    """The digest piece ``number`` must match, from whatever source it comes.

    The swarm's (the first producer's, as the scheduler recorded it) comes first:
    every copy of a task must be the same bytes, and a piece from the origin that
    differs means the object changed under the swarm. Else what the parent
    serving the piece claims for it. None: this peer is the first producer.
    """
    if number in swarm:
        return swarm[number]
    return claimed.get(number) if claimed is not None else None


class Fetch:
    """One run of fetching a task; ``run`` reports to ``download`` as it goes."""

    def __init__(
        self,
        download: Download,
        source: OriginSource,
        keeper: Keeper,
        metrics: PeerMetrics,
        session: SchedulerSession,
        p2p: P2P | None,
        transfer: TransferSection,
        back_to_source: bool = False,
    ) -> None:
        self.download = download
        self.key = download.key
        self.store: PieceStore = download.store
        self.origin = source
        self.keeper = keeper
        self.metrics = metrics
        self.session = session
        self.p2p = p2p
        self.transfer = transfer
        self.back_to_source = back_to_source
        self.swarm_digests: dict[int, str] = {}  # from the scheduler: the first producer's
        self._object_hash: ObjectHasher | None = None
        self._reschedules = 0
        self._last_refresh = time.monotonic()

    async def run(self) -> None:
        began = time.monotonic()
        outcome = "failed"
        record: TaskRecord | None = None
        error: str | None = None
        changed = False
        try:
            record = await self._fetch()
            outcome = "complete" if record is not None else "answered"
        except StoreFull as exc:
            self.download.began(PassThrough(str(exc)))
            error = str(exc)
            log.warning("download failed", extra={"task": self.key.task_id, "error": error})
        except Exception as exc:
            if space.is_disk_full(exc) and not isinstance(exc, space.DiskFull):
                exc = space.DiskFull(f"no space left for the download: {describe_error(exc)}")
            self.download.failed(exc)
            error = describe_error(exc)
            log.warning("download failed", extra={"task": self.key.task_id, "error": error})
            if isinstance(exc, space.DiskFull):
                self.keeper.disk_full(self.download.record, error)
            if isinstance(exc, ObjectChangedUnderDownload):
                changed = True
                if self.download.record is not None:
                    self.keeper.drop(self.download.record, "changed")
        finally:
            if self._object_hash is not None:
                self._object_hash.close()
        if self.download.pass_through is not None and error is None:
            outcome = "not_cacheable"
            error = self.download.pass_through.reason
        elif self.download.answer is not None:
            error = f"origin answered {self.download.answer.response.status}"
        record = record or self.download.record
        self.session.finished(
            record.size if record else None,
            record.piece_length if record else None,
            error,
            changed,
        )
        if self.download.answer is None:
            self.metrics.task_duration.labels(outcome=outcome).observe(time.monotonic() - began)

    async def _fetch(self) -> TaskRecord | None:
        """The stored record, complete; None when the origin's answer went to the client."""
        schedule = None
        if self.p2p is not None and not self.back_to_source:
            schedule = await self.session.register(
                self.origin.url, self.origin.headers, self.key.sha256
            )
        record = None
        if schedule is not None and schedule.parents:
            record = await self._from_swarm(schedule)
        if record is None:
            self.swarm_digests = {}  # no parent piece in this copy: nothing to mix with
            record = await self._from_origin()
            if record is None:
                return None
        await self._verify_object(record)
        if not self.download.complete:  # held back for verification, or no pieces at all
            self.download.finish()
            await self.download.notify()
        return record

    # --- where the pieces come from ----------------------------------------------
    async def _from_origin(self) -> TaskRecord | None:
        result = await self.origin.stat()
        if not result.ok:
            self.download.began(OriginAnswer(result.response))
            return None
        try:
            forbidden = self.key.sha256 is None and origin.not_cacheable(
                result.response.headers.get("Cache-Control")
            )
            if forbidden:
                self.download.began(PassThrough(f"origin says Cache-Control: {forbidden}"))
                return None
            record = await self._open_record(
                result.size, None, origin.stored_headers(result.response), result.honours_range
            )
            if result.honours_range and result.size is not None:
                result.response.release()
                await self._fetch_pieces(record, None)
            else:
                await self._cut_body(record, body_chunks(result.response))
        finally:
            result.response.release()
        return record

    async def _from_swarm(self, schedule: api.Schedule) -> TaskRecord | None:
        """Pieces from parents (the origin fills what they cannot); None: no parent answered."""
        assert self.p2p is not None
        swarm = Swarm(self.key.task_id, self.p2p.parents, self.transfer)
        self.swarm_digests = dict(schedule.piece_digests)
        swarm.add(schedule.parents)
        try:
            info = await self._first_parent_info(swarm)
            if info is None or info.size is None:
                log.info(
                    "no parent answered; going to the origin", extra={"task": self.key.task_id}
                )
                return None
            record = await self._open_record(info.size, info.piece_length, info.headers, True)
            await self._fetch_pieces(record, swarm)
            return record
        finally:
            await swarm.close()

    async def _first_parent_info(self, swarm: Swarm) -> TaskInfo | None:
        assert self.p2p is not None
        deadline = time.monotonic() + self.p2p.stall_timeout
        while swarm.info() is None and swarm.alive() and time.monotonic() < deadline:
            await swarm.wait_news(deadline - time.monotonic())
        return swarm.info()

    async def _open_record(
        self, size: int | None, length: int | None, headers: dict[str, str], resumable: bool
    ) -> TaskRecord:
        """The task's record, told to the download: the stored half-download when it is
        the same object (its pieces checked again: a crash can lose data writes), else new."""
        length = length or piece_length(size)
        previous = self.store.get(self.key.task_id)
        if (
            previous is not None
            and not previous.complete
            and resumable
            and previous.size == size
            and previous.piece_length == length
            and _same_validators(previous.headers, headers)
        ):
            bad = await asyncio.to_thread(self.store.failing_pieces, previous)
            if bad:
                self.keeper.pieces_corrupt(previous, bad)
            log.info(
                "resuming",
                extra={"task": self.key.task_id, "pieces": len(previous.pieces), "bad": bad},
            )
            record = previous
        else:
            if size is not None:
                await self.keeper.reserve(size)
            record = self.store.begin(
                self.key.task_id, self.key.cache_url, size, length, self.key.sha256, headers
            )
        if record.sha256 is not None:
            self._object_hash = ObjectHasher(self.store, record)
        self.origin.validator = origin.Validator.of(record.headers)
        self.download.began(record)
        return record

    async def _fetch_pieces(self, record: TaskRecord, swarm: Swarm | None) -> None:
        """Fetch every missing piece, each from a parent that has it or else the origin."""
        total = record.total_pieces or 0
        if self.key.sha256 is not None and total:
            self.download.hold_back(total - 1)
        elif self._object_hash is None and self.download.all_stored():
            self.download.finish()  # resumed with every piece stored, or an empty object
        in_flight: set[int] = set()
        failures: dict[int, int] = {}
        fd = self.store.open_for_write(record.task_id)

        async def worker() -> None:
            while True:
                wanted = [n for n in self.download.missing() if n not in in_flight]
                if not wanted:
                    return
                source: PieceSource = self.origin
                number = wanted[0]
                if swarm is not None and not self._stalled(swarm):
                    reader_next = min(wanted[0], min(in_flight, default=wanted[0]))
                    choice = swarm.pick(wanted, reader_next)
                    if choice is None:
                        await self._wait_for_parents(swarm)
                        continue
                    number, link = choice
                    source = OneParent(swarm, link)
                in_flight.add(number)
                try:
                    await self._fetch_piece(record, fd, number, source, swarm)
                except origin.RangeIgnored:
                    raise  # no piece can come from this origin alone: read it whole
                except ParentBusy:
                    pass  # the parent backs off by itself; another holder or piece next
                except ParentError as exc:
                    self._parent_failed(swarm, exc)
                except origin.ObjectChanged as exc:
                    raise ObjectChangedUnderDownload(
                        f"piece {number}: the object changed at the origin during the "
                        f"download ({exc})"
                    ) from exc
                except (aiohttp.ClientError, OSError, TimeoutError, origin.OriginError) as exc:
                    if space.is_disk_full(exc):  # no retry fills a full disk
                        raise space.DiskFull(
                            f"piece {number}: no space left: {describe_error(exc)}"
                        ) from exc
                    failures[number] = failures.get(number, 0) + 1
                    if failures[number] >= self.transfer.piece_attempts:
                        raise DownloadFailed(
                            f"piece {number} failed {failures[number]} times: {describe_error(exc)}"
                        ) from exc
                    log.info(
                        "piece retry",
                        extra={"task": record.task_id, "piece": number, "error": str(exc)},
                    )
                    await asyncio.sleep(0.2 * failures[number])
                finally:
                    in_flight.discard(number)

        count = self.transfer.swarm_workers if swarm is not None else self.transfer.origin_workers
        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(count, total)))]
        try:
            await asyncio.gather(*workers)
        except origin.RangeIgnored:
            # Reached when parents fail and the origin turns out to send only
            # whole bodies: P2P trouble must not fail the download.
            log.info(
                "origin ignores Range; reading its whole body", extra={"task": self.key.task_id}
            )
        else:
            return
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            os.close(fd)
        await self._refill_from_body(record)

    async def _fetch_piece(
        self, record: TaskRecord, fd: int, number: int, source: PieceSource, swarm: Swarm | None
    ) -> None:
        began = time.monotonic()
        piece = record.piece(number)
        claimed = None
        if isinstance(source, OneParent):
            claimed = source.link.pieces
        expected = expected_digest(number, self.swarm_digests, claimed)
        writer = self.store.piece_writer(fd, piece, expected)
        assert record.size is not None
        try:
            digest = await source.fill(piece, record.size, writer)
        except PieceMismatch as exc:
            self._mismatch(exc, source)
        self.metrics.downloaded_bytes.labels(source=source.name).inc(piece.length)
        seconds = time.monotonic() - began
        log.debug(
            "piece stored",
            extra={
                "task": record.task_id,
                "piece": number,
                "source": source.host_id or "origin",
                "seconds": round(seconds, 3),
            },
        )
        await self._stored(number, piece.length, digest, source.name)
        self.session.piece_done(piece, digest, seconds, source.host_id)

    def _mismatch(self, exc: PieceMismatch, source: PieceSource) -> NoReturn:
        """A piece that is not what it must be: a parent is blocked, an origin changed."""
        if source.host_id is not None:
            self.metrics.integrity_failures.labels(kind="parent").inc()
            raise ParentError(
                source.host_id, "corrupt", f"piece {exc.piece.number} from {source.host_id}: {exc}"
            ) from exc
        raise ObjectChangedUnderDownload(
            f"piece {exc.piece.number} from the origin has digest {exc.digest}, the swarm's "
            f"is {exc.expected}: the object changed"
        ) from exc

    async def _stored(
        self, number: int, length: int, digest: str, source: str, may_complete: bool = True
    ) -> None:
        await self.download.piece_stored(number, length, digest, source, may_complete)
        if self._object_hash is not None:
            self._object_hash.advance(self.download.done)

    # --- an origin that sends whole bodies -------------------------------------------
    async def _refill_from_body(self, record: TaskRecord) -> None:
        """Read the origin's one body for the same object, storing the pieces still missing."""
        assert record.size is not None
        result = await self.origin.stat()
        try:
            if not result.ok or result.honours_range or result.size not in (None, record.size):
                raise DownloadFailed(
                    f"origin answered {result.response.status} (size {result.size}) to a "
                    f"whole-body GET; expected 200 with {record.size} bytes"
                )
            await self._cut_body(record, body_chunks(result.response))
        finally:
            result.response.release()

    async def _cut_body(self, record: TaskRecord, chunks: AsyncIterator[bytes]) -> None:
        """Cut one origin body into pieces, storing those not stored yet.

        A piece is stored only once it is known whether another byte follows, so
        the last piece is known as such (and can be held back for verification)
        even when the body's length was not announced.
        """
        body = _ExactReader(chunks)
        fd = self.store.open_for_write(record.task_id)
        deferred: tuple[int, int, str] | None = None  # the last piece missing, stored at the end
        try:
            number = 0
            while record.size is None or number < (record.total_pieces or 0):
                piece = record.piece(number)
                if number in self.download.done:
                    await body.skip(piece.length)
                    number += 1
                    continue
                writer = self.store.piece_writer(
                    fd,
                    piece,
                    expected_digest(number, self.swarm_digests),
                    short_ok=record.size is None,
                )
                await writer.consume(body.take(piece.length))
                if record.size is None and not writer.written:
                    self._learn_size(record, piece.offset)  # ended on a piece boundary
                    break
                try:
                    digest = writer.finish()
                except PieceLengthWrong as exc:
                    raise DownloadFailed(f"origin body ended early: {exc}") from exc
                except PieceMismatch as exc:
                    self._mismatch(exc, self.origin)
                self.metrics.downloaded_bytes.labels(source="origin").inc(writer.written)
                more = await body.more()
                if record.size is None:
                    last = not more
                    if last:
                        self._learn_size(record, piece.offset + writer.written)
                else:
                    last = number == (record.total_pieces or 0) - 1
                    if last and more:
                        raise DownloadFailed(
                            f"origin sent more than the object's {record.size} bytes"
                        )
                if last and self.key.sha256 is not None:
                    self.download.hold_back(number)
                if not last and self.download.missing() == [number]:
                    deferred = (number, writer.written, digest)
                else:
                    await self._stored(number, writer.written, digest, "origin", last)
                    self.session.piece_done(record.piece(number), digest, 0.0, None)
                number += 1
                if last:
                    break
            if await body.more():
                raise DownloadFailed(f"origin sent more than the object's {record.size} bytes")
            if deferred is not None:
                await self._stored(*deferred, "origin")
                self.session.piece_done(record.piece(deferred[0]), deferred[2], 0.0, None)
            if not self.download.all_stored():
                raise DownloadFailed(f"origin body ended before the object's {record.size} bytes")
        finally:
            os.close(fd)

    def _learn_size(self, record: TaskRecord, size: int) -> None:
        """A body of unknown length ended: now the object's size is known."""
        self.store.set_size(record.task_id, size)
        record.size = size

    # --- the swarm ---------------------------------------------------------------
    def _stalled(self, swarm: Swarm) -> bool:
        """No usable parent, or no news from any parent for too long: use the origin."""
        assert self.p2p is not None
        if not swarm.alive():
            return True
        quiet = time.monotonic() - max(swarm.last_news, self.download.last_progress)
        return quiet > self.p2p.stall_timeout

    async def _wait_for_parents(self, swarm: Swarm) -> None:
        """No parent has a piece we want: wait for news, and now and then ask for parents.

        Peers that joined after us may hold what we need; a refresh (at most
        once a second) learns of them. When every parent is gone it is a real
        reschedule, and those are limited.
        """
        await swarm.wait_news(0.5)
        if not swarm.alive():
            if self._reschedules < self.transfer.reschedule_limit:
                self._reschedules += 1
                await self._reschedule(swarm, refresh=False)
        elif time.monotonic() - self._last_refresh >= self.transfer.parent_refresh:
            await self._reschedule(swarm, refresh=True)

    async def _reschedule(self, swarm: Swarm, refresh: bool) -> None:
        self._last_refresh = time.monotonic()
        schedule = await self.session.reschedule(swarm.blocked_ids(), refresh)
        if schedule is not None:
            self.swarm_digests.update(schedule.piece_digests)
            swarm.add(schedule.parents)

    def _parent_failed(self, swarm: Swarm | None, exc: ParentError) -> None:
        log.info(
            "parent failed",
            extra={
                "task": self.key.task_id,
                "parent": exc.host_id,
                "reason": exc.reason,
                "error": str(exc),
            },
        )
        if swarm is not None:
            swarm.block(exc.host_id)
        self.session.parent_failed(exc.host_id, exc.reason)

    async def _verify_object(self, record: TaskRecord) -> None:
        """With a known sha256, check the whole stored object before releasing its end."""
        if self._object_hash is None:
            return
        actual = await self._object_hash.finish(self.download.done)
        if actual != record.sha256:
            self.metrics.integrity_failures.labels(kind="object").inc()
            self.store.delete(record.task_id, record.created)
            raise DownloadFailed(
                f"object sha256 is {actual}, expected {record.sha256}: entry dropped"
            )


def _same_validators(old: dict[str, str], new: dict[str, str]) -> bool:
    """Resume only when the origin says it is the same object."""
    for name in ("ETag", "Last-Modified"):
        if old.get(name) or new.get(name):
            return old.get(name) == new.get(name)
    return True


class _ExactReader:
    """Cuts a stream of chunks into consecutive spans of given lengths, without copies."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = memoryview(b"")

    async def _fill(self) -> bool:
        while not self._rest:
            try:
                self._rest = memoryview(await anext(self._chunks))
            except StopAsyncIteration:
                return False
        return True

    async def take(self, length: int) -> AsyncIterator[memoryview]:
        """The next ``length`` bytes, fewer only if the stream ends first."""
        while length and await self._fill():
            part = self._rest[:length]
            self._rest = self._rest[len(part) :]
            length -= len(part)
            yield part

    async def skip(self, length: int) -> None:
        async for _ in self.take(length):
            pass

    async def more(self) -> bool:
        return await self._fill()
