"""Scheduler state driven directly (no HTTP): the rules of the contract, with a fake clock."""

from __future__ import annotations

import random

import pytest

from damselfly.api.scheduler import (
    AnnounceHost,
    HeldTask,
    ParentFailed,
    PieceReport,
    PieceReports,
    RegisterTask,
    Reschedule,
    TaskResult,
)
from damselfly.scheduler.resources import Limits, Resources


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def res(clock: Clock) -> Resources:
    return Resources(Limits(host_ttl=15.0, reschedule_limit=2), clock=clock, rng=random.Random(7))


def announce(res: Resources, host: str, seed: bool = False, **kw: object) -> None:
    res.announce(
        AnnounceHost(
            host_id=host,
            ip="127.0.0.1",
            upload_port=60000 + len(host),
            seed=seed,
            upload_slots_total=4,
            upload_slots_free=4,
            **kw,  # type: ignore[arg-type]
        )
    )


def pieces(res: Resources, host: str, numbers: range, parent: str | None = None) -> None:
    res.report_pieces(
        PieceReports(
            task_id="t",
            host_id=host,
            pieces=[
                PieceReport(number=n, digest=f"d{n}", length=100, cost_ms=10, parent_host_id=parent)
                for n in numbers
            ],
        )
    )


def register(res: Resources, host: str) -> list[str]:
    decision = res.register(RegisterTask(task_id="t", host_id=host, url="http://o/x"))
    return [p.host_id for p in decision.schedule.parents]


def test_first_peer_without_seeds_goes_back_to_source(res: Resources) -> None:
    announce(res, "a")
    decision = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    assert decision.schedule.back_to_source
    assert decision.schedule.parents == []
    assert decision.seeds_to_try == ()


def test_first_peer_with_seeds_asks_the_ring_owner_first(res: Resources) -> None:
    for s in ("s1", "s2", "s3"):
        announce(res, s, seed=True)
    announce(res, "a")
    decision = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    assert not decision.schedule.back_to_source
    assert set(decision.seeds_to_try) == {"s1", "s2", "s3"}
    from tests.support import hashring

    assert decision.seeds_to_try[0] == hashring.owner("t", ["s1", "s2", "s3"])
    schedule = res.begin_seed("t", decision.seeds_to_try[0], "a")
    assert schedule.seed_triggered
    assert schedule.parents[0].complete is False
    assert schedule.parents[0].finished_pieces == 0
    # A second child meanwhile gets the seed as a parent without triggering again.
    announce(res, "b")
    decision_b = res.register(RegisterTask(task_id="t", host_id="b", url="http://o/x"))
    assert decision_b.seeds_to_try == ()
    assert decision_b.schedule.parents[0].host_id == decision.seeds_to_try[0]


def test_seed_itself_never_triggers_seeds(res: Resources) -> None:
    announce(res, "s1", seed=True)
    announce(res, "s2", seed=True)
    decision = res.register(RegisterTask(task_id="t", host_id="s1", url="http://o/x"))
    assert decision.schedule.back_to_source
    assert decision.seeds_to_try == ()


def test_holders_excluding_self_blocked_and_failed(res: Resources) -> None:
    for h in ("a", "b", "c", "d"):
        announce(res, h)
    for h in ("a", "b", "c"):
        pieces(res, h, range(3))
    assert set(register(res, "d")) == {"a", "b", "c"}
    res.parent_failed(ParentFailed(task_id="t", host_id="d", parent_host_id="a", reason="corrupt"))
    res.parent_failed(
        ParentFailed(task_id="t", host_id="d", parent_host_id="b", reason="unreachable")
    )
    assert register(res, "d") == ["c"]
    assert res.hosts["a"].upload_failures == 1
    # Another child is unaffected by d's block list.
    announce(res, "e")
    assert set(register(res, "e")) >= {"a", "b"}


