"""Parents are dialled through the egress guard: a scheduler cannot send a peer anywhere.

The parent addresses a peer dials come from the scheduler. A wrong or compromised
scheduler (here: a host that announced itself at the cloud metadata address)
must not make a peer connect to link-local addresses, any more than a client can
through the proxy. Origin, scheduler and peer all run in a network namespace with
nothing but loopback, so even a regression sends no packet to a real 169.254.x
address; the guard is told apart from a failed connect by its metric and log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.api import scheduler as api
from damselfly.api.scheduler import Model
from tests.support.netns import inside_namespace, isolated_namespace, netns_available
from tests.support.origin import start_origin
from tests.support.peer import start_peer
from tests.support.procs import wait_until
from tests.support.scheduler import start_scheduler

SIZE = 5 * (1 << 20) + 333


@pytest.fixture
def loopback_only() -> Iterator[None]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with isolated_namespace() as name, inside_namespace(name):
        yield


def post(address: str, path: str, body: Model) -> None:
    request = urllib.request.Request(
        f"http://{address}{path}",
        data=json.dumps(body.model_dump(mode="json", by_alias=True)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.parametrize("ip", ["169.254.169.254", "fd00:ec2::254", "metadata.internal"])
def test_a_parent_at_a_refused_address_is_never_dialled(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    loopback_only: None,
    ip: str,
) -> None:
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "www" / "files").mkdir(parents=True)
    (tmp_path / "www" / "files" / digest).write_bytes(data)
    origin = start_origin(processes, tmp_path / "www")
    scheduler = start_scheduler(
        processes,
        tmp_path,
        config={"announceInterval": 0.5, "hostTTL": 120},  # the fake host stays
    )

    # What a compromised scheduler would say: a host at a metadata address holds it all.
    post(
        scheduler.address,
        api.ANNOUNCE_PATH,
        api.AnnounceHost(
            host_id="metadata",
            ip=ip,
            upload_port=80,
            seed=True,
            upload_slots_total=8,
            upload_slots_free=8,
            tasks=[
                api.HeldTask(
                    task_id=digest,
                    url=f"{origin.base_url}/files/{digest}",
                    size=SIZE,
                    piece_length=1 << 20,
                    complete=True,
                )
            ],
            full=True,
        ),
    )
    peer = start_peer(
        processes,
        tmp_path,
        rule_list=[{"regex": r"/files/"}],
        hostId="peer",
        scheduler={
            "addresses": [scheduler.address],
            "announceInterval": 0.5,
            "stallTimeout": 3,
            "pieceTimeout": 5,
        },
    )
    out, url = tmp_path / "out", f"{origin.base_url}/files/{digest}"
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-x", peer.proxy_url, "-o", str(out), url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest, "the origin filled in"
    assert scheduler.metric("damselfly_scheduler_hosts") >= 2, "the scheduler knew both"
    wait_until(
        lambda: peer.metric("damselfly_peer_parents_refused_total") >= 1,
        10,
        "the refusal counted",
        proc=peer.proc,
    )
    log = peer.proc.log_path.read_text()
    assert "parent refused by the egress guard" in log
    assert ip in log
