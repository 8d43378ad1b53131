"""The piece store: one data file per task, pieces at their offsets, metadata in SQLite.

It survives restarts: complete tasks are served again; a half-written task
keeps its recorded pieces (each with its digest) so a later download can
resume, and is never reported as complete. Pieces read back from disk are
checked against their digest before they are served, once per process run
(pieces this process wrote were hashed from the very bytes it wrote).

SQLite runs in WAL mode with ``synchronous=NORMAL``: readers (clients, children)
never wait for the writer, and a commit survives a crash of the process (kill -9,
OOM); only a power cut can lose the last commits, never corrupt the database — a
piece row lost that way is a piece fetched again, and a row whose bytes were lost
is caught by the check on first read. A damaged database (not a database, a
failed ``quick_check``) is moved aside at start-up and the store starts empty.
``reserve.bin`` holds 8 MiB of the disk, released when a write finds the disk
full so that the clean-up (deleting rows) has room, and taken again once there is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from damselfly.errors import StoreError
from damselfly.peer.store.check import StoreUnusable, identity
from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.pieces import Piece, piece_at, piece_count
from damselfly.peer.store.space import free_bytes, is_disk_full
from damselfly.peer.store.writer import PieceWriter

READ_CHUNK = 1 << 20
IOV_BATCH = 512  # well under IOV_MAX (1024 on Linux)

log = logging.getLogger(__name__)

RESERVE_FILE = "reserve.bin"
RESERVE_BYTES = 8 << 20  # room for SQLite's journal to record a clean-up on a full disk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    size INTEGER,
    piece_length INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    headers TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    length INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (task_id, number)
);
"""


class PieceCorrupt(StoreError):
    """A stored piece no longer matches its digest; the task has been dropped."""


class StoreFull(StoreError):
    """An object cannot fit in the store's quota, even after evicting."""


@dataclass
class TaskRecord:
    task_id: str
    url: str
    size: int | None
    piece_length: int
    complete: bool
    sha256: str | None
    headers: dict[str, str]
    created: float
    accessed: float
    pieces: dict[int, str] = field(default_factory=dict)  # number -> digest (piecedigest)

    def piece(self, number: int) -> Piece:
        """Piece geometry; while the size is unknown every piece so far is full."""
        if self.size is None:
            return Piece(number, number * self.piece_length, self.piece_length)
        return piece_at(number, self.size, self.piece_length)

    @property
    def total_pieces(self) -> int | None:
        return None if self.size is None else piece_count(self.size, self.piece_length)

    @property
    def stored_bytes(self) -> int:
        if self.size is None:
            return len(self.pieces) * self.piece_length
        return sum(self.piece(n).length for n in self.pieces)


