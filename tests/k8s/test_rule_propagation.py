"""Rule propagation on a real API server: peers as local processes watch ProxyRules.

No kubelet runs here, so the peers are `damselfly peer` processes on loopback with a
kubeconfig holding a token of the ServiceAccount the operator renders: the peer Role
(read ProxyRules, write its Lease) is exactly what they get, so RBAC is exercised.
The origin is a real HTTP server; "routed through the cache" means the proxy answered
with ``X-Damselfly-Cache``; pass-through answers carry no such header.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from damselfly.api.rules import ruleset_from_objects
from tests.k8s.conftest import Kubectl
from tests.k8s.controlplane import ControlPlane, wait_for
from tests.support.origin import Origin, start_origin
from tests.support.peer import PeerHandle, start_peer
from tests.support.ports import free_port
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]

CLUSTER = "swarm"
PEERS = 3
WAIT = 30.0
_node_ports = itertools.count(31700)


def cluster_manifest(node_port: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "P2PCluster",
            "metadata": {"name": CLUSTER},
            "spec": {
                "image": "damselfly:dev",
                "ruleSource": "API",
                "seedPeer": {"replicas": 0},
                "proxy": {"nodePort": node_port},
            },
        }
    )


def rule_manifest(name: str, regex: str, priority: int = 100, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "ProxyRule",
            "metadata": {"name": name},
            "spec": {"clusterRef": {"name": CLUSTER}, "regex": regex, "priority": priority, **spec},
        }
    )


def peer_kubeconfig(kubectl: Kubectl, control_plane: ControlPlane, ns: str, path: Path) -> Path:
    """A kubeconfig with a token of the peer ServiceAccount the operator rendered."""
    kubectl.wait_get("rolebinding", f"{CLUSTER}-peer", ns, timeout=WAIT)
    token = kubectl.run(
        "create", "token", f"{CLUSTER}-peer", "-n", ns, "--duration=1h"
    ).stdout.strip()
    config = json.loads(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(json.dumps(config))
    return path


def fetch(peer: PeerHandle, url: str) -> dict[str, str]:
    """GET ``url`` through the peer's proxy; the response headers, lower-cased."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-x",
            peer.proxy_url,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    headers: dict[str, str] = {}
    for line in result.stdout.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


@pytest.fixture
def swarm(
    namespace: str,
    kubectl: Kubectl,
    control_plane: ControlPlane,
    operator: ManagedProcess,
    processes: Any,
    tmp_path: Path,
) -> tuple[str, list[PeerHandle], Origin]:
    """A P2PCluster with ruleSource API, PEERS local peer processes, and an origin."""
    kubectl.apply(cluster_manifest(next(_node_ports)), namespace)
    kubeconfig = peer_kubeconfig(kubectl, control_plane, namespace, tmp_path / "peer.kubeconfig")
    www = tmp_path / "www"
    (www / "blob").mkdir(parents=True)
    (www / "blob" / "a.bin").write_bytes(b"a" * 100_000)
    (www / "other.txt").write_text("not cached\n")
    origin = start_origin(processes, www)
    peers = [
        start_peer(
            processes,
            tmp_path,
            name=f"peer{i}",
            hostId=f"node-{i}.example",
            rules={
                "source": "api",
                "api": {
                    "clusterName": CLUSTER,
                    "namespace": namespace,
                    "kubeconfig": str(kubeconfig),
                    "leaseDuration": "15s",
                    "maxBackoff": "2s",
                },
            },
        )
        for i in range(PEERS)
    ]
    return namespace, peers, origin


def wait_all(peers: list[PeerHandle], check: Any, what: str) -> None:
    for peer in peers:
        wait_for(lambda p=peer: check(p), WAIT, f"{what} on {peer.proxy_url}")


def propagation(kubectl: Kubectl, ns: str, rule: str) -> tuple[str | None, dict[str, Any]]:
    obj = kubectl.get("proxyrule", rule, ns) or {}
    status = obj.get("status") or {}
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Propagated"), {})
    return status.get("propagation"), cond


