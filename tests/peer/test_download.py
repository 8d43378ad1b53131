"""The data path in-process: ``Cache`` -> ``Download`` + ``Fetch`` with a real store and a
real loopback origin, parents in memory and a fake scheduler session (tests/support/
transfer.py says why those two are fakes). No subprocesses; each test runs in well under
a second or two.

What a user would notice, each: the bytes a client gets are the object's, in order; a
flaky origin is retried; a bad or silent parent costs time, never correctness; a changed
object fails the download instead of mixing versions; a cancelled download resumes.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from damselfly.config.peer import StorageSection, TransferSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.rules.taskid import TaskKey
from damselfly.peer.store.piecestore import PieceStore
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.download import Download, DownloadFailed, PassThrough
from damselfly.peer.transfer.fetch import P2P, expected_digest
from damselfly.peer.transfer.rangefetch import RangeFetcher
from tests.support.transfer import FakeSession, MemoryParent, MemoryParents, Origin, digest_of

MiB = 1 << 20
ORIGIN_PIECE = 4 * MiB  # what the peer cuts an origin-only object into (pieces.MIN_PIECE)
SWARM_PIECE = 64 << 10  # parents tell their geometry: small pieces keep these tests fast


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ per position, so a piece in the wrong place is caught."""
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


class Rig:
    def __init__(self, root: Path, origin: Origin, session: aiohttp.ClientSession) -> None:
        self.root = root
        self.origin = origin
        self.session = session
        self.metrics = PeerMetrics()
        self.fetcher = RangeFetcher(ssl.create_default_context(), False, 5.0, 5.0)
        self.store = PieceStore(root / "store", 1 << 40)
        self.scheduler = FakeSession()
        self.parents = MemoryParents()
        self.caches: list[Cache] = []

    def cache(self, p2p: bool = False, stall: float = 5.0, **transfer: object) -> Cache:
        swarm = P2P(lambda _task: self.scheduler, self.parents, stall) if p2p else None
        cache = Cache(
            self.store,
            StorageSection(dir=str(self.root)),
            self.session,
            self.fetcher,
            self.metrics,
            swarm,
            TransferSection.model_validate(transfer),
        )
        self.caches.append(cache)
        return cache

    def restart(self) -> None:
        """A new process on the same store: nothing it holds is taken as checked."""
        self.store.close()
        self.store = PieceStore(self.root / "store", 1 << 40)

    async def stop(self) -> None:
        for cache in self.caches:
            for download in list(cache.active.values()):
                await download.cancel()
        self.fetcher.close()
        self.store.close()

    def start(self, cache: Cache, sha256: str | None = None) -> Download:
        task_id = sha256 or f"task-{os.urandom(8).hex()}"
        key = TaskKey(task_id, self.origin.url, sha256)
        download, created = cache.download(key, self.origin.url, CIMultiDict())
        assert created
        return download

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"damselfly_peer_{name}_total", labels)
        return value or 0.0


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    origin = Origin(pattern(6 * ORIGIN_PIECE + 1234))
    await origin.start()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        rig = Rig(tmp_path, origin, session)
        try:
            yield rig
        finally:
            await rig.stop()
            await origin.stop()


async def read_all(download: Download, partial: bytearray | None = None) -> bytes:
    """What a client reading in order gets: every piece as it becomes servable
    (into ``partial`` as it goes, to see what came before a failure)."""
    record = await download.wait_started()
    assert not isinstance(record, PassThrough)
    path = download.store.data_path(download.key.task_id)
    out = partial if partial is not None else bytearray()
    number = 0
    while await download.wait_piece(number):
        piece = download.record.piece(number) if download.record else None
        assert piece is not None
        with path.open("rb") as handle:
            handle.seek(piece.offset)
            out += handle.read(piece.length)
        number += 1
    return bytes(out)


async def ended(cache: Cache, download: Download) -> None:
    """Until the download's run is over (its last report sent), at most 5 s."""
    for _ in range(500):
        if cache.active.get(download.key.task_id) is not download:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the download did not end within 5 s")


def swarm_parents(rig: Rig, *parents: MemoryParent) -> None:
    rig.parents.parents = {parent.host_id: parent for parent in parents}
    rig.scheduler.parents = [parent.as_parent() for parent in parents]


async def test_pieces_reach_a_reader_in_order_and_whole(rig: Rig) -> None:
    download = rig.start(rig.cache(origin_workers=1))
    assert await read_all(download) == rig.origin.data
    await download.wait_complete()
    assert [n for n, _ in rig.scheduler.pieces] == []  # no scheduler: nothing reported
    starts = [start for start, _ in rig.origin.ranges]
    assert starts == sorted(starts), "one worker fetches pieces in order"
    assert rig.counter("downloaded_bytes", source="origin") == len(rig.origin.data)