class PieceStore:
    """Task data files under ``root/data`` and their metadata in ``root/store.db``."""

    def __init__(self, root: Path, quota: int) -> None:
        self.root = root
        self.quota = quota
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)  # and root with it
        self._db = self._open_database(root / "store.db")
        self._verified: set[tuple[str, float, int]] = set()  # task, created, piece
        self._remove_orphan_files()
        self._drop_short_files()
        self.keep_reserve()

    # --- the reserve: room to clean up in when the disk is full ----------------
    @property
    def reserve_path(self) -> Path:
        return self.root / RESERVE_FILE

    def keep_reserve(self) -> bool:
        """Hold RESERVE_BYTES of the disk in a file (allocated, not sparse); False when
        there is no room for it now. Releasing it is what lets SQLite record the
        clean-up of a download that found the disk full."""
        if self.reserve_path.exists():
            return True
        staged = self.reserve_path.with_suffix(".tmp")
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(staged, self.reserve_path)
        except OSError:
            staged.unlink(missing_ok=True)
            return False
        return True

    def release_reserve(self) -> None:
        self.reserve_path.unlink(missing_ok=True)

    def _open_database(self, path: Path) -> sqlite3.Connection:
        """The store's SQLite database. A damaged one (not a database, malformed, a
        failed quick_check: a truncated or overwritten file) is moved aside and the
        store starts empty, saying so; a peer must not crash-loop on its cache."""
        try:
            return _connect(path)
        except sqlite3.DatabaseError as exc:
            # SQLite says "disk I/O error" when it cannot grow its shared-memory file
            full = is_disk_full(exc) or free_bytes(self.root) < RESERVE_BYTES
            if full and self.reserve_path.exists():
                log.warning("disk full at start-up: the store's reserve released to open it")
                self.release_reserve()
                return self._open_database(path)
            if not _damaged(exc):
                raise StoreUnusable(_unusable(path, exc)) from None
            aside = _move_aside(path)
            log.warning(
                "the store's database is damaged; moved it aside and starting with an empty "
                "store (the data files it described are removed)",
                extra={"database": str(path), "moved_to": str(aside), "error": str(exc)},
            )
        try:
            return _connect(path)
        except sqlite3.DatabaseError as exc:
            raise StoreUnusable(_unusable(path, exc)) from None

    def close(self) -> None:
        self._db.close()

    # --- paths and files -------------------------------------------------
    def data_path(self, task_id: str) -> Path:
        return self.data_dir / task_id[:2] / task_id

    def _remove_orphan_files(self) -> None:
        """Data files without a task row are leftovers of a crash mid-create (or of a
        damaged database moved aside)."""
        known = {row[0] for row in self._db.execute("SELECT task_id FROM tasks")}
        removed = 0
        for path in self.data_dir.glob("*/*"):
            if path.name not in known:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed data files no task describes", extra={"files": removed})

    def _drop_short_files(self) -> None:
        """Tasks whose data file is missing or shorter than their record (truncated by
        hand, a restored backup, a full disk at creation) cannot be served: dropped."""
        rows = self._db.execute(
            "SELECT t.task_id, t.size, MAX(p.number * t.piece_length + p.length)"
            " FROM tasks t LEFT JOIN pieces p ON p.task_id = t.task_id GROUP BY t.task_id"
        ).fetchall()
        for task_id, size, last_end in rows:
            expected = size if size is not None else (last_end or 0)
            try:
                actual = self.data_path(task_id).stat().st_size
            except FileNotFoundError:
                actual = -1
            if actual < expected:
                log.warning(
                    "dropped a task whose data file is shorter than its record",
                    extra={"task": task_id, "bytes": max(actual, 0), "expected": expected},
                )
                self.delete(task_id)

    # --- metadata ---------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(
            "SELECT task_id, url, size, piece_length, complete, sha256, headers, created,"
            " accessed FROM tasks WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        record = TaskRecord(
            task_id=row[0],
            url=row[1],
            size=row[2],
            piece_length=row[3],
            complete=bool(row[4]),
            sha256=row[5],
            headers=json.loads(row[6]),
            created=row[7],
            accessed=row[8],
        )
        record.pieces = dict(
            self._db.execute(
                "SELECT number, digest FROM pieces WHERE task_id = ?", (task_id,)
            ).fetchall()
        )
        return record

    def begin(
        self,
        task_id: str,
        url: str,
        size: int | None,
        piece_length: int,
        sha256: str | None,
        headers: dict[str, str],
    ) -> TaskRecord:
        """Start (or restart from scratch) a download; its data file is emptied."""
        now = time.time()
        self._db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        self._db.execute(
            "INSERT INTO tasks (task_id, url, size, piece_length, complete, sha256, headers,"
            " created, accessed) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
            (task_id, url, size, piece_length, sha256, json.dumps(headers), now, now),
        )
        path = self.data_path(task_id)
        path.parent.mkdir(exist_ok=True)
        path.unlink(missing_ok=True)  # a client still reading the old file keeps its inode
        with path.open("wb") as handle:
            if size:
                handle.truncate(size)
        self._forget_verified(task_id)
        return TaskRecord(task_id, url, size, piece_length, False, sha256, headers, now, now)

    def record_piece(self, record: TaskRecord, number: int, length: int, digest: str) -> None:
        """A piece just written and hashed: its digest, and known good in this generation."""
        self._db.execute(
            "INSERT OR REPLACE INTO pieces (task_id, number, length, digest) VALUES (?, ?, ?, ?)",
            (record.task_id, number, length, digest),
        )
        self._verified.add((record.task_id, record.created, number))

    def failing_pieces(self, record: TaskRecord) -> list[int]:
        """The stored pieces of ``record`` whose bytes fail their digest (reads only: a thread
        may run it). After a crash the data file may lack writes its metadata recorded."""
        bad: list[int] = []
        fd = self.open_for_read(record.task_id)
        try:
            for number in sorted(record.pieces):
                try:
                    self.verify_piece(fd, record, number)
                except PieceCorrupt:
                    bad.append(number)
        finally:
            os.close(fd)
        return bad

    def forget_pieces(self, record: TaskRecord, numbers: list[int]) -> None:
        """Pieces to fetch again: no longer recorded as stored."""
        for number in numbers:
            self._db.execute(
                "DELETE FROM pieces WHERE task_id = ? AND number = ?", (record.task_id, number)
            )
            del record.pieces[number]

    def set_size(self, task_id: str, size: int) -> None:
        """For bodies of unknown length: the size, learnt at the end."""
        self._db.execute("UPDATE tasks SET size = ? WHERE task_id = ?", (size, task_id))
        os.truncate(self.data_path(task_id), size)

    def mark_complete(self, task_id: str) -> None:
        self._db.execute(
            "UPDATE tasks SET complete = 1, accessed = ? WHERE task_id = ?", (time.time(), task_id)
        )

    def touch(self, task_id: str) -> None:
        self._db.execute("UPDATE tasks SET accessed = ? WHERE task_id = ?", (time.time(), task_id))

    def delete(self, task_id: str, created: float | None = None) -> None:
        """Forget a task and its data; with ``created``, only that generation of it.

        A reader of an older generation that finds it corrupt must not delete
        the download that has meanwhile replaced it.
        """
        if created is None:
            cursor = self._db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
        else:
            cursor = self._db.execute(
                "DELETE FROM tasks WHERE task_id = ? AND created = ?", (task_id, created)
            )
        if created is not None and not cursor.rowcount:
            return
        self.data_path(task_id).unlink(missing_ok=True)
        self._forget_verified(task_id)

    def _forget_verified(self, task_id: str) -> None:
        self._verified = {key for key in self._verified if key[0] != task_id}

    def tasks(self) -> list[tuple[str, bool, float, int]]:
        """(task_id, complete, accessed, stored bytes) for every task, oldest access first."""
        rows = self._db.execute(
            "SELECT t.task_id, t.complete, t.accessed, COALESCE(SUM(p.length), 0)"
            " FROM tasks t LEFT JOIN pieces p ON p.task_id = t.task_id"
            " GROUP BY t.task_id ORDER BY t.accessed"
        ).fetchall()
        return [(row[0], bool(row[1]), row[2], int(row[3])) for row in rows]

    def task_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes of pieces this store holds: its own usage, not the filesystem's."""
        row = self._db.execute("SELECT COALESCE(SUM(length), 0) FROM pieces").fetchone()
        return int(row[0])

    # --- piece data (blocking: call from a thread) --------------------------
    def write_at(self, fd: int, offset: int, chunks: list[bytes | memoryview]) -> None:
        """Write ``chunks`` back to back at ``offset`` (one pwritev, no joining copy)."""
        views = [memoryview(chunk) for chunk in chunks]
        first = 0
        while first < len(views):
            written = os.pwritev(fd, views[first : first + IOV_BATCH], offset)
            offset += written
            while first < len(views) and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]

    def piece_writer(
        self, fd: int, piece: Piece, expected: str | None, short_ok: bool = False
    ) -> PieceWriter:
        """Write one piece through ``fd`` (from ``open_for_write``), checked against
        ``expected``: the only way piece bytes enter the store."""
        return PieceWriter(self, fd, piece, expected, short_ok)

    def open_for_write(self, task_id: str) -> int:
        return os.open(self.data_path(task_id), os.O_WRONLY)

    def open_for_read(self, task_id: str) -> int:
        return os.open(self.data_path(task_id), os.O_RDONLY)

    def open_file(self, task_id: str) -> BinaryIO:
        """The data file as an unbuffered file object (for sendfile)."""
        return self.data_path(task_id).open("rb", buffering=0)

    def is_verified(self, record: TaskRecord, number: int) -> bool:
        return (record.task_id, record.created, number) in self._verified

    def verify_piece(self, fd: int, record: TaskRecord, number: int) -> None:
        """Check a piece read back from disk against its digest, once per process run
        and generation of the task (a re-download's pieces say nothing of the old file)."""
        if self.is_verified(record, number):
            return
        piece = record.piece(number)
        expected = record.pieces.get(number)
        digest = PieceHasher(expected)
        for chunk in read_chunks(fd, piece.offset, piece.length):
            digest.update(chunk)
        if digest.digest() != expected:
            raise PieceCorrupt(f"task {record.task_id} piece {number} does not match its digest")
        self._verified.add((record.task_id, record.created, number))


def read_chunks(fd: int, offset: int, length: int, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """Bytes [offset, offset+length) of a file, in chunks; a short file is an error."""
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(chunk, end - offset), offset)
        if not data:
            raise PieceCorrupt(f"data file ends at {offset}, expected {end} bytes")
        offset += len(data)
        yield data


def _connect(path: Path) -> sqlite3.Connection:
    """Open, configure and check the database (the module docstring says why WAL and
    synchronous=NORMAL)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3]))
    except BaseException:
        db.close()
        raise
    return db


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """The file's contents are bad (as opposed to the disk, permissions or a lock)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or str(exc).startswith("quick_check:")


def _move_aside(path: Path) -> Path:
    """Rename the database (and its WAL files) to ``store.db.damaged-<time>``: kept to
    look at, out of the way of a new one."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def _unusable(path: Path, exc: sqlite3.Error) -> str:
    return f"{path} (the store's database) cannot be used by the peer ({identity()}): {exc}"
