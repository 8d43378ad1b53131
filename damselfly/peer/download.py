"""One task's download into the store, shared by every client asking for it.

The creator of a ``Download`` learns first what the origin said (``wait_started``);
clients then wait for the pieces they need (``wait_piece``) while workers fetch
the rest. Pieces come from a source per piece — the origin today, parent peers
with P2P — and every piece is hashed as it is written. When the object's sha256
is known, the last piece is held back until the whole object has been verified,
so a client never completes a download of wrong bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from damselfly.peer import origin
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.pieces import Piece, piece_length
from damselfly.peer.store import PieceStore, TaskRecord, read_chunks
from damselfly.peer.taskid import TaskKey

log = logging.getLogger(__name__)

WRITE_BUFFER = 1 << 20
PIECE_WORKERS = 4
PIECE_ATTEMPTS = 3


class DownloadFailed(RuntimeError):
    """The download cannot finish; clients still reading must be cut off."""


@dataclass
class OriginAnswer:
    """A non-2xx origin answer, handed to the client as it came; nothing is cached."""

    response: aiohttp.ClientResponse


# A hook that may reserve room in the store; raises StoreFull when it cannot.
Reserve = Callable[[int], Awaitable[None]]


class Download:
    def __init__(
        self,
        key: TaskKey,
        url: str,
        headers: CIMultiDict[str],
        store: PieceStore,
        session: aiohttp.ClientSession,
        metrics: PeerMetrics,
        reserve: Reserve,
    ) -> None:
        self.key = key
        self.url = url
        self.headers = origin.forwardable_request_headers(headers)
        self.store = store
        self.session = session
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
        self.readers = 0

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
            raise DownloadFailed(str(self.error or "download failed before it started"))

    def servable(self, number: int) -> bool:
        return number in self._done and number != self._held_back

    async def wait_piece(self, number: int) -> bool:
        """Wait until piece ``number`` may be served. False: the object has no such piece."""
        async with self._changed:
            while True:
                if self.servable(number):
                    return True
                if self.error is not None:
                    raise DownloadFailed(str(self.error))
                record = self.record
                total = record.total_pieces if record is not None else None
                if self.complete or (total is not None and number >= total):
                    return self.servable(number)
                await self._changed.wait()

    async def wait_complete(self) -> None:
        async with self._changed:
            while not self.complete:
                if self.error is not None:
                    raise DownloadFailed(str(self.error))
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
        except Exception as exc:
            self.error = exc
            if self.answer is None:
                log.warning("download failed", extra={"task": self.key.task_id, "error": str(exc)})
        finally:
            self._started.set()
            await self._notify()
            if self.answer is None:
                self.metrics.task_duration.labels(outcome=outcome).observe(time.monotonic() - began)

    async def _download(self) -> None:
        result = await origin.stat(self.session, self.url, self.headers)
        if not result.ok:
            self.answer = OriginAnswer(result.response)
            self._started.set()
            return
        try:
            record = await self._prepare_record(result)
            if result.honours_range and result.size is not None:
                result.response.release()
                self._started.set()
                await self._fetch_missing_pieces(record)
            else:
                self._started.set()
                await self._stream_whole_body(record, result.response)
        finally:
            result.response.release()
        await self._verify_object(record)
        self.store.mark_complete(record.task_id)
        self.complete = True
        self._held_back = None
        await self._notify()

    async def _prepare_record(self, result: origin.StatResult) -> TaskRecord:
        headers = origin.stored_headers(result.response)
        size = result.size
        previous = self.store.get(self.key.task_id)
        if (
            previous is not None
            and not previous.complete
            and result.honours_range
            and previous.size == size
            and _same_validators(previous.headers, headers)
        ):
            log.info("resuming", extra={"task": self.key.task_id, "pieces": len(previous.pieces)})
            self.record = previous
            self._done = set(previous.pieces)
            return previous
        if size is not None:
            await self.reserve(size)
        record = self.store.begin(
            self.key.task_id, self.key.cache_url, size, piece_length(size), self.key.sha256, headers
        )
        self.record = record
        return record

    async def _fetch_missing_pieces(self, record: TaskRecord) -> None:
        total = record.total_pieces or 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(total):
            if number not in self._done:
                queue.put_nowait(number)
        if self.key.sha256 is not None and total:
            self._held_back = total - 1
        fd = self.store.open_for_write(record.task_id)
        try:
            workers = [
                asyncio.create_task(self._piece_worker(record, fd, queue))
                for _ in range(min(PIECE_WORKERS, queue.qsize()))
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            os.close(fd)

    async def _piece_worker(self, record: TaskRecord, fd: int, queue: asyncio.Queue[int]) -> None:
        assert record.size is not None
        while not queue.empty():
            piece = record.piece(queue.get_nowait())
            for attempt in range(1, PIECE_ATTEMPTS + 1):
                try:
                    await self._fetch_piece_from_origin(record, fd, piece)
                    break
                except (aiohttp.ClientError, OSError, TimeoutError, origin.OriginError) as exc:
                    if attempt == PIECE_ATTEMPTS:
                        raise DownloadFailed(
                            f"piece {piece.number} failed {attempt} times: {exc}"
                        ) from exc
                    log.info(
                        "piece retry",
                        extra={"task": record.task_id, "piece": piece.number, "error": str(exc)},
                    )
                    await asyncio.sleep(0.2 * attempt)

    async def _fetch_piece_from_origin(self, record: TaskRecord, fd: int, piece: Piece) -> None:
        assert record.size is not None
        response = await origin.get_range(
            self.session, self.url, self.headers, piece.offset, piece.end - 1, record.size
        )
        try:
            digest = await self._write_stream(fd, piece.offset, piece.length, _body(response))
        finally:
            response.release()
        self.metrics.downloaded_bytes.labels(source="origin").inc(piece.length)
        await self._piece_done(record, piece.number, piece.length, digest)

    async def _write_stream(
        self, fd: int, offset: int, length: int, chunks: AsyncIterator[bytes]
    ) -> str:
        """Write exactly ``length`` bytes at ``offset``, hashing them; return the digest."""
        digest = hashlib.sha256()
        buffer = bytearray()
        written = 0

        async def flush() -> None:
            nonlocal written
            if written + len(buffer) > length:
                raise origin.OriginError("origin sent more bytes than the range holds")
            data = bytes(buffer)
            buffer.clear()
            await asyncio.to_thread(self._hash_and_write, digest, fd, offset + written, data)
            written += len(data)

        async for chunk in chunks:
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER:
                await flush()
        if buffer:
            await flush()
        if written != length:
            raise origin.OriginError(f"body ended after {written} of {length} bytes")
        return digest.hexdigest()

    async def _piece_done(self, record: TaskRecord, number: int, length: int, digest: str) -> None:
        self.store.record_piece(record.task_id, number, length, digest)
        record.pieces[number] = digest
        self._done.add(number)
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
            number, filled, buffer = 0, 0, bytearray()
            digest = hashlib.sha256()
            pending: tuple[int, str] | None = None  # a full piece not yet announced

            async def flush() -> None:
                nonlocal filled
                data = bytes(buffer)
                buffer.clear()
                await asyncio.to_thread(
                    self._hash_and_write, digest, fd, number * length + filled, data
                )
                filled += len(data)

            async for chunk in _body(response):
                view = memoryview(chunk)
                while view:
                    if pending is not None:
                        await self._piece_done(record, pending[0], length, pending[1])
                        pending = None
                    take = view[: length - filled - len(buffer)]
                    view = view[len(take) :]
                    buffer += take
                    if filled + len(buffer) == length or len(buffer) >= WRITE_BUFFER:
                        await flush()
                    if filled == length:
                        pending = (number, digest.hexdigest())
                        number, filled, digest = number + 1, 0, hashlib.sha256()
            if buffer:
                await flush()
        finally:
            os.close(fd)
        size = number * length + filled
        self.metrics.downloaded_bytes.labels(source="origin").inc(size)
        if record.size is not None and size != record.size:
            raise DownloadFailed(f"origin body ended after {size} of {record.size} bytes")
        if record.size is None:
            self.store.set_size(record.task_id, size)
            record.size = size
        last = (number, filled, digest.hexdigest()) if filled else None
        if last is None and pending is not None:
            last = (pending[0], length, pending[1])
        if last is not None:
            if self.key.sha256 is not None:
                self._held_back = last[0]
            await self._piece_done(record, *last)

    def _hash_and_write(self, digest: hashlib._Hash, fd: int, offset: int, data: bytes) -> None:
        digest.update(data)
        self.store.write_at(fd, offset, data)

    async def _verify_object(self, record: TaskRecord) -> None:
        """With a known sha256, hash the whole stored object before releasing its end."""
        if record.sha256 is None:
            return
        assert record.size is not None

        def whole_digest() -> str:
            digest = hashlib.sha256()
            fd = self.store.open_for_read(record.task_id)
            try:
                for chunk in read_chunks(fd, 0, record.size or 0):
                    digest.update(chunk)
            finally:
                os.close(fd)
            return digest.hexdigest()

        actual = await asyncio.to_thread(whole_digest)
        if actual != record.sha256:
            self.metrics.integrity_failures.labels(kind="object").inc()
            self.store.delete(record.task_id)
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


async def _body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_any():
        yield chunk