def test_reschedule_blocklist_is_remembered_and_limited(res: Resources) -> None:
    for h in ("a", "b", "c"):
        announce(res, h)
        pieces(res, h, range(2))
    announce(res, "d")
    decision = res.reschedule(Reschedule(task_id="t", host_id="d", blocklist=["a"]))
    assert {p.host_id for p in decision.schedule.parents} == {"b", "c"}
    decision = res.reschedule(Reschedule(task_id="t", host_id="d", blocklist=["b"]))
    assert [p.host_id for p in decision.schedule.parents] == ["c"]
    # Third reschedule exceeds the limit of 2: back to source.
    decision = res.reschedule(Reschedule(task_id="t", host_id="d", blocklist=[]))
    assert decision.schedule.back_to_source


def test_no_cycles(res: Resources) -> None:
    for h in ("a", "b"):
        announce(res, h)
    pieces(res, "a", range(2))
    assert register(res, "b") == ["a"]
    pieces(res, "b", range(2), parent="a")
    # a (still downloading) must not get b, which downloads from a.
    decision = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    assert decision.schedule.parents == []


def test_complete_peer_has_no_parents_and_can_serve_anyone(res: Resources) -> None:
    for h in ("a", "b"):
        announce(res, h)
    pieces(res, "a", range(2))
    register(res, "b")
    pieces(res, "b", range(2), parent="a")
    res.report_result(
        TaskResult(task_id="t", host_id="b", success=True, size=200, piece_length=100)
    )
    assert register(res, "a") == ["b"]


def test_failed_peer_is_not_a_parent(res: Resources) -> None:
    for h in ("a", "b"):
        announce(res, h)
    pieces(res, "a", range(2))
    res.report_result(TaskResult(task_id="t", host_id="a", success=False, error="disk full"))
    assert register(res, "b") == []


def test_more_pieces_preferred_and_bounded(res: Resources) -> None:
    for i in range(10):
        announce(res, f"p{i}")
        pieces(res, f"p{i}", range(i + 1))
    announce(res, "child")
    parents = register(res, "child")
    assert len(parents) == 4
    assert parents[0] == "p9"


def test_bad_parent_is_excluded(res: Resources) -> None:
    for h in ("slow", "ok", "child", "other"):
        announce(res, h)
    pieces(res, "slow", range(3))
    pieces(res, "ok", range(1))
    costs = [10.0] * 10 + [900.0]
    res.report_pieces(
        PieceReports(
            task_id="t",
            host_id="other",
            pieces=[
                PieceReport(number=i, digest=f"d{i}", length=1, cost_ms=c, parent_host_id="slow")
                for i, c in enumerate(costs)
            ],
        )
    )
    assert "slow" not in register(res, "child")


def test_an_object_that_changed_starts_a_new_generation(res: Resources) -> None:
    for h in ("a", "b", "c"):
        announce(res, h)
    pieces(res, "a", range(3))
    pieces(res, "b", range(2), parent="a")
    res.report_result(TaskResult(task_id="t", host_id="a", success=True))
    res.report_result(
        TaskResult(task_id="t", host_id="b", success=False, error="changed", changed=True)
    )
    decision = res.register(RegisterTask(task_id="t", host_id="c", url="http://o/x"))
    assert decision.schedule.parents == [], "no holder of the old version is handed out"
    assert decision.schedule.piece_digests == {}, "nor its digests to match"
    outcome = res.report_pieces(
        PieceReports(
            task_id="t",
            host_id="c",
            pieces=[PieceReport(number=n, digest=f"new{n}", length=100) for n in range(3)],
        )
    )
    assert outcome.conflicts == 0, "the new version's pieces are not taken for conflicts"
    assert res.tasks["t"].piece_digests == {0: "new0", 1: "new1", 2: "new2"}


def test_first_digest_wins(res: Resources) -> None:
    announce(res, "a")
    announce(res, "b")
    pieces(res, "a", range(2))
    outcome = res.report_pieces(
        PieceReports(
            task_id="t",
            host_id="b",
            pieces=[
                PieceReport(number=0, digest="evil", length=100),
                PieceReport(number=1, digest="d1", length=100, parent_host_id="a"),
            ],
        )
    )
    assert outcome.conflicts == 1
    assert outcome.accepted == 1
    assert outcome.back_to_source_bytes == 0
    assert outcome.remote_peer_bytes == 100
    assert res.tasks["t"].piece_digests == {0: "d0", 1: "d1"}
    assert res.tasks["t"].peers["b"].finished == {1}


