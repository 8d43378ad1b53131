"""Host announces against a real scheduler process: what a full store costs each interval.

A node with a full cache holds thousands of pieces; telling every scheduler
replica all their digests every few seconds would cost each scheduler a
parse of megabytes per node. After the first announce only what changed
is sent, and a scheduler that restarts asks for everything again.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient
from damselfly.config.peer import StorageSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.p2p.announcer import Announcer
from damselfly.peer.store.piecestore import PieceStore
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.rangefetch import RangeFetcher
from tests.support.scheduler import SchedulerHandle, start_scheduler

PIECE = 4 << 20
HELD = {"a" * 64: 3, "b" * 64: 2}  # task id -> pieces, all stored


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def cache(tmp_path: Path, session: aiohttp.ClientSession) -> Cache:
    store = PieceStore(tmp_path / "store", 1 << 40)
    for task_id, pieces in HELD.items():
        record = store.begin(
            task_id, f"http://origin.test/{task_id}", pieces * PIECE, PIECE, None, {}
        )
        for number in range(pieces):
            store.record_piece(record, number, PIECE, f"blake3:{number:064x}")
        store.mark_complete(task_id)
    fetcher = RangeFetcher(ssl.create_default_context(), False, 5.0, 5.0)
    return Cache(store, StorageSection(dir=str(tmp_path)), session, fetcher, PeerMetrics())


def announcer(cache: Cache, client: SchedulerClient) -> Announcer:
    return Announcer(client, cache, "node-a", "127.0.0.1", 65002, False, 8, None, 5.0)


async def holders(client: SchedulerClient, task_id: str) -> list[str]:
    """The parents a newcomer is given for ``task_id``: who the scheduler knows holds it."""
    await client.announce(
        api.AnnounceHost(host_id="newcomer", ip="127.0.0.2", upload_port=65002, full=False)
    )
    schedule = await client.register(
        api.RegisterTask(task_id=task_id, host_id="newcomer", url=f"http://origin.test/{task_id}")
    )
    return [parent.host_id for parent in schedule.parents]


async def test_only_changes_follow_the_first_announce_and_a_restart_asks_for_all(
    processes: Any, tmp_path: Path, cache: Cache, session: aiohttp.ClientSession
) -> None:
    scheduler = start_scheduler(processes, tmp_path)
    client = SchedulerClient([scheduler.address], session, timeout=2.0)
    node = announcer(cache, client)
    a, b = HELD

    first = node.message(8, {t: (True, -1) for t in HELD})
    assert first.full
    assert {t.task_id for t in first.tasks} == set(HELD)
    assert len(first.tasks[0].piece_digests) == HELD[first.tasks[0].task_id]
    assert await node.announce_once(8) is False
    assert await holders(client, a) == ["node-a"]

    unchanged = node.message(8, {t: (True, -1) for t in HELD})
    assert not unchanged.full
    assert unchanged.tasks == []
    assert unchanged.dropped == []

    cache.store.delete(b)  # evicted
    assert await node.announce_once(8) is False
    assert node.told is not None
    assert set(node.told) == {a}
    assert await holders(client, b) == []
    assert await holders(client, a) == ["node-a"]

    # A restarted scheduler knows nothing: the partial announce is refused and
    # a full one follows at once, so the object is found again.
    scheduler.proc.stop()
    scheduler = start_scheduler(
        processes, tmp_path, "scheduler-again", ports=(scheduler.port, scheduler.metrics_port)
    )
    async with aiohttp.ClientSession() as fresh:  # no kept-alive socket to the old process
        client = SchedulerClient([scheduler.address], fresh, timeout=2.0)
        node.client = client
        assert await node.announce_once(8) is True
        assert node.told is None
        assert await node.announce_once(8) is False
        assert await holders(client, a) == ["node-a"]


async def test_a_replica_that_misses_an_announce_gets_everything_next_time(
    processes: Any,
    tmp_path: Path,
    cache: Cache,
    session: aiohttp.ClientSession,
) -> None:
    up = start_scheduler(processes, tmp_path, "up")
    down: SchedulerHandle = start_scheduler(processes, tmp_path, "down")
    down.proc.stop()
    node = announcer(cache, SchedulerClient([up.address, down.address], session, timeout=2.0))
    await node.announce_once(8)
    assert node.told is None  # the next announce is full again
    assert node.message(8, {t: (True, -1) for t in HELD}).full
