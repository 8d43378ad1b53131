"""Which tasks GC lets go: pure selection by TTL and watermarks."""

from __future__ import annotations

from damselfly.peer.store.gc import GcPolicy, StoredTask, select_evictions

MiB = 1 << 20
POLICY = GcPolicy(
    quota=100 * MiB, high_watermark_percent=90, low_watermark_percent=70, task_ttl=3600
)


def task(task_id: str, accessed: float, size_mib: int, complete: bool = True) -> StoredTask:
    return StoredTask(task_id, complete, accessed, size_mib * MiB)


def test_nothing_goes_below_the_high_watermark() -> None:
    tasks = [task("a", 100, 40), task("b", 200, 40)]
    assert select_evictions(tasks, POLICY, now=300, in_use=frozenset()) == []


def test_above_high_least_recently_used_go_until_low() -> None:
    tasks = [task("new", 300, 30), task("old", 100, 30), task("mid", 200, 35)]
    # 95 MiB > 90: drop "old" (65 left) -> at or below 70, stop.
    assert select_evictions(tasks, POLICY, now=400, in_use=frozenset()) == [("old", "watermark")]


def test_incoming_bytes_count_towards_the_watermark() -> None:
    tasks = [task("a", 100, 30), task("b", 200, 30)]
    chosen = select_evictions(tasks, POLICY, now=300, in_use=frozenset(), incoming=40 * MiB)
    assert chosen == [("a", "watermark")]  # 100 > 90, then 70 <= 70


def test_tasks_in_use_are_never_chosen() -> None:
    tasks = [task("busy", 1, 60), task("idle", 2, 35)]
    chosen = select_evictions(tasks, POLICY, now=10, in_use=frozenset({"busy"}))
    assert chosen == [("idle", "watermark")]


def test_expired_tasks_go_whatever_the_usage() -> None:
    tasks = [task("stale", 0, 1), task("fresh", 5000, 1), task("half", 0, 1, complete=False)]
    chosen = select_evictions(tasks, POLICY, now=5000, in_use=frozenset({"half"}))
    assert chosen == [("stale", "ttl")]
