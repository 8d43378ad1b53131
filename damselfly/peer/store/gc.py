"""Which tasks the store lets go: by TTL, and by watermarks over its own bytes.

Pure: the caller supplies the store's task list and what is in use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    complete: bool
    accessed: float
    stored_bytes: int


@dataclass(frozen=True)
class GcPolicy:
    quota: int
    high_watermark_percent: int
    low_watermark_percent: int
    task_ttl: float

    @property
    def high(self) -> int:
        return self.quota * self.high_watermark_percent // 100

    @property
    def low(self) -> int:
        return self.quota * self.low_watermark_percent // 100


def select_evictions(
    tasks: list[StoredTask],
    policy: GcPolicy,
    now: float,
    in_use: frozenset[str],
    incoming: int = 0,
) -> list[tuple[str, str]]:
    """(task_id, reason) pairs to delete, least recently used first.

    Tasks in use (being downloaded or served) are never chosen. Expired tasks
    go whatever the usage; then, if usage plus ``incoming`` bytes is above the
    high watermark, least recently used tasks go until it is at the low one.
    """
    chosen: list[tuple[str, str]] = []
    used = sum(task.stored_bytes for task in tasks)
    candidates = sorted((t for t in tasks if t.task_id not in in_use), key=lambda t: t.accessed)
    remaining = []
    for task in candidates:
        if now - task.accessed > policy.task_ttl:
            chosen.append((task.task_id, "ttl"))
            used -= task.stored_bytes
        else:
            remaining.append(task)
    if used + incoming > policy.high:
        for task in remaining:
            if used + incoming <= policy.low:
                break
            chosen.append((task.task_id, "watermark"))
            used -= task.stored_bytes
    return chosen


def select_lru(
    tasks: list[StoredTask], in_use: frozenset[str], target: int, reason: str
) -> list[tuple[str, str]]:
    """Least recently used tasks not in use, until the store holds at most ``target``
    bytes (or nothing more can go): the disk-space evictions, at once."""
    used = sum(task.stored_bytes for task in tasks)
    chosen: list[tuple[str, str]] = []
    for task in sorted((t for t in tasks if t.task_id not in in_use), key=lambda t: t.accessed):
        if used <= target:
            break
        chosen.append((task.task_id, reason))
        used -= task.stored_bytes
    return chosen
