"""A full disk never breaks a peer for good, and the peer stops growing before it is full.

The store lives on a real 64 MiB tmpfs the test mounts (and unmounts), next to a
"workload" file that fills it — as a node's other pods fill the disk a cache
shares. A real peer and a real origin; the client is curl.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, peer_config, start_peer
from tests.support.ports import free_ports
from tests.support.procs import wait_until

MiB = 1 << 20
DISK = 64 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    files = tmp_path / "www" / "files"
    files.mkdir(parents=True)
    for name, size in (("small.bin", 2 * MiB), ("big.bin", 40 * MiB), ("mid.bin", 30 * MiB)):
        (files / name).write_bytes(os.urandom(size))
    (tmp_path / "www" / "other").mkdir()
    (tmp_path / "www" / "other" / "page.txt").write_bytes(b"not cached\n" * 100)
    return start_origin(processes, tmp_path / "www")


def disk_peer(processes: Any, tmp_path: Path, disk: Path, min_free: int) -> PeerHandle:
    config = peer_config(
        disk / "store",
        *free_ports(3),
        [{"regex": r"/files/"}],
        storage={"quota": "1Gi", "minFree": min_free, "gcInterval": 0.5},
    )
    return start_peer(processes, tmp_path, config=config)


def curl(peer: PeerHandle, url: str) -> tuple[int, bytes, str]:
    """curl's exit code, the body and the X-Damselfly-Cache header."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-D", "-", "-x", peer.proxy_url, url],
        capture_output=True,
        timeout=90,
        check=False,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    state = ""
    for line in head.decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "x-damselfly-cache":
            state = value.strip()
    return result.returncode, body, state


def fill(disk: Path, leave: int) -> Path:
    """A workload's file, taking all but ``leave`` bytes of the disk (or all of it, when
    the peer writes at the same time)."""
    workload = disk / "workload.bin"
    stat = os.statvfs(disk)
    left = stat.f_bavail * stat.f_frsize - leave
    block = b"\0" * MiB
    with workload.open("wb") as handle:
        while left > 0:
            try:
                handle.write(block[: min(left, MiB)])
                handle.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            left -= MiB
    return workload


def readyz(peer: PeerHandle) -> str:
    result = subprocess.run(
        ["curl", "-sS", f"http://127.0.0.1:{peer.metrics_port}/readyz"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout


def test_a_disk_that_fills_mid_download_costs_that_download_only(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    small_disk: Path,
    origin: Origin,
) -> None:
    peer = disk_peer(processes, tmp_path, small_disk, min_free=0)
    small = (origin.directory / "files" / "small.bin").read_bytes()
    big = (origin.directory / "files" / "big.bin").read_bytes()
    assert curl(peer, origin.url("files/small.bin"))[:2] == (0, small)

    # The download starts with room to spare; a workload fills the disk meanwhile.
    url = origin.url("files/big.bin", rate=2 * MiB)  # each 4 MiB piece takes two seconds
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = pool.submit(curl, peer, url)
        wait_until(lambda: peer.status()["store"]["activeDownloads"] == 1, 10, "downloading")
        workload = fill(small_disk, leave=2 * MiB)
        code, body, _ = client.result()
    assert code in (18, 56), "the client is cut, not handed a short body as whole"
    assert len(body) < len(big)
    assert big.startswith(body)
    status = peer.status()["store"]
    assert status["trouble"] is not None
    assert "disk full" in status["trouble"]
    assert status["tasks"] == 1, "the partial download is gone, the old object stays"
    assert "store degraded: disk full" in readyz(peer)
    assert peer.metric("damselfly_peer_store_errors_total", kind="disk_full") >= 1

    # Meanwhile: hits are served, other URLs forwarded.
    assert curl(peer, origin.url("files/small.bin")) == (0, small, "hit")
    assert curl(peer, origin.url("other/page.txt"))[:2] == (0, b"not cached\n" * 100)

    # The workload goes: the peer recovers by itself.
    workload.unlink()
    wait_until(lambda: peer.status()["store"]["trouble"] is None, 10, "trouble cleared")
    assert curl(peer, url)[:2] == (0, big)
    assert curl(peer, url) == (0, big, "hit")


def test_the_peer_stops_growing_before_the_disk_is_full(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    small_disk: Path,
    origin: Origin,
) -> None:
    peer = disk_peer(processes, tmp_path, small_disk, min_free=40 * MiB)
    mid = (origin.directory / "files" / "mid.bin").read_bytes()
    small = (origin.directory / "files" / "small.bin").read_bytes()

    # 30 MiB on a 64 MiB disk would leave less than minFree: forwarded, not stored.
    code, body, state = curl(peer, origin.url("files/mid.bin"))
    assert (code, body) == (0, mid), "the client gets the object all the same"
    assert state != "hit"
    status = peer.status()["store"]
    assert status["tasks"] == 0
    assert "storage.minFree" in status["trouble"]
    assert peer.metric("damselfly_peer_store_errors_total", kind="no_room") >= 1

    # A small one fits within the headroom: stored, and the trouble is over.
    assert curl(peer, origin.url("files/small.bin"))[:2] == (0, small)
    assert curl(peer, origin.url("files/small.bin")) == (0, small, "hit")
    assert peer.status()["store"]["trouble"] is None


def test_a_peer_starts_on_a_full_disk_and_serves_what_it_holds(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    small_disk: Path,
    origin: Origin,
) -> None:
    first = disk_peer(processes, tmp_path, small_disk, min_free=0)
    small = (origin.directory / "files" / "small.bin").read_bytes()
    assert curl(first, origin.url("files/small.bin"))[:2] == (0, small)
    first.proc.stop()
    fill(small_disk, leave=0)

    config = yaml.safe_load(first.config_path.read_text())
    again = start_peer(processes, tmp_path, config=config, name="peer-again")  # ready
    assert "store degraded: disk full" in readyz(again)
    assert curl(again, origin.url("files/small.bin")) == (0, small, "hit")
    assert curl(again, origin.url("other/page.txt"))[:2] == (0, b"not cached\n" * 100)
