"""Telling the schedulers what this host is and holds, every few seconds.

The first announce lists every held task with its piece digests; later ones
only what changed (a node with a full store would otherwise send megabytes of
digests to every replica every interval). A scheduler that does not know the
host (it restarted, or expired it) asks for a full announce, which is how it
learns again where every object lives: no download is lost to a restart.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterable

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient, SchedulerError
from damselfly.peer.transfer.cache import Cache

log = logging.getLogger(__name__)


# What the scheduler knows of one held task: complete, and how many pieces.
Holding = tuple[bool, int]


def holdings(cache: Cache) -> dict[str, Holding]:
    """Complete tasks in the store and downloads under way, without their digests."""
    held: dict[str, Holding] = {}
    for task_id, complete, _accessed, _bytes in cache.store.tasks():
        download = cache.active.get(task_id)
        if download is not None and download.record is not None:
            held[task_id] = (download.complete, len(download.servable_pieces()))
        elif complete:
            held[task_id] = (True, -1)  # stored whole: its pieces no longer change
    return held


def held_tasks(cache: Cache, task_ids: Iterable[str]) -> list[api.HeldTask]:
    """``task_ids`` as announced: geometry, the digests of servable pieces, completeness."""
    held: list[api.HeldTask] = []
    for task_id in task_ids:
        download = cache.active.get(task_id)
        if download is not None and download.record is not None:
            record = download.record
            digests = download.servable_pieces()
            complete = download.complete
        else:
            stored = cache.store.get(task_id)
            if stored is None or not stored.complete:
                continue
            record, digests, complete = stored, stored.pieces, True
        held.append(
            api.HeldTask(
                task_id=task_id,
                url=record.url,
                size=record.size,
                piece_length=record.piece_length,
                piece_digests=digests,
                complete=complete,
            )
        )
    return held


class Announcer:
    def __init__(
        self,
        client: SchedulerClient,
        cache: Cache,
        host_id: str,
        ip: str,
        upload_port: int,
        seed: bool,
        slots: int,
        slots_per_task: int | None,
        interval: float,
    ) -> None:
        self.client = client
        self.cache = cache
        self.host_id = host_id
        self.ip = ip
        self.upload_port = upload_port
        self.seed = seed
        self.slots = slots
        self.slots_per_task = slots_per_task
        self.interval = interval
        # What every scheduler was last told; None: they must be told everything.
        self.told: dict[str, Holding] | None = None

    def message(self, slots_free: int, held: dict[str, Holding]) -> api.AnnounceHost:
        """The announce: every held task at first and after a resync, else what changed."""
        told = self.told
        if told is None:
            changed, dropped = list(held), []
        else:
            changed = [t for t, holding in held.items() if told.get(t) != holding]
            dropped = [t for t in told if t not in held]
        disk = shutil.disk_usage(self.cache.store.root)
        return api.AnnounceHost(
            host_id=self.host_id,
            ip=self.ip,
            upload_port=self.upload_port,
            seed=self.seed,
            upload_slots_total=self.slots,
            upload_slots_free=slots_free,
            upload_slots_per_task=self.slots_per_task,
            disk_free_bytes=disk.free,
            tasks=held_tasks(self.cache, changed),
            full=told is None,
            dropped=dropped,
        )

    async def announce_once(self, slots_free: int) -> bool:
        """One announce; True when a partial one was refused and a full one is due now."""
        held = holdings(self.cache)
        message = self.message(slots_free, held)
        try:
            reply = await self.client.announce(message)
        except BaseException:
            self.told = None  # some scheduler may have missed what changed
            raise
        self.told = None if reply.resync else held
        self.interval = reply.interval_seconds or self.interval
        return reply.resync and not message.full

    async def run(self, slots_free: object) -> None:
        """Announce forever; ``slots_free`` is a callable giving free upload slots."""
        assert callable(slots_free)
        while True:
            try:
                if await self.announce_once(int(slots_free())):
                    continue  # a restarted scheduler relearns what we hold at once
            except SchedulerError as exc:
                log.warning("announce failed", extra={"error": str(exc)})
            except Exception:
                log.exception("announce failed")
            await asyncio.sleep(self.interval)
