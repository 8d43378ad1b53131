"""Piece reports to the scheduler, batched: one request per ~16 pieces or 100 ms.

A thousand peers reporting every piece one request at a time would spend the
scheduler's core on HTTP overhead; batching keeps a report at most 100 ms late.
Reports are best effort: a download never waits for the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient, SchedulerError

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