def test_announce_relearns_holders_and_digests(clock: Clock) -> None:
    fresh = Resources(Limits(), clock=clock)
    fresh.announce(
        AnnounceHost(
            host_id="seed",
            ip="10.0.0.1",
            upload_port=65002,
            seed=True,
            tasks=[
                HeldTask(
                    task_id="t",
                    url="http://o/x",
                    size=250,
                    piece_length=100,
                    piece_digests={0: "d0", 1: "d1", 2: "d2"},
                    complete=True,
                )
            ],
        )
    )
    decision = fresh.register(RegisterTask(task_id="t", host_id="c", url="http://o/x"))
    assert [p.host_id for p in decision.schedule.parents] == ["seed"]
    parent = decision.schedule.parents[0]
    assert parent.complete
    assert parent.finished_pieces == 3
    assert decision.schedule.piece_digests == {0: "d0", 1: "d1", 2: "d2"}
    assert decision.schedule.size == 250


def test_evicted_complete_task_is_forgotten_on_next_announce(res: Resources) -> None:
    held = HeldTask(task_id="t", url="u", piece_digests={0: "d0"}, complete=True)
    res.announce(AnnounceHost(host_id="a", ip="127.0.0.1", upload_port=1, tasks=[held]))
    assert "t" in res.tasks
    res.announce(AnnounceHost(host_id="a", ip="127.0.0.1", upload_port=1, tasks=[]))
    assert "t" not in res.tasks


def test_hosts_expire_after_ttl(res: Resources, clock: Clock) -> None:
    announce(res, "a")
    announce(res, "b")
    pieces(res, "a", range(1))
    register(res, "b")
    clock.now += 10
    announce(res, "b")
    clock.now += 10  # a silent for 20 s > 15 s TTL, b for 10 s
    assert res.expire() == ["a"]
    assert "a" not in res.hosts
    assert "a" not in res.tasks["t"].peers
    assert res.tasks["t"].piece_digests == {0: "d0"}  # b still takes part; digests stay
    assert register(res, "b") == []


def test_seed_failure_forgets_seed_for_task(res: Resources) -> None:
    announce(res, "s1", seed=True)
    announce(res, "a")
    decision = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    res.begin_seed("t", "s1", "a")
    res.seed_failed("t", "s1", "a")
    assert decision.seeds_to_try == ("s1",)
    again = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    assert again.schedule.back_to_source
    assert again.seeds_to_try == ()


def test_seed_with_per_task_slots_takes_that_many_children_then_feeds_a_tree(
    res: Resources,
) -> None:
    announce(res, "s1", seed=True, upload_slots_per_task=2)
    for h in ("a", "b", "c", "d"):
        announce(res, h)
    first = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    res.begin_seed("t", first.seeds_to_try[0], "a")
    pieces(res, "s1", range(4))
    assert "s1" in register(res, "b")
    # The seed has two children: later peers are given the peers it feeds.
    assert set(register(res, "c")) == {"a", "b"}
    assert "s1" not in register(res, "d")
    # A child of the seed that asks again keeps it.
    assert "s1" in register(res, "b")
    # A child that finishes frees its place for the next peer that asks.
    res.report_result(TaskResult(task_id="t", host_id="a", success=True))
    assert "s1" in register(res, "d")


def test_full_seed_still_serves_a_child_with_no_other_parent(res: Resources) -> None:
    announce(res, "s1", seed=True, upload_slots_per_task=1)
    for h in ("a", "b"):
        announce(res, h)
    first = res.register(RegisterTask(task_id="t", host_id="a", url="http://o/x"))
    res.begin_seed("t", first.seeds_to_try[0], "a")
    res.parent_failed(ParentFailed(task_id="t", host_id="b", parent_host_id="a", reason="corrupt"))
    decision = res.register(RegisterTask(task_id="t", host_id="b", url="http://o/x"))
    assert [p.host_id for p in decision.schedule.parents] == ["s1"]
    assert not decision.schedule.back_to_source
