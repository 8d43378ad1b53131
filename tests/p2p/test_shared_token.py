"""The shared token on real processes: a scheduler, a seed and peers on loopback.

What a user notices: a swarm whose members share the token works as before; a
client without it (any pod that reaches the ports) cannot read a cached object
from the upload port, ask a seed to fetch, read the scheduler's tasks or
register as a parent; a peer with another token still gets its object, from
the origin; the token never reaches an origin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.peer.rules.taskid import task_key
from damselfly.sharedtoken import ENV_VAR
from tests.p2p.test_swarm import fetch, origin_bytes, sha256, swarm_peer
from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle
from tests.support.procs import wait_until
from tests.support.scheduler import SchedulerHandle, start_scheduler

MiB = 1 << 20
SIZE = 9 * MiB + 5  # three pieces
RULES = [{"regex": r"/files/"}]
ANNOUNCE = 0.5
TOKEN = "first-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdef"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def token_file(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    path = tmp_path / name
    path.write_text(text)
    return {ENV_VAR: str(path)}


def member(
    processes: Any, tmp_path: Path, name: str, scheduler: SchedulerHandle, env: dict[str, str]
) -> PeerHandle:
    """A swarm peer (a seed when its name says so) with ``env``'s token file."""
    seed = name.startswith("seed")
    return swarm_peer(processes, tmp_path, name, [scheduler.address], seed=seed, env=env)


def upload_port(peer: PeerHandle) -> int:
    return int(yaml.safe_load(peer.config_path.read_text())["upload"]["port"])


def status_of(url: str, token: str | None = None, body: bytes | None = None) -> int:
    """The HTTP status a request gets, with ``token`` as its bearer token."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with DIRECT.open(request, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        challenge = exc.headers["WWW-Authenticate"]
        code = exc.code
    assert code != 401 or challenge == 'Bearer realm="damselfly"'
    return code


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / "files" / "model.bin").write_bytes(os.urandom(SIZE))
    return start_origin(processes, root)


def test_only_holders_of_the_token_use_the_swarm(
    processes,
    tmp_path: Path,
    origin: Origin,  # type: ignore[no-untyped-def]
) -> None:
    # Rotation mid-way, as the docs describe it: the servers' file lists a second token.
    env = token_file(tmp_path, "token", f"{TOKEN}\n{OTHER}\n")
    scheduler = start_scheduler(processes, tmp_path, config={"announceInterval": ANNOUNCE}, env=env)
    seed = member(processes, tmp_path, "seed-0", scheduler, env)
    first = member(processes, tmp_path, "peer-a", scheduler, env)
    second = member(processes, tmp_path, "peer-b", scheduler, env)
    wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts") >= 3, 20, "3 hosts")
    url = origin.url("files/model.bin")
    expected = sha256(origin.directory / "files" / "model.bin")
    assert fetch(first, url, tmp_path / "a.bin") == 0
    assert fetch(second, url, tmp_path / "b.bin") == 0
    assert sha256(tmp_path / "a.bin") == sha256(tmp_path / "b.bin") == expected
    # The swarm works with the token: one copy from the origin, the rest from parents.
    assert origin_bytes(origin, "files/model.bin") <= SIZE + 16
    assert second.metric("damselfly_peer_downloaded_bytes_total", source="parent") == SIZE
    assert all(r["authorization"] is None for r in origin.requests("files/model.bin"))
    assert first.metric("damselfly_peer_unauthorized_requests_total") == 0
    assert scheduler.metric("damselfly_scheduler_unauthorized_requests_total") == 0

    task_id = task_key(url, ()).task_id
    stream = f"http://127.0.0.1:{upload_port(first)}{peerwire.piece_stream_path(task_id)}"
    seed_url = f"http://127.0.0.1:{upload_port(seed)}{api.SEED_PATH}"
    tasks = f"http://{scheduler.address}/v1/tasks/{task_id}"
    fake_parent = api.AnnounceHost(
        host_id="intruder", ip="127.0.0.1", upload_port=1, upload_slots_total=4
    ).to_json()
    announce = f"http://{scheduler.address}{api.ANNOUNCE_PATH}"
    seed_request = api.SeedRequest(task_id=task_id, url=url, headers={}).to_json()
    for token in (None, "wrong-token-0123456789abcdef"):
        assert status_of(stream, token) == 401  # a cached object's pieces
        assert status_of(seed_url, token, seed_request) == 401  # "seed peer, fetch this"
        assert status_of(tasks, token) == 401  # who holds what
        assert status_of(announce, token, fake_parent) == 401  # a fake parent
    assert (
        "intruder"
        not in json.loads(
            DIRECT.open(
                urllib.request.Request(tasks, headers={"Authorization": f"Bearer {TOKEN}"}),
                timeout=10,
            ).read()
        )["peers"]
    )
    # Probes need no token; the token opens the same routes (either line of the file).
    assert status_of(f"http://127.0.0.1:{upload_port(first)}/healthz") == 200
    assert status_of(f"http://{scheduler.address}/readyz") == 200
    assert status_of(stream, TOKEN) == 200
    assert status_of(tasks, OTHER) == 200
    assert first.metric("damselfly_peer_unauthorized_requests_total") == 2
    assert seed.metric("damselfly_peer_unauthorized_requests_total") == 2
    assert scheduler.metric("damselfly_scheduler_unauthorized_requests_total") == 4

    # A peer holding another token is refused by the swarm, and still gets its object.
    stranger = member(
        processes,
        tmp_path,
        "peer-x",
        scheduler,
        token_file(tmp_path, "stale", "stale-0123456789abcdef"),
    )
    assert fetch(stranger, url, tmp_path / "x.bin") == 0
    assert sha256(tmp_path / "x.bin") == expected
    assert stranger.metric("damselfly_peer_downloaded_bytes_total", source="parent") == 0
    assert scheduler.metric("damselfly_scheduler_unauthorized_requests_total") > 4


@pytest.mark.parametrize(
    ("text", "says"),
    [(None, "cannot read"), ("", "is empty"), ("short\n", "is not a token")],
    ids=["missing", "empty", "too-short"],
)
@pytest.mark.parametrize("command", ["peer", "scheduler"])
def test_a_bad_token_file_stops_the_start_with_one_line(
    tmp_path: Path, command: str, text: str | None, says: str
) -> None:
    path = tmp_path / "token"
    if text is not None:
        path.write_text(text)
    config = tmp_path / "config.yaml"
    if command == "peer":
        config.write_text(yaml.safe_dump({"storage": {"dir": str(tmp_path / "store")}}))
    else:
        config.write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "damselfly.cli", command, "-c", str(config)],
        env={**os.environ, ENV_VAR: str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert str(path) in lines[0]
