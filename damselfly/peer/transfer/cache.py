"""The cache: the store, the downloads under way, and keeping the store in bounds."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import aiohttp
from multidict import CIMultiDict

from damselfly.config.peer import StorageSection, TransferSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.rules.taskid import TaskKey
from damselfly.peer.store import space
from damselfly.peer.store.gc import GcPolicy, StoredTask, select_evictions, select_lru
from damselfly.peer.store.piecestore import PieceStore, StoreFull, TaskRecord
from damselfly.peer.transfer.download import Download
from damselfly.peer.transfer.fetch import P2P, Fetch
from damselfly.peer.transfer.rangefetch import RangeFetcher
from damselfly.peer.transfer.session import Unscheduled
from damselfly.peer.transfer.sources import OriginSource

log = logging.getLogger(__name__)


class Cache:
    def __init__(
        self,
        store: PieceStore,
        storage: StorageSection,
        session: aiohttp.ClientSession,
        fetcher: RangeFetcher,
        metrics: PeerMetrics,
        p2p: P2P | None = None,
        transfer: TransferSection | None = None,
    ) -> None:
        self.store = store
        self.transfer = transfer or TransferSection()
        self.session = session
        self.fetcher = fetcher
        self.metrics = metrics
        self.p2p = p2p
        self.policy = GcPolicy(
            quota=storage.quota,
            high_watermark_percent=storage.high_watermark_percent,
            low_watermark_percent=storage.low_watermark_percent,
            task_ttl=storage.task_ttl,
        )
        self.min_free = storage.min_free
        self.trouble = space.StoreTrouble()  # while set, /readyz and /status say why
        self._to_drop: list[TaskRecord] = []  # dropped on a full disk, rows not yet deleted
        self._room_wanted = 0  # free bytes (beyond minFree) that end a disk-full trouble
        if not store.reserve_path.exists():
            self.trouble.report("disk full: no room for the store's reserve at start-up")
        self.active: dict[str, Download] = {}
        self.serving: dict[str, int] = {}  # task id -> clients reading it from the store
        self._reserve_lock = asyncio.Lock()
        metrics.store_quota.set(storage.quota)
        self.update_gauges()

    def complete_record(self, task_id: str) -> TaskRecord | None:
        record = self.store.get(task_id)
        return record if record is not None and record.complete else None

    def download(
        self,
        key: TaskKey,
        url: str,
        headers: CIMultiDict[str],
        back_to_source: bool = False,
    ) -> tuple[Download, bool]:
        """The running download for ``key``, or a new one; True if this call started it.

        ``back_to_source``: fetch from the origin without asking the swarm (seed peers).
        """
        running = self.active.get(key.task_id)
        if running is not None:
            return running, False
        download = Download(key, self.store)
        fetch = Fetch(
            download,
            OriginSource(self.session, self.fetcher, url, headers),
            self,
            self.metrics,
            self.p2p.sessions(key.task_id) if self.p2p is not None else Unscheduled(),
            self.p2p,
            self.transfer,
            back_to_source,
        )
        self.active[key.task_id] = download
        download.start(fetch.run, self._finished)
        return download, True

    def _finished(self, download: Download) -> None:
        if self.active.get(download.key.task_id) is download:
            del self.active[download.key.task_id]
        if download.complete:
            self._clear_trouble()  # a whole object went in: the store takes writes again
        self.update_gauges()

    def begin_serving(self, task_id: str) -> None:
        self.serving[task_id] = self.serving.get(task_id, 0) + 1

    def end_serving(self, task_id: str) -> None:
        left = self.serving.get(task_id, 0) - 1
        if left <= 0:
            self.serving.pop(task_id, None)
        else:
            self.serving[task_id] = left

    def in_use(self) -> frozenset[str]:
        return frozenset(self.active) | frozenset(self.serving)

    async def reserve(self, size: int) -> None:
        """Make room for ``size`` more bytes, evicting old tasks; StoreFull if impossible."""
        async with self._reserve_lock:
            if size > self.policy.quota:
                raise StoreFull(
                    f"object of {size} bytes is larger than the store's quota of "
                    f"{self.policy.quota} bytes"
                )
            self.collect(incoming=size + self._pending_bytes())
            used = self.store.used_bytes() + self._pending_bytes()
            if used + size > self.policy.quota:
                raise StoreFull(
                    f"object of {size} bytes does not fit: {used} of {self.policy.quota} "
                    "bytes are held by downloads and reads in progress"
                )
            self._keep_min_free(size)

    def _keep_min_free(self, size: int) -> None:
        """Evict until ``size`` more bytes leave storage.minFree free on the filesystem;
        StoreFull (the object is forwarded unstored) if even that is not enough."""
        pending = self._pending_bytes()
        free = space.free_bytes(self.store.root)
        missing = space.shortfall(free, pending, size, self.min_free)
        if missing:
            self._evict_lru(self.store.used_bytes() - missing, "disk")
            free = space.free_bytes(self.store.root)
            missing = space.shortfall(free, pending, size, self.min_free)
        if missing:
            reason = (
                f"{free} bytes free on the store's filesystem; storing {size} more would leave "
                f"less than storage.minFree ({self.min_free}): forwarding without storing"
            )
            self.trouble.report(reason)
            self.metrics.store_errors.labels(kind="no_room").inc()
            raise StoreFull(reason)

    def _pending_bytes(self) -> int:
        """Bytes that running downloads have yet to write."""
        pending = 0
        for download in self.active.values():
            record = download.record
            if record is not None and record.size is not None and not download.complete:
                pending += record.size - record.stored_bytes
        return pending

    def collect(self, incoming: int = 0) -> int:
        """Run GC once; returns the number of tasks removed."""
        tasks = [StoredTask(*row) for row in self.store.tasks()]
        evictions = select_evictions(tasks, self.policy, time.time(), self.in_use(), incoming)
        for task_id, reason in evictions:
            self.store.delete(task_id)
            self.metrics.gc_evicted.labels(reason=reason).inc()
            log.info("evicted", extra={"task": task_id, "reason": reason})
        if evictions:
            self.update_gauges()
        return len(evictions)

    def pieces_corrupt(self, record: TaskRecord, numbers: list[int]) -> None:
        """The one reaction to stored pieces that fail their digest. Counted; a complete
        task is dropped (that generation: it cannot be trusted and nothing refills it);
        a task being resumed forgets them, to fetch them again. A running download's
        own pieces were hashed as written, so they stay as they are."""
        self.metrics.integrity_failures.labels(kind="piece").inc(len(numbers))
        if record.complete:
            self.drop(record, "corrupt")
            return
        running = self.active.get(record.task_id)
        if running is None or running.record is not record:
            self.store.forget_pieces(record, numbers)

    def disk_full(self, record: TaskRecord | None, error: str) -> None:
        """A write found the disk full: the partial task goes (its file first: that is
        the space SQLite needs to record the deletion), GC runs down to the low
        watermark at once, and the trouble is reported until the store takes writes
        again. Hits and forwarding go on meanwhile."""
        self.metrics.store_errors.labels(kind="disk_full").inc()
        self.trouble.report(f"disk full: {error}")
        # Over once the object that did not fit would (or another download completes).
        size = record.size if record is not None and record.size else 0
        self._room_wanted = max(self._room_wanted, size)
        self.store.release_reserve()
        if record is not None:
            self.store.data_path(record.task_id).unlink(missing_ok=True)
            self._to_drop.append(record)
        self._clean_up_after_disk_full()
        log.warning("disk full: download dropped", extra={"error": error})

    def _clear_trouble(self) -> None:
        self.trouble.clear()
        self._room_wanted = 0

    def _clean_up_after_disk_full(self) -> None:
        """Forget the dropped downloads and evict down to the low watermark; what a
        disk still too full refuses is tried again at the next GC round."""
        try:
            while self._to_drop:
                self.drop(self._to_drop[0], "disk_full")
                self._to_drop.pop(0)
            self._evict_lru(self.policy.low, "disk_full")
        except (sqlite3.Error, OSError) as exc:
            log.warning("disk full: clean-up waits for room", extra={"error": str(exc)})
        self.update_gauges()

    def _evict_lru(self, target: int, reason: str) -> None:
        tasks = [StoredTask(*row) for row in self.store.tasks()]
        for task_id, why in select_lru(tasks, self.in_use(), target, reason):
            self.store.data_path(task_id).unlink(missing_ok=True)
            self.store.delete(task_id)
            self.metrics.gc_evicted.labels(reason=why).inc()
            log.info("evicted", extra={"task": task_id, "reason": why})

    def drop(self, record: TaskRecord, reason: str) -> None:
        """Remove a task whose stored bytes cannot be trusted (that generation of it only)."""
        self.store.delete(record.task_id, record.created)
        self.metrics.gc_evicted.labels(reason=reason).inc()
        self.update_gauges()

    def update_gauges(self) -> None:
        self.metrics.store_used.set(self.store.used_bytes())
        self.metrics.store_tasks.set(self.store.task_count())

    async def run_gc(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self._to_drop:
                    self._clean_up_after_disk_full()
                self.collect()
                troubled = self.trouble.reason is not None
                room = space.free_bytes(self.store.root) >= self.min_free + self._room_wanted
                if troubled and room and self.store.keep_reserve():
                    self._clear_trouble()  # room again: said without waiting for a download
            except Exception:
                log.exception("gc failed")
