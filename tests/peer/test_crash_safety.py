"""Crash safety (issue #13 §3): a peer killed with SIGKILL mid-download never serves a wrong byte.

What a user would notice: a node that crashes, is OOM-killed or is evicted while
it downloads a model restarts on the same cache directory and carries on. The
next request resumes the half-download (or drops it and starts again), the
client gets exactly the origin's bytes, and no later read of that object or of
any object cached before the crash returns anything else. A kill must never
leave a piece recorded as stored whose bytes are not the object's bytes.

Why the parts are real: the origin is a real HTTP server process, throttled per
request so that pieces are in flight when the kill comes; the peer is the real
``damselfly peer`` process, killed with SIGKILL (no handler, no clean-up, no
flush of anything but what the kernel already holds), and started again on the
same store directory; clients are curl through its proxy port. Between a kill
and the next start the test opens the store on disk with the peer's own
``PieceStore`` and checks every recorded piece against its digest *and* against
the origin's true bytes. A kill -9 is not a power cut: every write the peer
made is in the page cache, so nothing is excused as a lost write — any recorded
piece that fails is a failure. What the killed peer's client received must be a
prefix of the object, and an object a client got whole must still be complete.

The kill point is random (a fixed seed, printed in every failure;
``DAMSELFLY_CRASH_SEED`` picks another): a random time, a random number of bytes
stored, or just after the client got its last byte; some runs kill the resumed
download a second time. Even runs fetch a URL-keyed object, odd runs a
content-addressed one (named by its sha256: the peer verifies the whole object
before its last piece goes out). About 20 s of the ~50 s (idle 2-core machine)
is the throttled origin; the tmp dir holds ~1.3 GB of objects.

The peer's log of each life is ``logs/peer-RR-K.log`` under the test's tmp dir
(run RR, K-th start within it).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import struct
import subprocess
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from damselfly.peer.store.pieces import piece_length
from damselfly.peer.store.piecestore import PieceStore, TaskRecord
from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, peer_config, start_peer
from tests.support.ports import free_ports

MiB = 1 << 20
SIZE = 32 * MiB + 12345  # nine pieces of 4 MiB, the last one short
PIECE = piece_length(SIZE)
PIECES = -(-SIZE // PIECE)
RATE = 10 * MiB  # bytes/s per origin request: a piece takes 0.4 s, the object ~1.2 s
RULES = [{"regex": r"/files/"}]
QUOTA = 2 << 30  # as peer_config sets it
RUNS = 20
LOOP_BUDGET = 240.0  # seconds for all runs; the test fails rather than running on
SEED = int(os.environ.get("DAMSELFLY_CRASH_SEED", "1313"))
KILL_MODES = ("time", "bytes", "done")
CURL = ("curl", "-sS", "--max-time", "60")


@dataclass(frozen=True)
class Obj:
    """One object at the origin; its file there is the truth every read is held to."""

    name: str
    path: Path
    sha256: str
    url: str
    content_addressed: bool

    def truth(self, start: int, length: int) -> bytes:
        with self.path.open("rb") as handle:
            handle.seek(start)
            return handle.read(length)


@dataclass(frozen=True)
class TaskView:
    """What a check saw of one stored task: if it is unchanged, it need not be re-read."""

    complete: bool
    created: float
    pieces: tuple[tuple[int, str], ...]
    file_size: int
    file_mtime_ns: int


@dataclass
class Tally:
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    modes: collections.Counter[str] = field(default_factory=collections.Counter)
    resumed: int = 0  # restarts that fetched fewer bytes than the object from the origin
    ranges: int = 0
    repairs: collections.Counter[str] = field(default_factory=collections.Counter)


def stamped(base: bytes, run: int) -> bytes:
    """``base`` with (run, piece) written at the start of every piece: each object's
    pieces differ from every other object's, so a piece put in the wrong place shows."""
    data = bytearray(base)
    for offset in range(0, len(data), PIECE):
        data[offset : offset + 8] = struct.pack(">II", run, offset // PIECE)
    return bytes(data)


def make_object(origin: Origin, base: bytes, run: int, content_addressed: bool) -> Obj:
    data = stamped(base, run)
    digest = hashlib.sha256(data).hexdigest()
    name = digest if content_addressed else f"object-{run:02d}.bin"
    path = origin.directory / "files" / name
    path.write_bytes(data)
    url = origin.url(f"files/{name}", rate=RATE)  # the same URL, so the same task, every time
    return Obj(name, path, digest, url, content_addressed)


def start_life(processes: Any, tmp_path: Path, store_dir: Path, name: str) -> PeerHandle:
    """A peer on ``store_dir`` (fresh ports: the killed one's may linger)."""
    proxy_port, metrics_port, upload_port = free_ports(3)
    config = peer_config(store_dir, proxy_port, metrics_port, upload_port, RULES)
    return start_peer(processes, tmp_path, config=config, name=name)


def curl(peer: PeerHandle, url: str, out: Path, *extra: str) -> tuple[int, str, str]:
    """curl through the peer: (exit code, last status, stderr)."""
    headers = out.with_suffix(".headers")
    result = subprocess.run(
        [*CURL, "-x", peer.proxy_url, "-D", str(headers), "-o", str(out), *extra, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    status = ""
    if headers.exists():
        for line in headers.read_text(errors="replace").splitlines():
            if line.startswith("HTTP/"):
                status = line.split()[1]
        headers.unlink()
    return result.returncode, status, result.stderr.strip()


def spawn_client(peer: PeerHandle, url: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CURL, "-x", peer.proxy_url, "-o", str(out), url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def counter_total(peer: PeerHandle, name: str, **labels: str) -> float:
    """Sum of a counter's samples matching ``labels``; 0.0 if the peer does not answer."""
    try:
        text = peer.metrics_text()
    except (urllib.error.URLError, OSError):
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def wait_for_kill_point(
    mode: str, peer: PeerHandle, client: subprocess.Popen[bytes], rng: random.Random
) -> None:
    """Return at the moment to kill: a random time, a random number of bytes stored, or
    just after the client finished. Never waits longer than 30 s."""
    deadline = time.monotonic() + 30
    if mode == "time":
        deadline = time.monotonic() + rng.uniform(0.02, 1.0)
    target = rng.randint(1, SIZE)
    baseline = counter_total(peer, "damselfly_peer_downloaded_bytes_total")
    while time.monotonic() < deadline and client.poll() is None:
        if mode == "bytes":
            if counter_total(peer, "damselfly_peer_downloaded_bytes_total") - baseline >= target:
                return
            time.sleep(0.005)
        else:
            time.sleep(0.01)
    if mode == "done" and client.poll() is not None:
        time.sleep(rng.uniform(0.0, 0.05))  # the moments just after the last byte


def view_of(store: PieceStore, record: TaskRecord) -> TaskView:
    try:
        stat = store.data_path(record.task_id).stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except FileNotFoundError:
        size, mtime = -1, -1
    return TaskView(
        record.complete, record.created, tuple(sorted(record.pieces.items())), size, mtime
    )


def check_task(store: PieceStore, record: TaskRecord, obj: Obj, where: str) -> None:
    """Every recorded piece matches its digest and the origin's bytes; complete is whole."""
    assert record.size == SIZE, f"{where}: task {obj.name} recorded with size {record.size}"
    if obj.content_addressed:
        assert record.task_id == obj.sha256, f"{where}: content-addressed task id"
    path = store.data_path(record.task_id)
    if not record.pieces and not path.exists():
        return  # nothing recorded, nothing to serve
    assert path.exists(), f"{where}: {obj.name} records pieces {sorted(record.pieces)}, no file"
    bad = store.failing_pieces(record)
    assert bad == [], f"{where}: {obj.name}: pieces {bad} recorded but fail their digest"
    with path.open("rb") as data, obj.path.open("rb") as truth:
        for number in sorted(record.pieces):
            piece = record.piece(number)
            data.seek(piece.offset)
            truth.seek(piece.offset)
            assert data.read(piece.length) == truth.read(piece.length), (
                f"{where}: {obj.name} piece {number} matches its digest, not the origin's bytes"
            )
    if record.complete:
        assert sorted(record.pieces) == list(range(record.total_pieces or 0)), (
            f"{where}: {obj.name} complete with pieces {sorted(record.pieces)}"
        )
        digest = hashlib.sha256(path.read_bytes()[:SIZE]).hexdigest()
        assert digest == obj.sha256, f"{where}: {obj.name} complete, its file has the wrong sha256"


class Collect(logging.Handler):
    """The messages the store logs while it is opened: what it repaired at start-up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def open_store(store_dir: Path, where: str) -> tuple[PieceStore, list[str]]:
    """The store as the next peer start opens it (orphan files and short files go),
    and what that opening repaired. A kill -9 must never damage the database."""
    logger = logging.getLogger("damselfly.peer.store")
    collect, level = Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        store = PieceStore(store_dir, QUOTA)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    damaged = [m for m in collect.messages if "damaged" in m]
    assert not damaged, f"{where}: the store's database was damaged by a kill: {damaged}"
    return store, collect.messages


def check_store(
    store_dir: Path,
    objects: dict[str, Obj],
    seen: dict[str, TaskView],
    where: str,
    everything: bool = False,
) -> tuple[dict[str, TaskRecord], list[str]]:
    """Open the dead peer's store and check each task that changed since the last check
    (all of them with ``everything``); the records by object name, and the repairs."""
    store, repairs = open_store(store_dir, where)
    try:
        records: dict[str, TaskRecord] = {}
        for task_id, _complete, _accessed, _bytes in store.tasks():
            record = store.get(task_id)
            assert record is not None
            name = urlsplit(record.url).path.rsplit("/", 1)[-1]
            assert name in objects, f"{where}: a task for an unknown URL {record.url}"
            assert name not in records, f"{where}: two tasks for {name}"
            records[name] = record
            view = view_of(store, record)
            if everything or seen.get(name) != view:
                check_task(store, record, objects[name], where)
            seen[name] = view
        return records, repairs
    finally:
        store.close()


def check_range(peer: PeerHandle, obj: Obj, rng: random.Random, out: Path, where: str) -> None:
    """A random Range (often across a piece boundary) is answered with the origin's bytes."""
    start = rng.randrange(SIZE)
    end = min(SIZE - 1, start + rng.randint(0, 6 * MiB))
    code, status, err = curl(peer, obj.url, out, "-r", f"{start}-{end}")
    assert (code, status) == (0, "206"), f"{where}: Range {start}-{end} of {obj.name}: {err}"
    assert out.read_bytes() == obj.truth(start, end - start + 1), (
        f"{where}: Range {start}-{end} of {obj.name} served wrong bytes"
    )
    out.unlink()


def check_client_bytes(obj: Obj, out: Path, code: int | None, where: str) -> None:
    """What the killed peer's client received is a prefix of the object (all of it if
    curl succeeded): no byte it was sent before the crash was wrong."""
    received = out.read_bytes() if out.exists() else b""
    assert received == obj.truth(0, len(received)), (
        f"{where}: the client of the killed peer got {len(received)} bytes, not a prefix of "
        f"{obj.name}"
    )
    if code == 0:
        assert len(received) == SIZE, f"{where}: curl succeeded with {len(received)} bytes"
    out.unlink(missing_ok=True)


@dataclass
class Rig:
    """The origin, the store directory, the peer's current life, and what is known so far."""

    processes: Any
    tmp_path: Path
    origin: Origin
    rng: random.Random
    store_dir: Path
    peer: PeerHandle
    objects: dict[str, Obj] = field(default_factory=dict)
    seen: dict[str, TaskView] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)  # got whole by a client: stays complete
    tally: Tally = field(default_factory=Tally)

    def kill_during_download(self, obj: Obj, run: int, life: int) -> int:
        """Fetch ``obj`` and SIGKILL the peer at a random point; check what the client
        got and the store; start the next life. Returns the pieces of ``obj`` stored."""
        where = f"seed {SEED} run {run} kill {life} (peer log {self.peer.proc.log_path})"
        mode = self.rng.choice(KILL_MODES)
        self.tally.modes[mode] += 1
        out = self.tmp_path / f"client-{run}-{life}.bin"
        client = spawn_client(self.peer, obj.url, out)
        try:
            wait_for_kill_point(mode, self.peer, client, self.rng)
            self.peer.proc.kill()  # SIGKILL, by the peer's pid (its process group)
            code = client.wait(timeout=15)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert self.peer.proc.proc.returncode == -9, f"{where}: the peer exited before the kill"
        check_client_bytes(obj, out, code, where)
        if code == 0:
            self.finished.add(obj.name)
        records, repairs = check_store(self.store_dir, self.objects, self.seen, where)
        self.tally.repairs.update(repairs)
        for name in sorted(self.finished):
            assert name in records, f"{where}: {name} was served whole, then lost"
            assert records[name].complete, f"{where}: {name} was served whole, is not complete"
        record = records.get(obj.name)
        stored = len(record.pieces) if record is not None else 0
        if code == 0:
            self.tally.kills["after the client got the whole object"] += 1
        elif stored:
            self.tally.kills["mid-download, pieces stored"] += 1
        else:
            self.tally.kills["mid-download, no piece stored yet"] += 1
        self.peer = start_life(
            self.processes, self.tmp_path, self.store_dir, f"peer-{run:02d}-{life + 1}"
        )
        return stored

    def read_back(self, obj: Obj, run: int, stored_at_kill: int) -> None:
        """The restarted peer serves ``obj`` whole, and Ranges, with the origin's bytes."""
        where = f"seed {SEED} run {run} after restart (peer log {self.peer.proc.log_path})"
        self.origin.reset()
        if run % 3 == 0:  # the first request after the restart is a Range
            self.check_range(obj, where)
        whole = self.tmp_path / f"whole-{run}.bin"
        code, status, err = curl(self.peer, obj.url, whole)
        assert (code, status) == (0, "200"), f"{where}: whole fetch of {obj.name}: {err}"
        digest = hashlib.sha256(whole.read_bytes()).hexdigest()
        assert digest == obj.sha256, f"{where}: {obj.name} served with the wrong sha256"
        whole.unlink()
        self.finished.add(obj.name)
        from_origin = sum(r["bytes_sent"] for r in self.origin.requests(f"files/{obj.name}"))
        if 0 < stored_at_kill < PIECES and from_origin < SIZE:
            self.tally.resumed += 1
        if run % 3 == 1:  # a read of an object cached before earlier kills
            self.check_range(self.objects[self.rng.choice(sorted(self.objects))], where)
        failures = counter_total(self.peer, "damselfly_peer_integrity_failures_total")
        assert failures == 0, f"{where}: the restarted peer found {failures} corrupt pieces"

    def check_range(self, obj: Obj, where: str) -> None:
        check_range(self.peer, obj, self.rng, self.tmp_path / "range.bin", where)
        self.tally.ranges += 1


def test_sigkill_at_random_points_never_leaves_a_wrong_piece_behind(
    processes: Any, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    origin = start_origin(processes, root)
    base = random.Random(SEED).randbytes(SIZE)
    store_dir = tmp_path / "store"
    began = time.monotonic()
    first = start_life(processes, tmp_path, store_dir, "peer-00-0")
    rig = Rig(processes, tmp_path, origin, random.Random(SEED), store_dir, first)

    for run in range(RUNS):
        elapsed = time.monotonic() - began
        assert elapsed < LOOP_BUDGET, f"seed {SEED}: {run} runs took {elapsed:.0f} s"
        obj = make_object(origin, base, run, content_addressed=run % 2 == 1)
        rig.objects[obj.name] = obj
        lives = 2 if rig.rng.random() < 0.3 else 1  # sometimes kill the resumed download too
        stored = 0
        for life in range(lives):
            stored = rig.kill_during_download(obj, run, life)
        rig.read_back(obj, run, stored)

    rig.peer.proc.kill()
    end = f"seed {SEED} at the end"
    records, _ = check_store(store_dir, rig.objects, rig.seen, end, everything=True)
    assert sorted(records) == sorted(rig.objects), f"{end}: objects lost from the store"
    assert all(record.complete for record in records.values()), f"{end}: not all complete"
    took = time.monotonic() - began
    tally = rig.tally
    kills = sum(tally.kills.values())
    summary = (
        f"seed {SEED}: {RUNS} runs, {kills} kills in {took:.0f} s; kill points "
        f"{dict(tally.modes)}; outcomes {dict(tally.kills)}; {tally.resumed} restarts "
        f"resumed a partial download; {tally.ranges} Range reads checked; repairs at "
        f"start-up {dict(tally.repairs)}"
    )
    print(summary)
    assert tally.kills["after the client got the whole object"] >= 1, summary
    assert tally.kills["mid-download, pieces stored"] >= 1, summary
    assert took < LOOP_BUDGET, summary
