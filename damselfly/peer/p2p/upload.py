"""The upload server (port 65002): other peers fetch pieces here.

- the piece stream: NDJSON, first the object's geometry, headers and the
  pieces held, then a line per new piece while the download runs.
- one piece by ``Range``: its bytes (206), checked against their digest
  before they leave.
- ``POST /v1/seed``: the scheduler asks a seed peer to fetch a task (202).

The paths and the lines are in ``damselfly.api.peerwire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import ValidationError

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.errors import describe_validation
from damselfly.peer.net.access import Refused
from damselfly.peer.net.ranges import UnsatisfiableRange, parse_range
from damselfly.peer.store.piecestore import READ_CHUNK, PieceCorrupt, TaskRecord
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.download import Download, DownloadFailed
from damselfly.web import healthz

log = logging.getLogger(__name__)

HEARTBEAT = 2.0  # seconds between "still downloading" lines on a quiet piece stream


class UploadServer:
    def __init__(
        self,
        cache: Cache,
        slots: int,
        on_seed: Callable[[api.SeedRequest], None] | None,
        slots_per_task: int | None = None,
    ) -> None:
        self.cache = cache
        self.slots_total = slots
        self.slots_per_task = slots_per_task or slots
        self.uploads = 0
        self.uploads_by_task: dict[str, int] = {}
        self.on_seed = on_seed

    @property
    def slots_free(self) -> int:
        return max(0, self.slots_total - self.uploads)

    def app(self, middlewares: Sequence[Middleware] = ()) -> web.Application:
        """The routes; ``middlewares`` guard them (the shared token's check)."""
        app = web.Application(middlewares=middlewares)
        app.router.add_get(peerwire.PIECE_STREAM_ROUTE, self.piece_stream)
        app.router.add_get(peerwire.PIECE_ROUTE, self.piece_data)
        app.router.add_post(api.SEED_PATH, self.seed)
        app.router.add_get("/healthz", healthz)
        return app

    async def _source(self, task_id: str) -> tuple[TaskRecord, Download | None]:
        """The task's record, and its download when one is running; 404 if not held."""
        download = self.cache.active.get(task_id)
        if download is not None:
            with contextlib.suppress(DownloadFailed):
                await download.wait_started()
            if download.record is not None:
                return download.record, download
        else:
            record = self.cache.complete_record(task_id)
            if record is not None:
                return record, None
        raise web.HTTPNotFound(text=f"task {task_id} is not held here\n")

    async def piece_stream(self, request: web.Request) -> web.StreamResponse:
        record, download = await self._source(request.match_info["task_id"])
        response = web.StreamResponse(headers={"Content-Type": peerwire.STREAM_CONTENT_TYPE})
        await response.prepare(request)
        sent = dict(record.pieces) if download is None else download.servable_pieces()
        complete = download is None or download.complete
        await response.write(
            peerwire.render(
                peerwire.StreamStart(
                    size=record.size,
                    piece_length=record.piece_length,
                    headers=record.headers,
                    pieces=sent,
                    complete=complete,
                )
            )
        )
        try:
            while download is not None and not complete:
                try:
                    async with asyncio.timeout(HEARTBEAT):  # not wait_for: see Swarm.wait_news
                        await download.wait_progress(len(sent))
                except TimeoutError:
                    # Still downloading, just slowly (a slow origin, large pieces): say
                    # so, or children would take the silence for a stall and all go
                    # to the origin themselves.
                    await response.write(peerwire.render(peerwire.Alive()))
                    continue
                except DownloadFailed:
                    break
                current = download.servable_pieces()
                for number, digest in current.items():
                    if number not in sent:
                        line = peerwire.NewPiece(piece=number, digest=digest)
                        await response.write(peerwire.render(line))
                sent = current
                complete = download.complete
                if complete:
                    await response.write(peerwire.render(peerwire.Complete(size=record.size)))
        except ConnectionError:
            pass  # the child has what it needs and hung up: normal, not an error
        return response

    async def piece_data(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        record, download = await self._source(task_id)
        if record.size is None:
            raise web.HTTPConflict(text="size not known yet\n")
        try:
            wanted = parse_range(request.headers.get("Range"), record.size)
        except UnsatisfiableRange:
            raise web.HTTPRequestRangeNotSatisfiable() from None
        if wanted is None or wanted.start % record.piece_length:
            raise web.HTTPBadRequest(text="ask for exactly one piece with Range\n")
        number = wanted.start // record.piece_length
        piece = record.piece(number)
        if wanted.end != piece.end - 1:
            raise web.HTTPBadRequest(text="ask for exactly one piece with Range\n")
        held = number in record.pieces if download is None else download.servable(number)
        if not held:
            raise web.HTTPNotFound(text=f"piece {number} is not held here\n")
        if (
            self.uploads >= self.slots_total
            or self.uploads_by_task.get(task_id, 0) >= self.slots_per_task
        ):
            raise web.HTTPServiceUnavailable(text="no upload slot free\n")
        try:
            fd = self.cache.store.open_for_read(task_id)
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"task {task_id} is not held here\n") from None
        self.uploads += 1
        self.uploads_by_task[task_id] = self.uploads_by_task.get(task_id, 0) + 1
        self.cache.begin_serving(task_id)
        try:
            try:
                await asyncio.to_thread(self.cache.store.verify_piece, fd, record, number)
            except PieceCorrupt:
                self.cache.pieces_corrupt(record, [number])
                raise web.HTTPNotFound(text=f"piece {number} failed its check here\n") from None
            response = web.StreamResponse(
                status=206,
                headers={
                    "Content-Range": wanted.content_range(record.size),
                    "Content-Type": "application/octet-stream",
                },
            )
            response.content_length = piece.length
            await response.prepare(request)
            position = piece.offset
            while position < piece.end:
                data = await asyncio.to_thread(
                    os.pread, fd, min(READ_CHUNK, piece.end - position), position
                )
                if not data:
                    raise ConnectionResetError("data file shorter than its piece")
                try:
                    await response.write(data)
                except ConnectionError as exc:  # reset, or "Connection lost" while draining
                    # A child that hangs up mid-piece (it cancelled, timed out, or
                    # stopped) is routine: a line, not aiohttp's error traceback.
                    log.info(
                        "child went away mid-piece",
                        extra={"task": task_id, "piece": number, "error": str(exc)},
                    )
                    return response
                position += len(data)
            self.cache.metrics.uploaded_bytes.inc(piece.length)
            return response
        finally:
            os.close(fd)
            self.cache.end_serving(task_id)
            self.uploads -= 1
            left = self.uploads_by_task[task_id] - 1
            if left:
                self.uploads_by_task[task_id] = left
            else:
                del self.uploads_by_task[task_id]

    async def seed(self, request: web.Request) -> web.Response:
        if self.on_seed is None:
            raise web.HTTPForbidden(text="this peer is not a seed peer\n")
        try:
            seed_request = api.SeedRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            raise web.HTTPBadRequest(
                text=f"bad seed request: {describe_validation(exc)}\n"
            ) from None
        try:
            self.on_seed(seed_request)
        except Refused as exc:
            raise web.HTTPForbidden(text=f"{exc}\n") from None
        return web.Response(status=202, text="seeding\n")