def test_apply_change_delete_a_rule_reaches_every_peer(
    swarm: tuple[str, list[PeerHandle], Origin], kubectl: Kubectl
) -> None:
    ns, peers, origin = swarm
    url = origin.base_url + "/blob/a.bin?sig=one"
    before = fetch(peers[0], url)
    assert "x-damselfly-cache" not in before  # no rule yet: pass-through

    kubectl.apply(rule_manifest("blobs", r"^http://127\.0\.0\.1:\d+/blob/"), ns)
    wait_all(peers, lambda p: "x-damselfly-cache" in fetch(p, url), "rule applied")
    first_ids = {fetch(p, url)["x-damselfly-task-id"] for p in peers}
    assert len(first_ids) == 1  # same URL, same rule: same task on every peer
    assert "x-damselfly-cache" not in fetch(peers[0], origin.base_url + "/other.txt")

    # Propagated reaches N/N, on the rule and on the cluster
    wait_for(
        lambda: (
            propagation(kubectl, ns, "blobs")[0] == f"{PEERS}/{PEERS}"
            and propagation(kubectl, ns, "blobs")[1].get("status") == "True"
        ),
        WAIT,
        "Propagated N/N",
    )
    cluster = kubectl.must_get("p2pcluster", CLUSTER, ns)
    assert cluster["status"]["rulesPropagation"] == f"{PEERS}/{PEERS}"
    rules = kubectl.run("get", "proxyrules", "-n", ns, "-o", "json").stdout
    expected = ruleset_from_objects(CLUSTER, json.loads(rules)["items"]).digest
    assert cluster["status"]["rulesHash"] == expected
    assert {p.status()["rules"]["hash"] for p in peers} == {expected}
    assert {p.status()["rules"]["source"] for p in peers} == {"api"}
    leases = json.loads(
        kubectl.run(
            "get", "leases", "-n", ns, "-l", "damselfly.io/component=peer-rules", "-o", "json"
        ).stdout
    )["items"]
    assert sorted(item["spec"]["holderIdentity"] for item in leases) == [
        f"node-{i}.example" for i in range(PEERS)
    ]

    # filteredQueryParams changes the cache key: sig no longer counts
    kubectl.apply(
        rule_manifest("blobs", r"^http://127\.0\.0\.1:\d+/blob/", filteredQueryParams=["sig"]),
        ns,
    )
    wait_all(
        peers,
        lambda p: fetch(p, url).get("x-damselfly-task-id") not in first_ids,
        "new cache key",
    )
    second_ids = {fetch(p, url)["x-damselfly-task-id"] for p in peers}
    assert len(second_ids) == 1
    other_sig = fetch(peers[0], origin.base_url + "/blob/a.bin?sig=two")
    assert other_sig["x-damselfly-task-id"] in second_ids  # sig is out of the key now

    # deleted: matching URLs pass through again
    kubectl.run("delete", "proxyrule", "blobs", "-n", ns)
    wait_all(peers, lambda p: "x-damselfly-cache" not in fetch(p, url), "rule removed")
    for peer in peers:
        assert peer.proc.alive