async def test_a_flaky_origin_is_retried_and_a_broken_one_fails_the_download(rig: Rig) -> None:
    rig.origin.fail_next = {2 * ORIGIN_PIECE: 2}  # two 500s, then the piece
    download = rig.start(rig.cache())
    assert await read_all(download) == rig.origin.data

    rig.origin.fail_next = {3 * ORIGIN_PIECE: 10}
    broken = rig.start(rig.cache(piece_attempts=2))
    with pytest.raises(DownloadFailed, match="piece 3 failed 2 times"):
        await read_all(broken)
    assert not broken.complete


async def test_a_parent_that_breaks_off_is_reported_and_another_source_fills_in(
    rig: Rig,
) -> None:
    data = pattern(40 * SWARM_PIECE + 99)
    rig.origin.data = data
    everything = set(range(41))
    flaky = MemoryParent("flaky", data, SWARM_PIECE, everything, "unreachable")
    good = MemoryParent("good", data, SWARM_PIECE, everything)
    swarm_parents(rig, flaky, good)
    cache = rig.cache(p2p=True)
    download = rig.start(cache)
    assert await read_all(download) == data
    await ended(cache, download)
    assert ("flaky", "unreachable") in rig.scheduler.failed_parents
    assert good.served, "the good parent filled in"
    assert rig.scheduler.results == [None]


async def test_a_parent_sending_wrong_bytes_is_blocked_and_no_wrong_byte_is_kept(
    rig: Rig,
) -> None:
    data = pattern(24 * SWARM_PIECE)
    rig.origin.data = data
    liar = MemoryParent("liar", data, SWARM_PIECE, set(range(24)), "corrupt", seed=True)
    swarm_parents(rig, liar)
    download = rig.start(rig.cache(p2p=True, swarm_workers=1))
    assert await read_all(download) == data
    assert ("liar", "corrupt") in rig.scheduler.failed_parents
    assert len(liar.served) == 1, "a parent caught lying is never asked again"
    assert rig.counter("integrity_failures", kind="parent") == 1
    assert rig.counter("downloaded_bytes", source="origin") == len(data)


async def test_a_swarm_with_nothing_to_give_stalls_and_the_origin_takes_over(rig: Rig) -> None:
    data = pattern(8 * SWARM_PIECE)
    rig.origin.data = data
    empty = MemoryParent("empty", data, SWARM_PIECE, set())  # downloading, nothing yet
    swarm_parents(rig, empty)
    loop = asyncio.get_running_loop()
    began = loop.time()
    download = rig.start(rig.cache(p2p=True, stall=0.3))
    assert await read_all(download) == data
    assert loop.time() - began < 5, "stall timeout 0.3 s: the origin took over soon"
    assert {parent for _, parent in rig.scheduler.pieces} == {None}, "all from the origin"


async def test_a_parent_that_never_sends_the_piece_times_out_and_is_left(rig: Rig) -> None:
    data = pattern(8 * SWARM_PIECE)
    rig.origin.data = data
    silent = MemoryParent("silent", data, SWARM_PIECE, set(range(8)), "stall")
    swarm_parents(rig, silent)
    download = rig.start(rig.cache(p2p=True, stall=0.3))
    assert await read_all(download) == data
    assert ("silent", "unreachable") in rig.scheduler.failed_parents


async def test_pieces_from_parents_and_the_origin_are_one_version(rig: Rig) -> None:
    """The swarm holds version 1 of a URL's object; the origin meanwhile serves version 2.
    A download that would mix them fails, and keeps nothing complete."""
    v1, v2 = pattern(16 * SWARM_PIECE, seed=1), pattern(16 * SWARM_PIECE, seed=2)
    half = MemoryParent("half", v1, SWARM_PIECE, set(range(8)))
    full = MemoryParent("full", v1, SWARM_PIECE, set(range(16)))
    rig.scheduler.digests = full.digests()  # what the first producer reported
    swarm_parents(rig, half)
    rig.origin.data = v2
    cache = rig.cache(p2p=True, stall=0.3)
    download = rig.start(cache)
    with pytest.raises(DownloadFailed, match="the object changed"):
        await read_all(download)
    await ended(cache, download)
    assert not download.complete
    record = rig.store.get(download.key.task_id)
    assert record is None or not record.complete
    assert rig.scheduler.results
    assert rig.scheduler.results[0] is not None


