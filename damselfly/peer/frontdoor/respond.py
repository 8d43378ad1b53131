"""Answering a client from the cache: a stored object or one still downloading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from damselfly.peer.frontdoor.http1 import ClientConnection
from damselfly.peer.net.ranges import ByteRange, UnsatisfiableRange, parse_range
from damselfly.peer.store.pieces import pieces_covering
from damselfly.peer.store.piecestore import PieceCorrupt, PieceStore, TaskRecord
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.download import Download, DownloadFailed

log = logging.getLogger(__name__)

# Pieces checked ahead of the one being sent, on a first read after a restart.
CHECK_AHEAD = 2

TASK_ID_HEADER = "X-Damselfly-Task-ID"
CACHE_HEADER = "X-Damselfly-Cache"


def object_headers(record: TaskRecord, cache_state: str) -> list[tuple[str, str]]:
    headers = [(name, value) for name, value in record.headers.items() if name != "Accept-Ranges"]
    headers += [
        ("Accept-Ranges", "bytes"),
        (TASK_ID_HEADER, record.task_id),
        (CACHE_HEADER, cache_state),
    ]
    return headers


def effective_range(
    range_header: str | None, if_range: str | None, record: TaskRecord
) -> ByteRange | None:
    """The range to honour; If-Range that no longer matches means the whole object."""
    if range_header and if_range:
        validators = {record.headers.get("ETag"), record.headers.get("Last-Modified")}
        if if_range.strip() not in validators:
            return None
    assert record.size is not None
    return parse_range(range_header, record.size)


async def serve(
    conn: ClientConnection,
    cache: Cache,
    record: TaskRecord,
    download: Download | None,
    head: bool,
    range_header: str | None,
    if_range: str | None,
    cache_state: str,
) -> None:
    """Answer with the object (or the asked range), as its pieces become available."""
    if record.size is None and download is not None and not range_header:
        await _serve_unknown_length(conn, cache, record, download, head, cache_state)
        return
    if record.size is None and download is not None:
        await download.wait_complete()  # a range of a body of unknown length: wait for all
    if record.size is None:
        raise DownloadFailed("download ended without a size")
    if record.size == 0 and download is not None:
        await download.wait_complete()  # no piece to wait for: the body is over at once
    headers = object_headers(record, cache_state)
    try:
        wanted = effective_range(range_header, if_range, record)
    except UnsatisfiableRange:
        await conn.simple(
            416, "damselfly: range not satisfiable", [("Content-Range", f"bytes */{record.size}")]
        )
        return
    if wanted is None:
        status, start, end = 200, 0, record.size - 1
    else:
        status, start, end = 206, wanted.start, wanted.end
        headers.append(("Content-Range", wanted.content_range(record.size)))
    headers.append(("Content-Length", str(end - start + 1)))
    await conn.respond(status, headers)
    if head:
        await conn.end()
        return
    await _send_span(conn, cache, record, download, start, end + 1, cache_state)


async def _send_span(
    conn: ClientConnection,
    cache: Cache,
    record: TaskRecord,
    download: Download | None,
    start: int,
    stop: int,
    cache_state: str,
) -> None:
    await _send_spans(conn, cache, record, download, _range_spans(record, download, start, stop))
    if cache_state == "hit":
        cache.store.touch(record.task_id)


async def _serve_unknown_length(
    conn: ClientConnection,
    cache: Cache,
    record: TaskRecord,
    download: Download,
    head: bool,
    cache_state: str,
) -> None:
    """The origin sent no length: stream pieces in order, chunked, as they complete."""
    await conn.respond(200, object_headers(record, cache_state))
    if head:
        await conn.end()
        return
    await _send_spans(conn, cache, record, download, _spans_to_the_end(record, download))


Span = tuple[int, int, int]  # piece number, first byte, one past the last byte


async def _range_spans(
    record: TaskRecord, download: Download | None, start: int, stop: int
) -> AsyncIterator[Span]:
    """The parts of the pieces covering [start, stop), each once it may be served."""
    for number in pieces_covering(start, stop, record.piece_length):
        if download is not None and not await download.wait_piece(number):
            raise DownloadFailed(f"object ended before piece {number}")
        piece = record.piece(number)
        yield number, max(start, piece.offset), min(stop, piece.end)


async def _spans_to_the_end(record: TaskRecord, download: Download) -> AsyncIterator[Span]:
    """Whole pieces in order until the download says there are no more."""
    number = 0
    while await download.wait_piece(number):
        piece = record.piece(number)
        yield number, piece.offset, piece.end
        number += 1


async def _send_spans(
    conn: ClientConnection,
    cache: Cache,
    record: TaskRecord,
    download: Download | None,
    spans: AsyncIterator[Span],
) -> None:
    """Send the spans and end the response; any failure cuts the connection instead."""
    file = cache.store.open_file(record.task_id)
    checks = PieceChecks(cache.store, record, file.fileno())
    cache.begin_serving(record.task_id)
    number = 0
    try:
        async for number, start, stop in spans:
            checks.start(range(number + 1, number + 1 + CHECK_AHEAD))
            await checks.wait(number)
            sent = await conn.send_file(file, start, stop - start)
            if sent != stop - start:
                raise PieceCorrupt(f"task {record.task_id}: data file is short in piece {number}")
            source = "local" if download is None else download.piece_source(number)
            cache.metrics.served_bytes.labels(source=source).inc(stop - start)
        await conn.end()
    except (DownloadFailed, PieceCorrupt) as exc:
        _fail(conn, cache, record, exc, number)
    finally:
        checks.abandon()
        file.close()
        cache.end_serving(record.task_id)


class PieceChecks:
    """Digest checks of stored pieces, run in threads ahead of the piece being sent.

    A piece read back for the first time in this process (after a restart) is
    hashed before it is sent. Hashing the next pieces while sendfile sends this
    one overlaps the two instead of taking turns.
    """

    def __init__(self, store: PieceStore, record: TaskRecord, fd: int) -> None:
        self.store = store
        self.record = record
        self.fd = fd
        self.running: dict[int, asyncio.Future[None]] = {}

    def _needs_check(self, number: int) -> bool:
        return number in self.record.pieces and not self.store.is_verified(self.record, number)

    def start(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            if number not in self.running and self._needs_check(number):
                self.running[number] = asyncio.ensure_future(
                    asyncio.to_thread(self.store.verify_piece, self.fd, self.record, number)
                )

    async def wait(self, number: int) -> None:
        """Return once piece ``number`` is known good; PieceCorrupt if it is not."""
        self.start([number])
        running = self.running.pop(number, None)
        if running is not None:
            await running

    def abandon(self) -> None:
        """The response is over: drop the checks still running (their threads finish)."""
        for running in self.running.values():
            running.add_done_callback(_ignore_outcome)
        self.running.clear()


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as unhandled


def _fail(
    conn: ClientConnection, cache: Cache, record: TaskRecord, exc: Exception, number: int
) -> None:
    """Cut the client off: a truncated body must never look complete."""
    if isinstance(exc, PieceCorrupt):
        cache.pieces_corrupt(record, [number])
    log.warning("aborting client response", extra={"task": record.task_id, "error": str(exc)})
    conn.abort()