def test_a_bad_rule_never_takes_a_peer_down(
    swarm: tuple[str, list[PeerHandle], Origin], kubectl: Kubectl
) -> None:
    ns, peers, origin = swarm
    url = origin.base_url + "/blob/a.bin"
    kubectl.apply(rule_manifest("good", r"/blob/"), ns)
    wait_all(peers, lambda p: "x-damselfly-cache" in fetch(p, url), "good rule")
    good_hash = peers[0].status()["rules"]["hash"]
    # RE2 rejects lookbehind; the schema cannot tell, so the API server stores it
    kubectl.apply(rule_manifest("bad", r"(?<=x)/blob/", priority=1), ns)
    wait_all(
        peers,
        lambda p: "bad" in (p.status()["rules"]["lastError"] or ""),
        "the bad rule reported",
    )
    for peer in peers:
        assert peer.proc.alive
        assert peer.status()["rules"]["hash"] == good_hash
        assert "x-damselfly-cache" in fetch(peer, url)
        assert peer.metric("damselfly_peer_rule_reload_failures_total") >= 1
    # the good rule's set is what every peer runs; the bad rule says why it is out
    wait_for(
        lambda: propagation(kubectl, ns, "good")[0] == f"{PEERS}/{PEERS}",
        WAIT,
        "good rule propagated",
    )
    wait_for(
        lambda: propagation(kubectl, ns, "bad")[1].get("reason") == "NotAccepted",
        WAIT,
        "the bad rule: Propagated False NotAccepted",
    )
    assert propagation(kubectl, ns, "bad")[1]["status"] == "False"

    # a peer that stops withdraws its report: the count follows
    peers[-1].proc.stop()
    wait_for(
        lambda: propagation(kubectl, ns, "good")[0] == f"{PEERS - 1}/{PEERS - 1}",
        WAIT,
        "a stopped peer no longer counted",
    )


class Relay:
    """A loopback TCP relay to the API server that a test can cut and restore: the
    peer's connection breaks as it would when the API server restarts or a node's
    network drops, while the real API server keeps taking writes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def up(self) -> None:
        async def serve() -> None:
            self.server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._run(serve())

    def down(self) -> None:
        async def cut() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self._run(cut())

    def close(self) -> None:
        self.down()

        async def drain() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_peer_resyncs_after_losing_the_api_server(
    namespace: str,
    kubectl: Kubectl,
    control_plane: ControlPlane,
    operator: ManagedProcess,
    processes: Any,
    tmp_path: Path,
) -> None:
    """Cut the peer's API connection, change rules meanwhile, restore: the peer keeps
    the last good set while cut off, then relists and runs what the API says now."""
    ns = namespace
    kubectl.apply(cluster_manifest(next(_node_ports)), ns)
    kubeconfig = peer_kubeconfig(kubectl, control_plane, ns, tmp_path / "peer.kubeconfig")
    api = urlsplit(control_plane.server)
    relay = Relay((api.hostname or "127.0.0.1", api.port or 443))
    relay.up()
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    kubeconfig.write_text(json.dumps(config))
    www = tmp_path / "www"
    (www / "old").mkdir(parents=True)
    (www / "new").mkdir()
    (www / "old" / "x.bin").write_bytes(b"o" * 1000)
    (www / "new" / "x.bin").write_bytes(b"n" * 1000)
    origin = start_origin(processes, www)
    try:
        peer = start_peer(
            processes,
            tmp_path,
            hostId="cut-off",
            rules={
                "source": "api",
                "api": {
                    "clusterName": CLUSTER,
                    "namespace": ns,
                    "kubeconfig": str(kubeconfig),
                    "maxBackoff": "1s",
                },
            },
        )
        old_url, new_url = origin.base_url + "/old/x.bin", origin.base_url + "/new/x.bin"
        kubectl.apply(rule_manifest("old", "/old/"), ns)
        wait_for(lambda: "x-damselfly-cache" in fetch(peer, old_url), WAIT, "old rule")

        relay.down()
        kubectl.run("delete", "proxyrule", "old", "-n", ns)
        kubectl.apply(rule_manifest("new", "/new/"), ns)
        time.sleep(3)  # the watch breaks; relists fail against the cut relay, with backoff
        assert peer.proc.alive
        assert "x-damselfly-cache" in fetch(peer, old_url)  # the last good set stays
        assert "x-damselfly-cache" not in fetch(peer, new_url)

        relay.up()
        wait_for(lambda: "x-damselfly-cache" in fetch(peer, new_url), WAIT, "resync: new rule")
        assert "x-damselfly-cache" not in fetch(peer, old_url)
        wait_for(lambda: propagation(kubectl, ns, "new")[0] == "1/1", WAIT, "report after resync")
    finally:
        relay.close()
