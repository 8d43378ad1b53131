"""The disk under the store: telling a full disk apart, and keeping some of it free.

A node-local cache shares its disk with the node's workloads. Two rules follow:
the peer stops growing before the disk is full (``storage.minFree`` is left free
on the filesystem, whatever the quota says), and when the disk fills anyway (a
workload wrote faster) the download in progress fails at once, its partial task
goes and GC frees space — a full disk must never break the peer for good.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from damselfly.errors import StoreError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(StoreError):
    """The store's filesystem has no room for a write the download needed."""


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        full = getattr(error, "sqlite_errorname", "") == "SQLITE_FULL"
        if isinstance(error, sqlite3.Error) and full:
            return True
    return False


def free_bytes(root: Path) -> int:
    return shutil.disk_usage(root).free


def shortfall(free: int, pending: int, incoming: int, min_free: int) -> int:
    """Bytes to free so that ``incoming`` more (and ``pending``, promised to running
    downloads whose files are still sparse) leave ``min_free`` on the filesystem."""
    return max(0, incoming + pending + min_free - free)


@dataclass
class StoreTrouble:
    """Why the store cannot take new objects right now, while it lasts."""

    reason: str | None = None
    since: float | None = None

    def report(self, reason: str) -> None:
        if self.reason is None:
            self.since = time.time()
        self.reason = reason

    def clear(self) -> None:
        self.reason = None
        self.since = None
