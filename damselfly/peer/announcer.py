"""Telling the schedulers what this host is and holds, every few seconds.

Re-announcing held tasks with their piece digests is how a restarted scheduler
learns again where every object lives: no download is lost to a restart.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from damselfly.peer.cache import Cache
from damselfly.scheduler import api
from damselfly.scheduler.client import SchedulerClient, SchedulerError

log = logging.getLogger(__name__)


def held_tasks(cache: Cache) -> list[api.HeldTask]:
    """Complete tasks in the store and downloads under way, with their digests."""
    held: list[api.HeldTask] = []
    for task_id, complete, _accessed, _bytes in cache.store.tasks():
        download = cache.active.get(task_id)
        if download is not None and download.record is not None:
            record = download.record
            digests = download.servable_pieces()
            complete = download.complete
        elif complete:
            stored = cache.store.get(task_id)
            if stored is None:
                continue
            record, digests = stored, stored.pieces
        else:
            continue  # a half download nobody is running: not something to offer
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

    def message(self, slots_free: int) -> api.AnnounceHost:
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
            tasks=held_tasks(self.cache),
        )

    async def announce_once(self, slots_free: int) -> None:
        reply = await self.client.announce(self.message(slots_free))
        self.interval = reply.interval_seconds or self.interval

    async def run(self, slots_free: object) -> None:
        """Announce forever; ``slots_free`` is a callable giving free upload slots."""
        assert callable(slots_free)
        while True:
            try:
                await self.announce_once(int(slots_free()))
            except SchedulerError as exc:
                log.warning("announce failed", extra={"error": str(exc)})
            except Exception:
                log.exception("announce failed")
            await asyncio.sleep(self.interval)