async def test_an_object_changing_at_the_origin_mid_download_fails_it(rig: Rig) -> None:
    """The first producer has no swarm digests to compare with: the origin's ETag,
    sent as If-Match and compared on every answer, is what keeps versions apart."""
    rig.origin.slow = 0.05
    old = rig.origin.data
    cache = rig.cache(p2p=True, origin_workers=1)  # a swarm of one: it is the first producer
    download = rig.start(cache)
    await download.wait_piece(1)
    rig.origin.data, rig.origin.etag = pattern(len(old), seed=7), '"v2"'
    received = bytearray()
    with pytest.raises(DownloadFailed, match="changed at the origin"):
        await read_all(download, partial=received)
    assert old.startswith(received), "what a client got before the cut is the old version"
    assert len(received) >= 2 * ORIGIN_PIECE
    assert rig.origin.if_match == {'"v1"'}, "every ranged GET named the version it wanted"
    await ended(cache, download)
    assert rig.store.get(download.key.task_id) is None, "the old version's pieces are dropped"
    assert rig.scheduler.changed == [True], "the scheduler is told to start a new generation"


async def test_a_cancelled_download_resumes_with_what_it_stored(rig: Rig) -> None:
    rig.origin.slow = 0.05
    cache = rig.cache(origin_workers=1)
    download = rig.start(cache)
    await download.wait_piece(1)
    waiting = asyncio.create_task(download.wait_piece(6))
    await asyncio.sleep(0)
    await download.cancel()
    with pytest.raises(DownloadFailed, match="stopped"):
        await asyncio.wait_for(waiting, 2)  # a client still waiting is cut, not left hanging
    stored = set(download.done)
    assert stored
    assert len(stored) < 7
    record = rig.store.get(download.key.task_id)
    assert record is not None
    assert not record.complete

    rig.origin.ranges.clear()
    again, created = cache.download(download.key, rig.origin.url, CIMultiDict())
    assert created
    assert await read_all(again) == rig.origin.data
    fetched = {start // ORIGIN_PIECE for start, _ in rig.origin.ranges}
    assert not fetched & stored, "pieces stored before the cancel are not fetched again"


async def stopped_halfway(rig: Rig) -> tuple[Cache, Download]:
    """A download cancelled (as at peer shutdown) once its first two pieces are stored."""
    rig.origin.slow = 0.05
    cache = rig.cache(origin_workers=1)
    download = rig.start(cache)
    await download.wait_piece(1)
    await download.cancel()
    return cache, download


async def test_a_resumed_piece_whose_bytes_rotted_is_fetched_again(rig: Rig) -> None:
    _, download = await stopped_halfway(rig)
    with rig.store.data_path(download.key.task_id).open("r+b") as handle:
        handle.seek(10)
        handle.write(b"rot")
    rig.restart()
    cache = rig.cache(origin_workers=1)
    again, _ = cache.download(download.key, rig.origin.url, CIMultiDict())
    assert await read_all(again) == rig.origin.data
    assert rig.counter("integrity_failures", kind="piece") == 1


async def test_a_changed_object_is_not_resumed(rig: Rig) -> None:
    cache, download = await stopped_halfway(rig)
    rig.origin.data, rig.origin.etag = pattern(len(rig.origin.data), seed=9), '"v2"'
    again, _ = cache.download(download.key, rig.origin.url, CIMultiDict())
    assert await read_all(again) == rig.origin.data


async def test_whole_bodies_are_cut_into_pieces_and_verified_against_the_sha256(
    rig: Rig,
) -> None:
    import hashlib

    rig.origin.ignore_range = True
    good = hashlib.sha256(rig.origin.data).hexdigest()
    download = rig.start(rig.cache(), sha256=good)
    assert await read_all(download) == rig.origin.data
    assert rig.origin.whole_bodies == 1  # it ignored the stat's Range: that answer is the body

    wrong = hashlib.sha256(b"another object").hexdigest()
    held_back = rig.start(rig.cache(), sha256=wrong)
    with pytest.raises(DownloadFailed, match="object sha256"):
        await read_all(held_back)
    assert rig.store.get(wrong) is None


async def test_a_response_the_origin_forbids_storing_is_passed_through(rig: Rig) -> None:
    rig.origin.cache_control = "no-store"
    download = rig.start(rig.cache())
    start = await download.wait_started()
    assert isinstance(start, PassThrough)
    assert "no-store" in start.reason
    assert rig.store.get(download.key.task_id) is None


def test_expected_digest_prefers_the_swarms_record_over_a_parents_claim() -> None:
    swarm = {0: digest_of(b"a")}
    claimed = {0: digest_of(b"b"), 1: digest_of(b"c")}
    assert expected_digest(0, swarm, claimed) == digest_of(b"a")
    assert expected_digest(1, swarm, claimed) == digest_of(b"c")
    assert expected_digest(2, swarm, claimed) is None
    assert expected_digest(1, swarm) is None
