"""A real ``damselfly scheduler`` process on loopback, driven through the real SchedulerClient."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from damselfly.api import scheduler as api
from damselfly.api.schedulerclient import SchedulerClient, SchedulerUnavailable
from tests.support import hashring
from tests.support.ports import free_port
from tests.support.scheduler import SchedulerHandle, start_scheduler

TASK = "task-" + "a" * 58
URL = "http://origin.invalid/big.bin"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def scheduler(processes: Any, tmp_path: Path) -> SchedulerHandle:
    return start_scheduler(processes, tmp_path)


def client(session: aiohttp.ClientSession, *handles: SchedulerHandle) -> SchedulerClient:
    return SchedulerClient([h.address for h in handles], session, timeout=2.0)


def host(host_id: str, port: int = 65002, seed: bool = False, **kw: Any) -> api.AnnounceHost:
    return api.AnnounceHost(
        host_id=host_id,
        ip="127.0.0.1",
        upload_port=port,
        seed=seed,
        upload_slots_total=4,
        upload_slots_free=4,
        disk_free_bytes=1 << 30,
        **kw,
    )


def register(host_id: str, task: str = TASK, **kw: Any) -> api.RegisterTask:
    return api.RegisterTask(task_id=task, host_id=host_id, url=URL, **kw)


def report(
    host_id: str, numbers: range, parent: str | None = None, length: int = 1000
) -> api.PieceReports:
    return api.PieceReports(
        task_id=TASK,
        host_id=host_id,
        pieces=[
            api.PieceReport(
                number=n, digest=f"{n:064x}", length=length, cost_ms=5.0, parent_host_id=parent
            )
            for n in numbers
        ],
    )


class StandInSeed:
    """A stand-in for a seed peer's upload server (the other engineer's code).

    It only records the scheduler's ``POST /v1/seed`` and answers 202, which is
    all the scheduler's side of the contract needs.
    """

    def __init__(self) -> None:
        self.requests: list[api.SeedRequest] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(api.SeedRequest.model_validate_json(await request.read()))
        return web.Response(status=202)

    async def __aenter__(self) -> StandInSeed:
        app = web.Application()
        app.router.add_post(api.SEED_PATH, self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_register_report_and_traffic_metrics(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    c = client(session, scheduler)
    reply = await c.announce(host("a"))
    assert reply.interval_seconds == 5.0
    await c.announce(host("b"))
    first = await c.register(register("a", size=4000, piece_length=1000, sha256="ab" * 32))
    assert first.back_to_source
    assert first.parents == []
    assert not first.seed_triggered
    await c.report_pieces(report("a", range(4)))
    await c.report_result(
        api.TaskResult(task_id=TASK, host_id="a", success=True, size=4000, piece_length=1000)
    )
    second = await c.register(register("b"))
    assert [p.host_id for p in second.parents] == ["a"]
    parent = second.parents[0]
    assert parent.complete
    assert parent.finished_pieces == 4
    assert parent.upload_port == 65002
    assert second.piece_digests == {n: f"{n:064x}" for n in range(4)}
    assert second.size == 4000
    assert second.piece_length == 1000
    await c.report_pieces(report("b", range(4), parent="a"))
    origin = scheduler.metric("damselfly_scheduler_traffic_bytes_total", type="back_to_source")
    peer = scheduler.metric("damselfly_scheduler_traffic_bytes_total", type="remote_peer")
    assert (origin, peer) == (4000, 4000)
    assert scheduler.metric("damselfly_scheduler_registrations_total") == 2
    assert scheduler.metric("damselfly_scheduler_piece_reports_total") == 8
    assert scheduler.metric("damselfly_scheduler_schedules_total", result="parents") == 1
    assert scheduler.metric("damselfly_scheduler_schedules_total", result="back_to_source") == 1
    assert scheduler.metric("damselfly_scheduler_schedule_latency_seconds_count") == 2


async def test_conflicting_digest_is_counted_and_ignored(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    c = client(session, scheduler)
    await c.report_pieces(report("a", range(2)))
    bad = api.PieceReports(
        task_id=TASK, host_id="b", pieces=[api.PieceReport(number=0, digest="f" * 64, length=1)]
    )
    await c.report_pieces(bad)
    await c.announce(host("c"))
    schedule = await c.register(register("c"))
    assert schedule.piece_digests[0] == f"{0:064x}"
    assert scheduler.metric("damselfly_scheduler_digest_conflicts_total") == 1


async def test_excludes_self_blocked_and_failed_parents(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    c = client(session, scheduler)
    for h in ("h1", "h2", "h3", "h4", "child", "other"):
        await c.announce(host(h))
    for h in ("h1", "h2", "h3", "h4"):
        await c.report_pieces(report(h, range(3)))
    await c.report_pieces(report("child", range(1)))
    first = await c.register(register("child"))
    assert {p.host_id for p in first.parents} == {"h1", "h2", "h3", "h4"}  # never itself
    await c.parent_failed(
        api.ParentFailed(task_id=TASK, host_id="child", parent_host_id="h2", reason="corrupt")
    )
    await c.parent_failed(
        api.ParentFailed(task_id=TASK, host_id="child", parent_host_id="h3", reason="unreachable")
    )
    again = await c.reschedule(api.Reschedule(task_id=TASK, host_id="child", blocklist=["h1"]))
    assert [p.host_id for p in again.parents] == ["h4"]
    # Remembered: a plain re-register still excludes them.
    third = await c.register(register("child"))
    assert [p.host_id for p in third.parents] == ["h4"]
    # Another child is not affected by this child's block list; it may get "child" too.
    others = await c.register(register("other"))
    assert {"h1", "h2", "h3", "h4"} & {p.host_id for p in others.parents}
    assert scheduler.metric("damselfly_scheduler_parent_failures_total", reason="corrupt") == 1


async def test_no_holder_triggers_the_ring_owner_seed(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    c = client(session, scheduler)
    async with StandInSeed() as seed_a, StandInSeed() as seed_b:
        await c.announce(host("seed-a", port=seed_a.port, seed=True))
        await c.announce(host("seed-b", port=seed_b.port, seed=True))
        await c.announce(host("p1"))
        await c.announce(host("p2"))
        headers = {"Authorization": "Bearer secret"}
        schedule = await c.register(register("p1", headers=headers, sha256="cd" * 32))
        owner = hashring.owner(TASK, ["seed-a", "seed-b"])
        assert schedule.seed_triggered
        assert not schedule.back_to_source
        assert [p.host_id for p in schedule.parents] == [owner]
        parent = schedule.parents[0]
        assert parent.seed
        assert not parent.complete
        assert parent.finished_pieces == 0
        asked = seed_a if owner == "seed-a" else seed_b
        idle = seed_b if owner == "seed-a" else seed_a
        assert asked.requests == [
            api.SeedRequest(task_id=TASK, url=URL, headers=headers, sha256="cd" * 32)
        ]
        assert idle.requests == []
        # The next child gets the seed (still fetching) without a second trigger.
        second = await c.register(register("p2"))
        assert owner in {p.host_id for p in second.parents}
        assert not second.seed_triggered
        assert len(asked.requests) == 1
    assert scheduler.metric("damselfly_scheduler_seed_triggers_total", result="accepted") == 1
    assert scheduler.metric("damselfly_scheduler_schedules_total", result="seed") == 1


async def test_unreachable_seed_means_back_to_source(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    c = client(session, scheduler)
    await c.announce(host("dead-seed", port=free_port(), seed=True))
    await c.announce(host("p1"))
    schedule = await c.register(register("p1"))
    assert schedule.back_to_source
    assert not schedule.seed_triggered
    assert schedule.parents == []
    assert scheduler.metric("damselfly_scheduler_seed_triggers_total", result="failed") == 1


async def test_restart_relearns_holders_from_announces(
    processes: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    first = start_scheduler(processes, tmp_path, name="scheduler-1")
    c = client(session, first)
    digests = {n: f"{n:064x}" for n in range(3)}
    held = api.HeldTask(
        task_id=TASK, url=URL, size=3000, piece_length=1000, piece_digests=digests, complete=True
    )
    seed_host = host("seed", seed=True, tasks=[held])
    await c.announce(seed_host)
    assert first.proc.stop() == 0  # SIGTERM: a clean exit
    with pytest.raises(SchedulerUnavailable):
        await c.register(register("p1"))
    second = start_scheduler(
        processes, tmp_path, name="scheduler-2", ports=(first.port, first.metrics_port)
    )
    await c.announce(seed_host)  # the seed's next periodic announce
    schedule = await c.register(register("p1"))
    assert [p.host_id for p in schedule.parents] == ["seed"]
    assert schedule.parents[0].complete
    assert schedule.parents[0].finished_pieces == 3
    assert schedule.piece_digests == digests
    assert schedule.size == 3000
    assert not schedule.seed_triggered
    assert second.proc.alive()


async def test_silent_hosts_expire(
    processes: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    handle = start_scheduler(processes, tmp_path, config={"announceInterval": "200ms"})
    c = client(session, handle)
    reply = await c.announce(host("holder"))
    assert reply.interval_seconds == 0.2
    await c.announce(host("child"))
    await c.report_pieces(report("holder", range(2)))
    assert [p.host_id for p in (await c.register(register("child"))).parents] == ["holder"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await c.announce(host("child"))  # the child keeps announcing; the holder is silent
        if handle.metric("damselfly_scheduler_hosts_expired_total") >= 1:
            break
        await asyncio.sleep(0.1)
    schedule = await c.register(register("child"))
    assert schedule.parents == []
    assert schedule.back_to_source
    assert handle.metric("damselfly_scheduler_hosts_expired_total") == 1


async def test_client_fails_over_to_the_next_replica(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    c = SchedulerClient([dead, scheduler.address], session, timeout=2.0)
    tasks = [f"t{i}" for i in range(20)]
    owned_by_dead = [t for t in tasks if c.order(t)[0] == f"http://{dead}"]
    assert owned_by_dead  # 20 tasks over 2 replicas: some belong to the dead one
    await c.announce(host("p1"))  # one live replica is enough
    for task in owned_by_dead:
        schedule = await c.register(register("p1", task=task))
        assert schedule.back_to_source
    assert scheduler.metric("damselfly_scheduler_registrations_total") == len(owned_by_dead)
    nobody = SchedulerClient([dead], session, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable):
        await nobody.register(register("p1"))
    assert time.monotonic() - started < 2


async def test_invalid_body_is_a_clear_400(
    scheduler: SchedulerHandle, session: aiohttp.ClientSession
) -> None:
    url = f"http://{scheduler.address}{api.REGISTER_PATH}"
    async with session.post(url, json={"taskId": "t"}) as resp:
        assert resp.status == 400
        text = await resp.text()
    assert "hostId" in text
    assert "RegisterTask" in text
    async with session.get(f"http://127.0.0.1:{scheduler.metrics_port}/metrics") as resp:
        assert resp.status == 200


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("candidateParents: 0\nbogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "damselfly.cli", "scheduler", "-c", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "candidateParents" in proc.stderr
    assert "bogus" in proc.stderr
