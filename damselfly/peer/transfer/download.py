"""One task's download into the store, shared by every client asking for it.

The creator of a ``Download`` learns first what the origin said (``wait_started``);
clients then wait for the pieces they need (``wait_piece``) while workers fetch
the rest. Each piece comes from a parent peer that holds it or else from the
origin, and every piece is hashed (BLAKE3, see piecedigest) as it is written.
When the object's sha256 is known, the last piece is held back until the whole
object has been verified, so a client never completes a download of wrong bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient, SchedulerError
from damselfly.config.peer import TransferSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.net.httputil import describe_error
from damselfly.peer.rules.taskid import TaskKey
from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.objecthash import ObjectHasher
from damselfly.peer.store.pieces import Piece, piece_length
from damselfly.peer.store.piecestore import PieceStore, TaskRecord
from damselfly.peer.transfer import origin
from damselfly.peer.transfer.rangefetch import RangeFetcher
from damselfly.peer.transfer.reporter import PieceReporter
from damselfly.peer.transfer.swarm import ParentBusy, ParentError, ParentLink, Swarm, TaskInfo

log = logging.getLogger(__name__)

WRITE_BUFFER = 1 << 20
# Request headers a seed needs to fetch the same URL (LFS hrefs carry auth headers).
SEED_HEADERS = ("authorization", "cookie", "x-amz-security-token")


class DownloadFailed(RuntimeError):
    """The download cannot finish; clients still reading must be cut off."""


class NotCacheable(DownloadFailed):
    """The origin forbids keeping this response: clients get it passed through."""


@dataclass
class OriginAnswer:
    """A non-2xx origin answer, handed to the client as it came; nothing is cached."""

    response: aiohttp.ClientResponse


# A hook that may reserve room in the store; raises StoreFull when it cannot.
Reserve = Callable[[int], Awaitable[None]]


@dataclass
class P2P:
    """How downloads reach the swarm: the scheduler and the limits on waiting for it."""

    client: SchedulerClient
    host_id: str
    piece_timeout: float
    stall_timeout: float


class Download:
    def __init__(
        self,
        key: TaskKey,
        url: str,
        headers: CIMultiDict[str],
        store: PieceStore,
        session: aiohttp.ClientSession,
        fetcher: RangeFetcher,
        metrics: PeerMetrics,
        reserve: Reserve,
        p2p: P2P | None = None,
        back_to_source: bool = False,
        transfer: TransferSection | None = None,
    ) -> None:
        self.key = key
        self.transfer = transfer or TransferSection()
        self.url = url
        self.p2p = p2p
        self.back_to_source = back_to_source
        self.headers = origin.forwardable_request_headers(headers)
        self.store = store
        self.session = session
        self.fetcher = fetcher
        self.metrics = metrics
        self.reserve = reserve
        self.record: TaskRecord | None = None
        self.answer: OriginAnswer | None = None
        self.error: BaseException | None = None
        self.complete = False
        self._done: set[int] = set()
        self._held_back: int | None = None  # piece withheld until the object is verified
        self._started = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._digests: dict[int, str] = {}  # from the scheduler: the first producer's
        self._reports: set[asyncio.Task[None]] = set()
        self._reporter = (
            PieceReporter(p2p.client, key.task_id, p2p.host_id) if p2p is not None else None
        )
        self._last_progress = time.monotonic()
        self._reschedules = 0
        self._last_refresh = time.monotonic()
        self._sources: dict[int, str] = {}  # piece number -> origin | parent
        self._object_hash: ObjectHasher | None = None

    # --- client side --------------------------------------------------------
    def start(self, on_finish: Callable[[Download], None]) -> None:
        async def run() -> None:
            try:
                await self._run()
            finally:
                on_finish(self)

        self._task = asyncio.create_task(run(), name=f"download-{self.key.task_id[:12]}")

    async def wait_started(self) -> None:
        """Until the origin answered: the record (size, headers) or an answer exists."""
        await self._started.wait()
        if self.record is None and self.answer is None:
            raise DownloadFailed(
                describe_error(self.error) if self.error else "download failed before it started"
            )

    def servable(self, number: int) -> bool:
        return number in self._done and number != self._held_back

    async def wait_piece(self, number: int) -> bool:
        """Wait until piece ``number`` may be served. False: the object has no such piece."""
        async with self._changed:
            while True:
                if self.servable(number):
                    return True
                if self.error is not None:
                    raise DownloadFailed(describe_error(self.error))
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
                    raise DownloadFailed(describe_error(self.error))
                await self._changed.wait()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- the download itself --------------------------------------------------
    async def _run(self) -> None:
        began = time.monotonic()
        outcome = "failed"
        try:
            await self._download()
            outcome = "complete"
        except NotCacheable as exc:
            self.error = exc
            outcome = "not_cacheable"
            self._report_result(self.record, str(exc))
        except Exception as exc:
            self.error = exc
            self._report_result(self.record, describe_error(exc))
            if self.answer is None:
                log.warning(
                    "download failed",
                    extra={"task": self.key.task_id, "error": describe_error(exc)},
                )
        finally:
            if self._object_hash is not None:
                self._object_hash.close()
            self._started.set()
            await self._notify()
            if self.answer is None:
                self.metrics.task_duration.labels(outcome=outcome).observe(time.monotonic() - began)

    async def _download(self) -> None:
        schedule = await self._register() if self.p2p and not self.back_to_source else None
        record = None
        if schedule is not None and schedule.parents:
            record = await self._download_from_swarm(schedule)
        if record is None:
            record = await self._download_from_origin()
            if record is None:  # the origin's own answer goes to the client
                status = self.answer.response.status if self.answer else "no"
                self._report_result(None, f"origin answered {status}")
                return
        await self._verify_object(record)
        if not self.complete:  # held back for verification, or the object has no pieces
            self._complete(record)
            await self._notify()
        self._report_result(record, None)

    def _complete(self, record: TaskRecord) -> None:
        """Complete in the store, then the last piece may go out: whoever asks after the
        first client's last byte finds a complete task (a hit), not a download closing."""
        self.store.mark_complete(record.task_id)
        record.complete = True
        self.complete = True
        self._held_back = None

    def _all_stored(self, record: TaskRecord) -> bool:
        total = record.total_pieces
        return total is not None and len(self._done) >= total and set(range(total)) <= self._done

    async def _download_from_origin(self) -> TaskRecord | None:
        result = await origin.stat(self.session, self.url, self.headers)
        if not result.ok:
            self.answer = OriginAnswer(result.response)
            self._started.set()
            return None
        forbidden = self.key.sha256 is None and origin.not_cacheable(
            result.response.headers.get("Cache-Control")
        )
        if forbidden:
            result.response.release()
            raise NotCacheable(f"origin says Cache-Control: {forbidden}")
        try:
            record = await self._open_record(
                result.size, None, origin.stored_headers(result.response), result.honours_range
            )
            if result.honours_range and result.size is not None:
                result.response.release()
                self._started.set()
                await self._fetch_pieces(record, None)
            else:
                self._started.set()
                await self._stream_whole_body(record, result.response)
        finally:
            result.response.release()
        return record

    async def _download_from_swarm(self, schedule: api.Schedule) -> TaskRecord | None:
        """Pieces from parents (the origin fills what they cannot); None: no parent answered."""
        assert self.p2p is not None
        swarm = Swarm(self.key.task_id, self.session, self.p2p.piece_timeout, self.transfer)
        self._digests = dict(schedule.piece_digests)
        swarm.add(schedule.parents)
        try:
            info = await self._first_parent_info(swarm)
            if info is None or info.size is None:
                log.info(
                    "no parent answered; going to the origin", extra={"task": self.key.task_id}
                )
                return None
            record = await self._open_record(info.size, info.piece_length, info.headers, True)
            self._started.set()
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
        self,
        size: int | None,
        length: int | None,
        headers: dict[str, str],
        resumable: bool,
    ) -> TaskRecord:
        """The task's record: the stored half-download when it is the same object, else new."""
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
            # Resumed pieces are checked, not trusted: a crash can lose data writes.
            bad = await asyncio.to_thread(self.store.failing_pieces, previous)
            if bad:
                self.store.forget_pieces(previous, bad)
                self.metrics.integrity_failures.labels(kind="piece").inc(len(bad))
            log.info(
                "resuming",
                extra={"task": self.key.task_id, "pieces": len(previous.pieces), "bad": bad},
            )
            self._use_record(previous)
            self._done = set(previous.pieces)
            return previous
        if size is not None:
            await self.reserve(size)
        record = self.store.begin(
            self.key.task_id, self.key.cache_url, size, length, self.key.sha256, headers
        )
        self._use_record(record)
        return record

    def _use_record(self, record: TaskRecord) -> None:
        self.record = record
        if record.sha256 is not None:
            self._object_hash = ObjectHasher(self.store, record)

    async def _fetch_pieces(self, record: TaskRecord, swarm: Swarm | None) -> None:
        """Fetch every missing piece, each from a parent that has it or else the origin."""
        total = record.total_pieces or 0
        if self.key.sha256 is not None and total:
            self._held_back = total - 1
        elif self._object_hash is None and self._all_stored(record):
            self._complete(record)  # resumed with every piece stored, or an empty object
        in_flight: set[int] = set()
        failures: dict[int, int] = {}
        fd = self.store.open_for_write(record.task_id)

        async def worker() -> None:
            while True:
                wanted = [n for n in range(total) if n not in self._done and n not in in_flight]
                if not wanted:
                    return
                link: ParentLink | None = None
                number = wanted[0]
                if swarm is not None and not self._stalled(swarm):
                    reader_next = min(wanted[0], min(in_flight, default=wanted[0]))
                    choice = swarm.pick(wanted, reader_next)
                    if choice is None:
                        await self._wait_for_parents(swarm)
                        continue
                    number, link = choice
                in_flight.add(number)
                try:
                    await self._fetch_piece(record, fd, record.piece(number), swarm, link)
                except origin.RangeIgnored:
                    raise  # no piece can come from this origin alone: read it whole
                except ParentBusy:
                    pass  # the parent backs off by itself; another holder or piece next
                except ParentError as exc:
                    await self._parent_failed(swarm, exc)
                except (aiohttp.ClientError, OSError, TimeoutError, origin.OriginError) as exc:
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
        await self._fill_from_whole_body(record)

    async def _fill_from_whole_body(self, record: TaskRecord) -> None:
        """Read the origin's one body for the same object, storing the pieces still missing."""
        assert record.size is not None
        result = await origin.stat(self.session, self.url, self.headers)
        try:
            if not result.ok or result.honours_range or result.size not in (None, record.size):
                raise DownloadFailed(
                    f"origin answered {result.response.status} (size {result.size}) to a "
                    f"whole-body GET; expected 200 with {record.size} bytes"
                )
            body = _ExactReader(_body(result.response))
            fd = self.store.open_for_write(record.task_id)
            total = record.total_pieces or 0
            final: tuple[int, int, str] | None = None  # released once the body ends right
            try:
                for number in range(total):
                    piece = record.piece(number)
                    chunks = body.take(piece.length)
                    if number in self._done:
                        async for _ in chunks:
                            pass
                        continue
                    expected = self._digests.get(number)
                    digest = await self._write_stream(
                        fd, piece.offset, piece.length, chunks, expected
                    )
                    if expected is not None and digest != expected:
                        raise DownloadFailed(
                            f"piece {number} from the origin has digest {digest}, the swarm's "
                            f"is {expected}: the object changed"
                        )
                    self.metrics.downloaded_bytes.labels(source="origin").inc(piece.length)
                    if set(range(total)) - self._done == {number}:
                        final = (number, piece.length, digest)
                        continue
                    await self._piece_done(record, number, piece.length, digest)
                    self._report_piece(piece, digest, 0.0, None)
                if await body.more():
                    raise DownloadFailed(f"origin sent more than the object's {record.size} bytes")
                if final is not None:
                    await self._piece_done(record, *final)
                    self._report_piece(record.piece(final[0]), final[2], 0.0, None)
            finally:
                os.close(fd)
        finally:
            result.response.release()

    def _stalled(self, swarm: Swarm) -> bool:
        """No usable parent, or no news from any parent for too long: use the origin."""
        assert self.p2p is not None
        if not swarm.alive():
            return True
        quiet = time.monotonic() - max(swarm.last_news, self._last_progress)
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

    async def _fetch_piece(
        self,
        record: TaskRecord,
        fd: int,
        piece: Piece,
        swarm: Swarm | None,
        link: ParentLink | None,
    ) -> None:
        began = time.monotonic()
        if link is None or swarm is None:
            digest = await self._fetch_origin_piece(record, fd, piece)
            source = "origin"
        else:
            expected = self._digests.get(piece.number) or link.pieces.get(piece.number)
            try:
                digest = await self._write_stream(
                    fd, piece.offset, piece.length, swarm.fetch(link, piece), expected
                )
            except origin.OriginError as exc:
                raise ParentError(link.parent.host_id, "unreachable", str(exc)) from exc
            if digest != expected:
                self.metrics.integrity_failures.labels(kind="parent").inc()
                raise ParentError(
                    link.parent.host_id,
                    "corrupt",
                    f"piece {piece.number} from {link.parent.host_id} has digest {digest}, "
                    f"expected {expected}",
                )
            source = "parent"
        self.metrics.downloaded_bytes.labels(source=source).inc(piece.length)
        log.debug(
            "piece stored",
            extra={
                "task": record.task_id,
                "piece": piece.number,
                "source": link.parent.host_id if link else "origin",
                "seconds": round(time.monotonic() - began, 3),
            },
        )
        await self._piece_done(record, piece.number, piece.length, digest, source)
        self._report_piece(
            piece, digest, time.monotonic() - began, link.parent.host_id if link else None
        )

    async def _fetch_origin_piece(self, record: TaskRecord, fd: int, piece: Piece) -> str:
        """One piece by a ranged GET, received, hashed and written on a worker thread."""
        assert record.size is not None
        hasher = PieceHasher()
        offset = piece.offset

        def sink(chunk: memoryview) -> None:
            nonlocal offset
            hasher.update(chunk)
            self.store.write_at(fd, offset, [chunk])
            offset += len(chunk)

        await self.fetcher.fetch(
            self.url, self.headers, piece.offset, piece.end - 1, record.size, sink
        )
        return hasher.digest()

    # --- the scheduler -----------------------------------------------------------
    async def _register(self) -> api.Schedule | None:
        assert self.p2p is not None
        seed_headers = {
            name: value for name, value in self.headers.items() if name.lower() in SEED_HEADERS
        }
        try:
            return await self.p2p.client.register(
                api.RegisterTask(
                    task_id=self.key.task_id,
                    host_id=self.p2p.host_id,
                    url=self.url,
                    headers=seed_headers,
                    sha256=self.key.sha256,
                )
            )
        except SchedulerError as exc:
            log.warning(
                "scheduler unavailable; going to the origin",
                extra={"task": self.key.task_id, "error": str(exc)},
            )
            return None

    async def _reschedule(self, swarm: Swarm, refresh: bool) -> None:
        assert self.p2p is not None
        self._last_refresh = time.monotonic()
        try:
            schedule = await self.p2p.client.reschedule(
                api.Reschedule(
                    task_id=self.key.task_id,
                    host_id=self.p2p.host_id,
                    blocklist=swarm.blocked_ids(),
                    refresh=refresh,
                )
            )
        except SchedulerError:
            return
        self._digests.update(schedule.piece_digests)
        swarm.add(schedule.parents)

    async def _parent_failed(self, swarm: Swarm | None, exc: ParentError) -> None:
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
        if self.p2p is not None:
            self._spawn_report(
                self.p2p.client.parent_failed(
                    api.ParentFailed(
                        task_id=self.key.task_id,
                        host_id=self.p2p.host_id,
                        parent_host_id=exc.host_id,
                        reason=exc.reason,
                    )
                )
            )

    def _report_piece(self, piece: Piece, digest: str, seconds: float, parent: str | None) -> None:
        if self._reporter is None:
            return
        self._reporter.add(
            api.PieceReport(
                number=piece.number,
                digest=digest,
                length=piece.length,
                cost_ms=seconds * 1000,
                parent_host_id=parent,
            )
        )

    def _report_result(self, record: TaskRecord | None, error: str | None) -> None:
        """After the piece reports it follows: the scheduler sees pieces, then the end."""
        if self.p2p is None:
            return
        result = api.TaskResult(
            task_id=self.key.task_id,
            host_id=self.p2p.host_id,
            success=error is None,
            size=record.size if record else None,
            piece_length=record.piece_length if record else None,
            error=error,
        )
        client, reporter = self.p2p.client, self._reporter

        async def send() -> None:
            if reporter is not None:
                await reporter.flush()
            await client.report_result(result)

        self._spawn_report(send())

    def _spawn_report(self, call: Coroutine[Any, Any, None]) -> None:
        """Reports are best effort: the download never waits for the scheduler."""

        async def send() -> None:
            try:
                await call
            except SchedulerError as exc:
                log.debug("report not delivered", extra={"error": str(exc)})

        task = asyncio.create_task(send())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _write_stream(
        self,
        fd: int,
        offset: int,
        length: int,
        chunks: AsyncIterator[bytes] | AsyncIterator[memoryview],
        expected: str | None = None,
    ) -> str:
        """Write exactly ``length`` bytes at ``offset``, hashing them; return the digest
        (made like ``expected``, the digest it will be compared with, when there is one).

        Chunks are handed to the writer thread as received, about 1 MiB at a
        time: hashing and writing happen off the event loop, with no copy.
        """
        digest = PieceHasher(expected)
        pending: list[bytes | memoryview] = []
        pending_bytes = 0
        written = 0

        async def flush() -> None:
            nonlocal written, pending, pending_bytes
            if written + pending_bytes > length:
                raise origin.OriginError("origin sent more bytes than the range holds")
            batch, count = pending, pending_bytes
            pending, pending_bytes = [], 0
            await _finish_even_if_cancelled(
                asyncio.to_thread(self._hash_and_write, digest, fd, offset + written, batch)
            )
            written += count

        async for chunk in chunks:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= WRITE_BUFFER:
                await flush()
        if pending:
            await flush()
        if written != length:
            raise origin.OriginError(f"body ended after {written} of {length} bytes")
        return digest.digest()

    async def _piece_done(
        self,
        record: TaskRecord,
        number: int,
        length: int,
        digest: str,
        source: str = "origin",
        may_complete: bool = True,
    ) -> None:
        """A piece is stored. The one that completes an object needing no verification
        completes the task before any client can be sent it (``may_complete`` False:
        the caller still has checks to make, and this is not the last piece anyway)."""
        self._sources[number] = source
        self.store.record_piece(record, number, length, digest)
        record.pieces[number] = digest
        self._done.add(number)
        if self._object_hash is not None:
            self._object_hash.advance(self._done)
        elif may_complete and self._held_back is None and self._all_stored(record):
            self._complete(record)
        self._last_progress = time.monotonic()
        await self._notify()

    async def _stream_whole_body(
        self, record: TaskRecord, response: aiohttp.ClientResponse
    ) -> None:
        """The origin ignored Range or sent no length: cut its one body into pieces.

        A full piece is announced only when the next byte arrives, so the last
        piece is known as such and can be held back for object verification.
        """
        length = record.piece_length
        fd = self.store.open_for_write(record.task_id)
        try:
            number, filled = 0, 0
            buffered: list[bytes | memoryview] = []  # slices of received chunks, no copies
            buffered_bytes = 0
            digest = PieceHasher()
            pending: tuple[int, str] | None = None  # a full piece not yet announced

            async def flush() -> None:
                nonlocal filled, buffered, buffered_bytes
                batch, count = buffered, buffered_bytes
                buffered, buffered_bytes = [], 0
                await _finish_even_if_cancelled(
                    asyncio.to_thread(
                        self._hash_and_write, digest, fd, number * length + filled, batch
                    )
                )
                filled += count
                self.metrics.downloaded_bytes.labels(source="origin").inc(count)

            async for chunk in _body(response):
                view = memoryview(chunk)
                while view:
                    if pending is not None:
                        await self._piece_done(
                            record, pending[0], length, pending[1], may_complete=False
                        )
                        self._report_piece(record.piece(pending[0]), pending[1], 0.0, None)
                        pending = None
                    take = view[: length - filled - buffered_bytes]
                    view = view[len(take) :]
                    buffered.append(take)
                    buffered_bytes += len(take)
                    if filled + buffered_bytes == length or buffered_bytes >= WRITE_BUFFER:
                        await flush()
                    if filled == length:
                        pending = (number, digest.digest())
                        number, filled, digest = number + 1, 0, PieceHasher()
            if buffered:
                await flush()
        finally:
            os.close(fd)
        size = number * length + filled
        if record.size is not None and size != record.size:
            raise DownloadFailed(f"origin body ended after {size} of {record.size} bytes")
        if record.size is None:
            self.store.set_size(record.task_id, size)
            record.size = size
        last = (number, filled, digest.digest()) if filled else None
        if last is None and pending is not None:
            last = (pending[0], length, pending[1])
        if last is not None:
            if self.key.sha256 is not None:
                self._held_back = last[0]
            await self._piece_done(record, *last)
            self._report_piece(record.piece(last[0]), last[2], 0.0, None)

    def _hash_and_write(
        self, digest: PieceHasher, fd: int, offset: int, chunks: list[bytes | memoryview]
    ) -> None:
        for chunk in chunks:
            digest.update(chunk)
        self.store.write_at(fd, offset, chunks)

    async def _verify_object(self, record: TaskRecord) -> None:
        """With a known sha256, check the whole stored object before releasing its end."""
        if self._object_hash is None:
            return
        actual = await self._object_hash.finish(self._done)
        if actual != record.sha256:
            self.metrics.integrity_failures.labels(kind="object").inc()
            self.store.delete(record.task_id, record.created)
            raise DownloadFailed(
                f"object sha256 is {actual}, expected {record.sha256}: entry dropped"
            )

    async def cancel(self) -> None:
        """Stop downloading (peer shutdown); what was stored stays for a resume."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _same_validators(old: dict[str, str], new: dict[str, str]) -> bool:
    """Resume only when the origin says it is the same object."""
    for name in ("ETag", "Last-Modified"):
        if old.get(name) or new.get(name):
            return old.get(name) == new.get(name)
    return True


async def _finish_even_if_cancelled(work: Awaitable[None]) -> None:
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


async def _body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_any():
        yield chunk


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

    async def more(self) -> bool:
        return await self._fill()
