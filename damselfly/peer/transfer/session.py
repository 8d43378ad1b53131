"""A download's conversation with the scheduler, behind one interface.

``SchedulerSession`` is what ``Download`` sees: register (and get parents),
reschedule, say a parent failed, report a piece, report the end. ``Scheduled``
talks to the real scheduler; ``Unscheduled`` is a peer without one (origin
only). Tests drive ``Download`` with a fake of their own.

Piece reports are batched: one request per ~16 pieces or 100 ms. A thousand
peers reporting every piece one request at a time would spend the scheduler's
core on HTTP overhead; batching keeps a report at most 100 ms late. Everything
but register and reschedule is best effort: a download never waits for the
scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient, SchedulerError
from damselfly.peer.store.pieces import Piece

log = logging.getLogger(__name__)

BATCH_PIECES = 16
BATCH_DELAY = 0.1


class PieceReporter:
    def __init__(self, client: SchedulerClient, task_id: str, host_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self.host_id = host_id
        self._pending: list[api.PieceReport] = []
        self._timer: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, report: api.PieceReport) -> None:
        self._pending.append(report)
        if len(self._pending) >= BATCH_PIECES:
            self._send_now()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._send_later())

    async def _send_later(self) -> None:
        await asyncio.sleep(BATCH_DELAY)
        self._timer = None
        self._send_now()

    def _send_now(self) -> None:
        if not self._pending:
            return
        batch = api.PieceReports(task_id=self.task_id, host_id=self.host_id, pieces=self._pending)
        self._pending = []
        task = asyncio.create_task(self._deliver(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: api.PieceReports) -> None:
        try:
            await self.client.report_pieces(batch)
        except SchedulerError as exc:
            log.debug("piece reports not delivered", extra={"error": str(exc)})

    async def flush(self) -> None:
        """Send what is pending and wait for every batch in flight (end of a download)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        self._send_now()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


# Request headers a seed needs to fetch the same URL (LFS hrefs carry auth headers).
SEED_HEADERS = ("authorization", "cookie", "x-amz-security-token")


class SchedulerSession(Protocol):
    """One task's dealings with the scheduler, as a download needs them."""

    async def register(
        self, url: str, headers: Mapping[str, str], sha256: str | None
    ) -> api.Schedule | None:
        """Parents to fetch from (and the swarm's piece digests); None: go to the origin."""

    async def reschedule(self, blocklist: list[str], refresh: bool) -> api.Schedule | None:
        """More parents; None when the scheduler cannot be asked."""

    def parent_failed(self, host_id: str, reason: api.ParentFailureReason) -> None: ...

    def piece_done(self, piece: Piece, digest: str, seconds: float, parent: str | None) -> None:
        """A piece is stored; ``parent`` None: it came from the origin."""

    def finished(
        self, size: int | None, piece_length: int | None, error: str | None, changed: bool
    ) -> None:
        """The download ended (after the piece reports, which it follows); ``changed``:
        it failed because the object changed at the origin."""


class Unscheduled:
    """No scheduler configured: every download goes to the origin, nothing is reported."""

    async def register(
        self, url: str, headers: Mapping[str, str], sha256: str | None
    ) -> api.Schedule | None:
        return None

    async def reschedule(self, blocklist: list[str], refresh: bool) -> api.Schedule | None:
        return None

    def parent_failed(self, host_id: str, reason: api.ParentFailureReason) -> None:
        pass

    def piece_done(self, piece: Piece, digest: str, seconds: float, parent: str | None) -> None:
        pass

    def finished(
        self, size: int | None, piece_length: int | None, error: str | None, changed: bool
    ) -> None:
        pass


class Scheduled:
    """A task's session with the real scheduler (over ``SchedulerClient``)."""

    def __init__(self, client: SchedulerClient, task_id: str, host_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self.host_id = host_id
        self._reporter = PieceReporter(client, task_id, host_id)
        self._reports: set[asyncio.Task[None]] = set()

    async def register(
        self, url: str, headers: Mapping[str, str], sha256: str | None
    ) -> api.Schedule | None:
        seed_headers = {
            name: value for name, value in headers.items() if name.lower() in SEED_HEADERS
        }
        request = api.RegisterTask(
            task_id=self.task_id, host_id=self.host_id, url=url, headers=seed_headers, sha256=sha256
        )
        try:
            return await self.client.register(request)
        except SchedulerError as exc:
            log.warning(
                "scheduler unavailable; going to the origin",
                extra={"task": self.task_id, "error": str(exc)},
            )
            return None

    async def reschedule(self, blocklist: list[str], refresh: bool) -> api.Schedule | None:
        request = api.Reschedule(
            task_id=self.task_id, host_id=self.host_id, blocklist=blocklist, refresh=refresh
        )
        try:
            return await self.client.reschedule(request)
        except SchedulerError:
            return None

    def parent_failed(self, host_id: str, reason: api.ParentFailureReason) -> None:
        report = api.ParentFailed(
            task_id=self.task_id, host_id=self.host_id, parent_host_id=host_id, reason=reason
        )
        self._spawn(self.client.parent_failed(report))

    def piece_done(self, piece: Piece, digest: str, seconds: float, parent: str | None) -> None:
        self._reporter.add(
            api.PieceReport(
                number=piece.number,
                digest=digest,
                length=piece.length,
                cost_ms=seconds * 1000,
                parent_host_id=parent,
            )
        )

    def finished(
        self, size: int | None, piece_length: int | None, error: str | None, changed: bool
    ) -> None:
        result = api.TaskResult(
            task_id=self.task_id,
            host_id=self.host_id,
            success=error is None,
            size=size,
            piece_length=piece_length,
            error=error,
            changed=changed,
        )

        async def send() -> None:
            await self._reporter.flush()
            await self.client.report_result(result)

        self._spawn(send())

    def _spawn(self, call: Coroutine[Any, Any, None]) -> None:
        async def send() -> None:
            try:
                await call
            except SchedulerError as exc:
                log.debug("report not delivered", extra={"error": str(exc)})

        task = asyncio.create_task(send())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)
