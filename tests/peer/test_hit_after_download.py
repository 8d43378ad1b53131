"""A download that just finished is a hit for the very next client.

The first client's body ends when the task's last piece becomes servable;
the task must be complete in the store from that moment, so a client asking
right after (on a new connection or the same keep-alive one) is told
``X-Damselfly-Cache: hit`` and the origin is read once per object.
"""

from __future__ import annotations

import hashlib
import http.client
import os
from pathlib import Path

import pytest

from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, start_peer
from tests.support.procs import wait_until
from tests.support.scheduler import SchedulerHandle, start_scheduler

MiB = 1 << 20
ROUNDS = 20
RULES = [{"regex": r"/files/"}]


def get(conn: http.client.HTTPConnection, url: str) -> tuple[int, str, bytes]:
    """GET ``url`` (absolute form, as a proxy client sends it): status, cache header, body."""
    conn.request("GET", url)
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("X-Damselfly-Cache", ""), body


def proxy_conn(peer: PeerHandle) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(peer.host, peer.proxy_port, timeout=60)


def origin_bytes(origin: Origin, path: str) -> int:
    return sum(int(r["bytes_sent"]) for r in origin.requests(path))


def write_objects(root: Path, sizes: list[int]) -> dict[str, bytes]:
    (root / "files").mkdir(parents=True)
    objects = {}
    for number, size in enumerate(sizes):
        name = f"files/obj-{number}.bin"
        data = os.urandom(size)
        (root / name).write_bytes(data)
        objects[name] = data
    return objects


def assert_hit_right_after(
    first: PeerHandle,
    second: PeerHandle,
    origin: Origin,
    objects: dict[str, bytes],
    **flags: str | int,
) -> None:
    """Per object: a complete response through ``first``, then at once one through
    ``second`` (fresh connection) and one more on ``first``'s kept-alive connection."""
    for name, data in objects.items():
        url = origin.url(name, **flags)
        digest = hashlib.sha256(data).hexdigest()
        conn = proxy_conn(first)
        fresh = proxy_conn(second)
        fresh.connect()  # already accepted: the next request goes out the moment we have a body
        try:
            status, state, body = get(conn, url)
            assert (status, state) == (200, "miss"), name
            assert hashlib.sha256(body).hexdigest() == digest, name
            try:
                status, state, body = get(fresh, url)
            finally:
                fresh.close()
            assert (status, state) == (200, "hit"), f"{name}: the next client was told {state!r}"
            assert hashlib.sha256(body).hexdigest() == digest, name
            status, state, body = get(conn, url)
            assert (status, state) == (200, "hit"), f"{name}: keep-alive client was told {state!r}"
            assert hashlib.sha256(body).hexdigest() == digest, name
        finally:
            conn.close()
    for name, data in objects.items():
        sent = origin_bytes(origin, "/" + name)
        assert sent <= len(data) + 1, f"{name}: origin sent {sent} bytes for {len(data)}"


@pytest.mark.parametrize("flag", ["", "norange", "chunked"])
def test_a_finished_download_is_a_hit_for_the_next_client(  # type: ignore[no-untyped-def]
    processes, tmp_path: Path, flag: str
) -> None:
    """From the origin: by ranged pieces, from one body that ignores Range, and from a
    body of unknown length; one, two and three pieces (the last short), and empty."""
    sizes = [0] + [(1 + n % 3) * 4 * MiB - 4096 + n * 777 for n in range(ROUNDS - 1)]
    objects = write_objects(tmp_path / "www", sizes)
    origin = start_origin(processes, tmp_path / "www")
    peer = start_peer(processes, tmp_path, rule_list=RULES)
    assert_hit_right_after(peer, peer, origin, objects, **({flag: 1} if flag else {}))
    assert peer.metric("damselfly_peer_cache_lookups_total", result="miss") == ROUNDS
    assert peer.metric("damselfly_peer_cache_lookups_total", result="hit") == 2 * ROUNDS


def test_a_download_from_a_parent_is_a_hit_for_the_next_client(  # type: ignore[no-untyped-def]
    processes, tmp_path: Path
) -> None:
    """Through the swarm: peer-b takes each object from peer-a, then its next client hits."""
    # five or six pieces: more than one parent serves at once (MAX_REQUESTS_PER_PARENT),
    # so some of the download's workers are waiting for parent news when it ends
    sizes = [(4 + n % 2) * 4 * MiB + 1 + n * 333 for n in range(ROUNDS)]
    objects = write_objects(tmp_path / "www", sizes)
    origin = start_origin(processes, tmp_path / "www")
    scheduler: SchedulerHandle = start_scheduler(
        processes, tmp_path, config={"announceInterval": 0.5}
    )
    settings = {"addresses": [scheduler.address], "announceInterval": 0.5, "stallTimeout": 5}
    peers = [
        start_peer(processes, tmp_path, name=name, rule_list=RULES, hostId=name, scheduler=settings)
        for name in ("peer-a", "peer-b")
    ]
    wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts") >= 2, 20, "two hosts")
    a, b = peers
    for name in objects:
        url = origin.url(name)
        conn = proxy_conn(a)
        try:
            assert get(conn, url)[:2] == (200, "miss")
        finally:
            conn.close()
    assert_hit_right_after(b, b, origin, objects)
    assert b.metric("damselfly_peer_downloaded_bytes_total", source="origin") == 0
