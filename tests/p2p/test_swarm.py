"""A real swarm on loopback: scheduler, seed peer and peers as processes, a real origin.

What a user notices: the origin sends each object about once however many
nodes ask, and nothing that goes wrong in the P2P layer (a parent dying, a
parent serving bad bytes, the scheduler down or restarting) fails a download
or hands a client a wrong byte.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from damselfly.peer.rules.taskid import task_key
from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, start_peer
from tests.support.ports import free_port
from tests.support.procs import wait_until
from tests.support.scheduler import SchedulerHandle, start_scheduler

MiB = 1 << 20
SIZE = 24 * MiB + 777  # seven pieces of 4 MiB
RULES = [{"regex": r"/files/"}]
ANNOUNCE = 0.5


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / "files" / "model.bin").write_bytes(os.urandom(SIZE))
    return start_origin(processes, root)


@pytest.fixture
def scheduler(processes, tmp_path: Path) -> SchedulerHandle:  # type: ignore[no-untyped-def]
    return start_scheduler(processes, tmp_path, config={"announceInterval": ANNOUNCE})


def swarm_peer(
    processes: Any,
    tmp_path: Path,
    name: str,
    schedulers: list[str],
    seed: bool = False,
    upload: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **scheduler_settings: Any,
) -> PeerHandle:
    return start_peer(
        processes,
        tmp_path,
        name=name,
        rule_list=RULES,
        hostId=name,
        seed=seed,
        env=env,
        upload=upload or {},
        scheduler={
            "addresses": schedulers,
            "announceInterval": ANNOUNCE,
            "stallTimeout": 3,
            "pieceTimeout": 5,
            **scheduler_settings,
        },
    )


def wait_for_hosts(scheduler: SchedulerHandle, count: int) -> None:
    wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts") >= count, 20, f"{count} hosts")


def fetch(peer: PeerHandle, url: str, out: Path) -> int:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "90", "-x", peer.proxy_url, "-o", str(out), url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def origin_bytes(origin: Origin, path: str) -> int:
    return sum(int(r["bytes_sent"]) for r in origin.requests(path))


def test_three_peers_and_a_seed_take_one_copy_from_the_origin(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
) -> None:
    swarm_peer(processes, tmp_path, "seed-0", [scheduler.address], seed=True)
    peers = [swarm_peer(processes, tmp_path, f"peer-{i}", [scheduler.address]) for i in range(3)]
    wait_for_hosts(scheduler, 4)
    url = origin.url("files/model.bin", rate=16 * MiB)  # slow enough that all overlap
    expected = sha256(origin.directory / "files" / "model.bin")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda p: fetch(p, url, tmp_path / f"{p.proc.name}.bin"), peers))
    assert codes == [0, 0, 0]
    for peer in peers:
        assert sha256(tmp_path / f"{peer.proc.name}.bin") == expected
    sent = origin_bytes(origin, "files/model.bin")
    assert sent <= 1.05 * SIZE + 16, f"origin sent {sent / SIZE:.2f} copies"
    from_parents = sum(
        p.metric("damselfly_peer_downloaded_bytes_total", source="parent") for p in peers
    )
    assert from_parents >= 2 * SIZE  # at most one peer's worth came from the origin
    assert scheduler.metric("damselfly_scheduler_seed_triggers_total", result="accepted") == 1


def test_a_seed_serving_one_child_at_a_time_feeds_the_swarm_through_that_child(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
) -> None:
    seed = swarm_peer(
        processes, tmp_path, "seed-0", [scheduler.address], seed=True, upload={"slotsPerTask": 1}
    )
    peers = [swarm_peer(processes, tmp_path, f"peer-{i}", [scheduler.address]) for i in range(3)]
    wait_for_hosts(scheduler, 4)
    url = origin.url("files/model.bin", rate=16 * MiB)
    task_url = f"http://{scheduler.address}/v1/tasks/{task_key(url, ()).task_id}"
    children_seen: list[int] = []  # the seed's children in the scheduler's graph, over time

    def watch_the_seeds_children(stop: threading.Event) -> None:
        while not stop.wait(0.05):
            try:
                with urllib.request.urlopen(task_url, timeout=5) as answer:
                    task = json.load(answer)
            except urllib.error.HTTPError:
                continue  # not registered yet
            children_seen.append(
                sum("seed-0" in peer["parents"] for peer in task["peers"].values())
            )

    stop = threading.Event()
    watcher = threading.Thread(target=watch_the_seeds_children, args=(stop,))
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda p: fetch(p, url, tmp_path / f"{p.proc.name}.bin"), peers))
    finally:
        stop.set()
        watcher.join()
    assert codes == [0, 0, 0]
    expected = sha256(origin.directory / "files" / "model.bin")
    for peer in peers:
        assert sha256(tmp_path / f"{peer.proc.name}.bin") == expected
    assert origin_bytes(origin, "files/model.bin") <= 1.05 * SIZE + 16
    # The scheduler never gave the seed a second child: the other two peers were
    # fed by its child and by each other, and the seed sent about one copy.
    assert children_seen, "the scheduler never showed the task"
    assert max(children_seen) == 1, children_seen
    seed_sent = seed.metric("damselfly_peer_uploaded_bytes_total")
    assert seed_sent <= SIZE + 4 * MiB, f"the seed uploaded {seed_sent / SIZE:.2f} copies"


def test_two_peers_without_a_seed_share_one_origin_download(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
) -> None:
    first = swarm_peer(processes, tmp_path, "peer-a", [scheduler.address])
    second = swarm_peer(processes, tmp_path, "peer-b", [scheduler.address])
    wait_for_hosts(scheduler, 2)
    url = origin.url("files/model.bin")
    assert fetch(first, url, tmp_path / "a.bin") == 0
    assert fetch(second, url, tmp_path / "b.bin") == 0
    assert sha256(tmp_path / "b.bin") == sha256(origin.directory / "files" / "model.bin")
    assert origin_bytes(origin, "files/model.bin") <= SIZE + 16
    assert second.metric("damselfly_peer_downloaded_bytes_total", source="parent") == SIZE
    assert first.metric("damselfly_peer_uploaded_bytes_total") == SIZE


# An origin that ignores Range sends the parent its whole body; when the parent
# dies, the child cannot take single pieces from it and must read it whole.
@pytest.mark.parametrize("origin_flags", [{}, {"norange": 1}], ids=["ranges", "no-ranges"])
def test_a_parent_killed_mid_transfer_costs_a_retry_not_the_download(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
    origin_flags: dict[str, int],
) -> None:
    parent = swarm_peer(processes, tmp_path, "parent", [scheduler.address])
    child = swarm_peer(processes, tmp_path, "child", [scheduler.address])
    wait_for_hosts(scheduler, 2)
    # the parent needs about 4 s
    slow = origin.url("files/model.bin", rate=6 * MiB, **origin_flags)
    parent_client = subprocess.Popen(
        ["curl", "-sS", "-x", parent.proxy_url, "-o", "/dev/null", slow],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: parent.metric("damselfly_peer_downloaded_bytes_total", source="origin") > 0,
            30,
            "the parent to hold a piece",
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            result = pool.submit(fetch, child, slow, tmp_path / "child.bin")
            wait_until(
                lambda: child.metric("damselfly_peer_downloaded_bytes_total", source="parent") > 0,
                30,
                "the child to take a piece from the parent",
            )
            parent.proc.kill()
            assert result.result(timeout=120) == 0
    finally:
        parent_client.kill()
        parent_client.wait()
    assert sha256(tmp_path / "child.bin") == sha256(origin.directory / "files" / "model.bin")
    assert child.metric("damselfly_peer_downloaded_bytes_total", source="origin") > 0


def test_a_parent_serving_corrupt_bytes_is_blocked_and_the_piece_fetched_elsewhere(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
) -> None:
    parent = swarm_peer(processes, tmp_path, "parent", [scheduler.address])
    child = swarm_peer(processes, tmp_path, "child", [scheduler.address])
    wait_for_hosts(scheduler, 2)
    url = origin.url("files/model.bin")
    assert fetch(parent, url, tmp_path / "p.bin") == 0
    # Rot one piece on the parent's disk after it has verified it: it will serve
    # the bad bytes with a good conscience (it checks each piece once per run).
    task_dir = parent.store_dir / "data"
    [data_file] = [p for p in task_dir.glob("*/*")]
    with data_file.open("r+b") as handle:
        handle.seek(9 * MiB)
        handle.write(b"\x00" * 4096)
    assert fetch(child, url, tmp_path / "c.bin") == 0
    assert sha256(tmp_path / "c.bin") == sha256(origin.directory / "files" / "model.bin")
    assert child.metric("damselfly_peer_integrity_failures_total", kind="parent") >= 1
    assert child.metric("damselfly_peer_downloaded_bytes_total", source="origin") > 0


def test_scheduler_down_means_the_origin(
    processes,
    tmp_path: Path,
    origin: Origin,  # type: ignore[no-untyped-def]
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    peer = swarm_peer(processes, tmp_path, "lonely", [dead])
    url = origin.url("files/model.bin")
    assert fetch(peer, url, tmp_path / "x.bin") == 0
    assert sha256(tmp_path / "x.bin") == sha256(origin.directory / "files" / "model.bin")
    assert "scheduler unavailable" in peer.proc.log_tail(200)


def test_a_scheduler_restart_mid_download_loses_nothing(
    processes,
    tmp_path: Path,
    origin: Origin,  # type: ignore[no-untyped-def]
) -> None:
    ports = (free_port(), free_port())
    scheduler = start_scheduler(
        processes, tmp_path, config={"announceInterval": ANNOUNCE}, ports=ports
    )
    seed = swarm_peer(processes, tmp_path, "seed-0", [scheduler.address], seed=True)
    first = swarm_peer(processes, tmp_path, "peer-1", [scheduler.address])
    wait_for_hosts(scheduler, 2)
    slow = origin.url("files/model.bin", rate=8 * MiB)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(fetch, first, slow, tmp_path / "1.bin")
        wait_until(
            lambda: first.metric("damselfly_peer_downloaded_bytes_total", source="parent") > 0,
            30,
            "peer-1 taking pieces from the seed",
        )
        scheduler.proc.stop()
        scheduler = start_scheduler(
            processes,
            tmp_path,
            name="scheduler-restarted",
            config={"announceInterval": ANNOUNCE},
            ports=ports,
        )
        assert result.result(timeout=120) == 0
    expected = sha256(origin.directory / "files" / "model.bin")
    assert sha256(tmp_path / "1.bin") == expected
    # The restarted scheduler relearns the holders from their announces: a new
    # peer is sent to them, and the origin still sent about one copy.
    wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts") >= 2, 20, "re-announces")
    late = swarm_peer(processes, tmp_path, "peer-late", [scheduler.address])
    wait_for_hosts(scheduler, 3)
    assert fetch(late, slow, tmp_path / "late.bin") == 0
    assert sha256(tmp_path / "late.bin") == expected
    assert late.metric("damselfly_peer_downloaded_bytes_total", source="parent") == SIZE
    assert origin_bytes(origin, "files/model.bin") <= 1.05 * SIZE + 16
    assert seed.proc.alive()


def test_two_scheduler_replicas_with_one_down_lose_nothing(
    processes,
    tmp_path: Path,
    origin: Origin,  # type: ignore[no-untyped-def]
) -> None:
    """Peers pick a scheduler per task by consistent hashing and fail over to the next."""
    alive = start_scheduler(
        processes, tmp_path, name="sched-a", config={"announceInterval": ANNOUNCE}
    )
    dead = f"127.0.0.1:{free_port()}"
    addresses = [alive.address, dead]
    seed = swarm_peer(processes, tmp_path, "seed-0", addresses, seed=True)
    peers = [swarm_peer(processes, tmp_path, f"peer-{i}", addresses) for i in range(2)]
    wait_for_hosts(alive, 3)
    expected = sha256(origin.directory / "files" / "model.bin")
    for index in range(4):  # several tasks: some owned by the dead replica
        url = origin.url("files/model.bin", v=index)
        for peer in peers:
            assert fetch(peer, url, tmp_path / f"{index}-{peer.proc.name}.bin") == 0
            assert sha256(tmp_path / f"{index}-{peer.proc.name}.bin") == expected
    assert origin_bytes(origin, "files/model.bin") <= 4 * (SIZE + 16)
    assert alive.metric("damselfly_scheduler_registrations_total") == 8
    assert seed.metric("damselfly_peer_uploaded_bytes_total") > 0


def test_a_slow_but_alive_seed_is_waited_for_not_bypassed(
    processes,
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,  # type: ignore[no-untyped-def]
) -> None:
    """Each piece takes the seed longer than the child's stall timeout (3 s) to fetch.

    The seed's heartbeats say it is still at work, so the child waits for it
    instead of going to the origin too: the origin still sends one copy.
    """
    (origin.directory / "files" / "slow.bin").write_bytes(os.urandom(8 * MiB))
    swarm_peer(processes, tmp_path, "seed-0", [scheduler.address], seed=True)
    child = swarm_peer(processes, tmp_path, "child", [scheduler.address])
    wait_for_hosts(scheduler, 2)
    url = origin.url("files/slow.bin", rate=int(0.8 * MiB))  # about 5 s per piece
    assert fetch(child, url, tmp_path / "slow.bin") == 0
    assert sha256(tmp_path / "slow.bin") == sha256(origin.directory / "files" / "slow.bin")
    assert child.metric("damselfly_peer_downloaded_bytes_total", source="origin") == 0
    assert origin_bytes(origin, "files/slow.bin") <= 8 * MiB + 16


def test_an_object_changed_mid_download_is_never_served_mixed(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    origin: Origin,
    scheduler: SchedulerHandle,
) -> None:
    """The origin's object is replaced while a seed and three peers download it. Each
    client gets one version whole, or a download cut short of its length (never
    passed off as complete), and a prefix of the old bytes only; the next round
    has no download failing on the old version's leftovers."""
    swarm_peer(processes, tmp_path, "seed-0", [scheduler.address], seed=True)
    peers = [swarm_peer(processes, tmp_path, f"peer-{i}", [scheduler.address]) for i in range(3)]
    wait_for_hosts(scheduler, 4)
    size = 64 * MiB  # sixteen pieces: the seed's ranged GETs go out in four rounds
    path = origin.directory / "files" / "changing.bin"
    old, new = os.urandom(size), os.urandom(size)
    path.write_bytes(old)
    url = origin.url("files/changing.bin", rate=4 * MiB)  # a round every second
    outs = [tmp_path / f"{p.proc.name}.bin" for p in peers]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(fetch, p, url, out) for p, out in zip(peers, outs, strict=True)]
        wait_until(  # the stat and the first ranged GETs are out: most are still to come
            lambda: len(origin.requests("files/changing.bin")) >= 3,
            30,
            "the download under way",
        )
        replacement = path.with_name("changing.bin.new")
        replacement.write_bytes(new)
        os.replace(replacement, path)  # a new file: new mtime, new ETag
        codes = [future.result() for future in running]
    for code, out in zip(codes, outs, strict=True):
        got = out.read_bytes() if out.exists() else b""
        if code == 0:
            assert got in (old, new), "a download said complete holds one version whole"
        else:
            # 18: closed short of its length; 56: reset. Either way curl says it failed.
            assert code in (18, 56), f"curl {code}: a cut download must show as failed"
            assert old.startswith(got) or new.startswith(got), "a cut one: a prefix of one"
    assert any(code != 0 for code in codes), "the change was meant to land mid-download"

    # The next round: nobody is left failing on the old version's leftovers. A peer
    # that failed fetches the new version whole; one that completed the old serves
    # its copy (freshness is another matter: HTTP caching, #14).
    again = [tmp_path / f"{p.proc.name}-again.bin" for p in peers]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        codes_again = list(pool.map(fetch, peers, [url] * 3, again))
    assert codes_again == [0, 0, 0]
    for code, out, out_again in zip(codes, outs, again, strict=True):
        assert out_again.read_bytes() == (out.read_bytes() if code == 0 else new)
