"""The README's path on a real cluster, in pods, in order: install, download through
each node's peer, Git LFS, rule changes, lifecycle. One P2PCluster (examples/) in a
namespace of this module's own; the tests run in file order and build on each other.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import (
    OPERATOR_NAMESPACE,
    client_pod,
    random_file,
    rollout_status,
    wait_pods_ready,
    wait_ready,
)
from e2e.kube import ClusterInfo, Kubectl, Node, condition, parse_metrics, wait_for
from tests.support.origin import start_origin

MiB = 1 << 20
OBJECT_SIZE = 64 * MiB
HOST_PORT = 65001  # the peer's proxy on every node's own address (hostPort)
NODE_PORT = 30950  # the same proxy for clients outside the cluster (NodePort)
CLUSTER_LABEL = "damselfly.io/cluster"
COMPONENT_LABEL = "damselfly.io/component"
# Waits on pods are long on 2 cores (image start, kubelet sync); each is bounded itself.
pytestmark = pytest.mark.timeout(600)


@dataclass
class Download:
    where: str
    cache: str | None  # X-Damselfly-Cache
    sha256: str
    served_by: str | None = None  # node whose peer counted the request


def _curl_script(proxy: str, url: str) -> str:
    return (
        f"curl -sS -m 300 -x http://{proxy} -D /tmp/e2e-h -o /tmp/e2e-o '{url}' "
        "&& sha256sum /tmp/e2e-o && cat /tmp/e2e-h"
    )


def _parse(where: str, out: str) -> Download:
    digest = out.split()[0]
    match = re.search(r"^x-damselfly-cache:\s*(\S+)", out, re.I | re.M)
    return Download(where, match.group(1) if match else None, digest)


class Swarm:
    """The test's view of the peers: who they are, what each served."""

    def __init__(self, kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
        self.kube = kube
        self.cluster = cluster
        self.namespace = namespace

    def peer_pods(self) -> dict[str, dict[str, Any]]:
        """node name -> the peer pod on it"""
        pods = self.kube.json(
            "pods", "-n", self.namespace, "-l", f"{COMPONENT_LABEL}=peer,{CLUSTER_LABEL}=damselfly"
        )["items"]
        return {
            p["spec"]["nodeName"]: p for p in pods if not p["metadata"].get("deletionTimestamp")
        }

    def metrics(self, pod: str) -> str:
        return self.kube.raw(f"/api/v1/namespaces/{self.namespace}/pods/{pod}:65003/proxy/metrics")

    def counters(self, name: str, label: str) -> dict[str, float]:
        """node -> value of ``name{label}`` on its peer"""
        out = {}
        for node, pod in self.peer_pods().items():
            samples = parse_metrics(self.metrics(pod["metadata"]["name"]), name)
            out[node] = sum(v for k, v in samples.items() if label in k)
        return out

    def rules_hashes(self) -> dict[str, str]:
        """node -> hash of the rule set its peer runs"""
        out = {}
        for node, pod in self.peer_pods().items():
            samples = parse_metrics(
                self.metrics(pod["metadata"]["name"]), "damselfly_peer_rules_info"
            )
            running = [k for k, v in samples.items() if v == 1]
            out[node] = running[0].split('"')[1] if running else ""
        return out

    def cache_requests(self) -> dict[str, float]:
        return self.counters("damselfly_peer_requests_total", 'route="cache"')

    def fetch(self, argv_prefix: Sequence[str], where: str, proxy: str, url: str) -> Download:
        before = self.cache_requests()
        done = subprocess.run(
            [*argv_prefix, "sh", "-c", _curl_script(proxy, url)],
            capture_output=True,
            text=True,
            timeout=330,
            check=False,
        )
        assert done.returncode == 0, f"download {where} via {proxy} failed: {done.stderr}"
        result = _parse(where, done.stdout)
        after = self.cache_requests()
        grew = [n for n in after if after[n] > before.get(n, 0)]
        assert len(grew) <= 1, f"{where}: several peers counted the request: {grew}"
        result.served_by = grew[0] if grew else None
        return result

    def from_pod(self, pod: str, proxy: str, url: str) -> Download:
        prefix = [
            self.cluster.kubectl,
            "--kubeconfig",
            self.cluster.kubeconfig,
            "exec",
            "-n",
            self.namespace,
            pod,
            "--",
        ]
        return self.fetch(prefix, f"pod {pod}", proxy, url)

    def from_node(self, node: Node, proxy: str, url: str) -> Download:
        return self.fetch(node.exec_prefix, f"node {node.name}", proxy, url)

    def from_host(self, proxy: str, url: str) -> Download:
        return self.fetch([], "outside the cluster", proxy, url)


@pytest.fixture(scope="module")
def swarm(kube: Kubectl, cluster: ClusterInfo, damselfly: str) -> Swarm:
    return Swarm(kube, cluster, damselfly)


@pytest.fixture(scope="module")
def origin(
    cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # Iterator[tuple[Origin, str]]
    """A real origin on the machine, outside the cluster, with a random 64 MiB object."""
    from tests.conftest import Processes

    directory = tmp_path_factory.mktemp("origin")
    digest = random_file(directory / "object.bin", OBJECT_SIZE)
    slow_digest = random_file(directory / "slow.bin", OBJECT_SIZE)
    group = Processes(tmp_path_factory.mktemp("origin-logs"))
    server = start_origin(group, directory, host=cluster.host_address, name="e2e-origin")
    yield server, digest, slow_digest
    group.stop_all()


def proxy_rule(name: str, regex: str, cluster: str = "damselfly") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: damselfly.io/v1alpha1
        kind: ProxyRule
        metadata: {{name: {name}}}
        spec:
          clusterRef: {{name: {cluster}}}
          priority: 50
          regex: '{regex}'
        """
    )


def wait_running(swarm: Swarm, rule: str, timeout: float = 240) -> float:
    """Seconds until every peer runs the rule set that holds ``rule``: the operator has
    applied it (its hash in the P2PCluster's status) and each peer's
    ``damselfly_peer_rules_info`` shows that hash. Works for both rule sources (in
    ConfigMap mode no peer reports through the API)."""
    kube, namespace = swarm.kube, swarm.namespace
    start = time.monotonic()

    def applied() -> str | None:
        obj = kube.json("proxyrule", "-n", namespace, rule)
        cond = condition(obj, "Applied")
        if not cond or cond["status"] != "True":
            return None
        if cond.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        status = kube.json("p2pcluster", "-n", namespace, "damselfly")["status"]
        return str(status["rulesHash"])

    expected = wait_for(applied, timeout, f"ProxyRule {rule} Applied")
    wait_for(
        lambda: set(swarm.rules_hashes().values()) == {expected},
        timeout - (time.monotonic() - start),
        f"every peer running rules {expected}",
        every=0.5,
    )
    return time.monotonic() - start


# --- 1. install ------------------------------------------------------------------------


def test_install_from_readme_reaches_ready(kube: Kubectl, damselfly: str, cluster: ClusterInfo):
    """kubectl apply -k deploy/ + -f examples/: everything Ready, kubectl wait works."""
    wait_ready(kube, damselfly, timeout=300)
    table = kube("-n", damselfly, "get", "damselfly")
    print(table)
    cluster_obj = kube.json("p2pcluster", "-n", damselfly, "damselfly")
    status = cluster_obj["status"]
    nodes = len(cluster.nodes)
    assert status["peers"]["ready"] == nodes, status
    assert status["peers"]["desired"] == nodes, status
    assert status["seedPeers"]["ready"] == 1, status
    assert status["scheduler"]["ready"] == 1, status
    ready = condition(cluster_obj, "Ready")
    assert ready
    assert ready["status"] == "True"
    row = table.splitlines()[1].split()
    assert row[:2] == ["p2pcluster.damselfly.io/damselfly", "True"], table


# --- 2. downloads: node-local, swarm, origin once --------------------------------------


def test_each_node_serves_its_own_clients_and_the_origin_sends_once(
    kube: Kubectl, swarm: Swarm, cluster: ClusterInfo, damselfly: str, origin: Any
):
    server, digest, _ = origin
    kube.apply(proxy_rule("e2e-origin", rf"^{re.escape(server.base_url)}/.*\.bin$"), damselfly)
    print(f"every peer runs the rule after {wait_running(swarm, 'e2e-origin'):.1f}s")
    node1, node2 = cluster.nodes[:2]
    pods = [client_pod(kube, damselfly, n) for n in (node1, node2)]
    wait_pods_ready(kube, damselfly, pods)
    url = server.url("object.bin")
    server.reset()
    at1, at2 = f"{node1.address}:{HOST_PORT}", f"{node2.address}:{HOST_PORT}"
    results = [
        swarm.from_pod(pods[0], at1, url),  # first anywhere: a miss on node 1
        swarm.from_pod(pods[0], at1, url),
        swarm.from_node(node1, at1, url),
        swarm.from_pod(pods[1], at2, url),  # first on node 2: from peers
    ]
    parent_bytes = swarm.counters("damselfly_peer_downloaded_bytes_total", 'source="parent"')
    results += [
        swarm.from_node(node2, at2, url),
        swarm.from_pod(pods[1], at2, url),
        swarm.from_host(f"{node1.address}:{NODE_PORT}", url),
        swarm.from_host(f"{node2.address}:{NODE_PORT}", url),
    ]
    for r in results:
        print(f"{r.where:>30} -> served by {r.served_by}: {r.cache}")
    assert all(r.sha256 == digest for r in results), [(r.where, r.sha256) for r in results]
    expected = [node1.name] * 3 + [node2.name] * 3 + [node1.name, node2.name]
    assert [r.served_by for r in results] == expected
    assert results[0].cache == "miss"
    assert results[3].cache == "miss"  # node 2's peer had to fetch it ...
    assert parent_bytes[node2.name] >= OBJECT_SIZE  # ... and got it from peers
    assert all(r.cache == "hit" for i, r in enumerate(results) if i not in (0, 3))
    sent = sum(req["bytes_sent"] for req in server.requests("object.bin"))
    assert sent <= OBJECT_SIZE * 1.01, f"origin sent {sent / OBJECT_SIZE:.3f} x the object"
    print(f"origin sent {sent / OBJECT_SIZE:.3f} x the object")


def test_nodeport_from_inside_the_cluster_is_not_node_local(
    swarm: Swarm, cluster: ClusterInfo, origin: Any, damselfly: str
):
    """Why the peer has a hostPort: NodePort traffic from a pod or the node itself goes
    to any node's peer, externalTrafficPolicy: Local or not. Printed, for the record."""
    server, digest, _ = origin
    node1 = cluster.nodes[0]
    url = server.url("object.bin")
    counts: dict[str, int] = {}
    for _ in range(8):
        r = swarm.from_node(node1, f"{node1.address}:{NODE_PORT}", url)
        assert r.sha256 == digest
        counts[str(r.served_by)] = counts.get(str(r.served_by), 0) + 1
    print(f"node {node1.name} -> its own NodePort, 8 requests served by: {counts}")


# --- 3. Git LFS --------------------------------------------------------------------------


def test_git_lfs_clone_through_the_peers_reads_the_store_once(
    kube: Kubectl,
    swarm: Swarm,
    cluster: ClusterInfo,
    damselfly: str,
    make_lfs_repo: Any,
    tmp_path: Path,
):
    from tests.lfs_rig import git_env

    repo = make_lfs_repo(sizes=(3 * MiB, 24 * MiB))
    # the objects' hrefs point at the S3 store (moto); the regex sees no query string
    store_re = re.escape(f"{repo.server.moto_url}/")
    kube.apply(proxy_rule("e2e-lfs", rf"^{store_re}.*[0-9a-f]{{64}}$"), damselfly)
    wait_running(swarm, "e2e-lfs")
    before = len(repo.server.store_gets(repo.oids))
    gets_after: list[int] = []
    for i, node in enumerate(cluster.nodes[:2]):
        dest = tmp_path / f"clone-{i}"
        home = tmp_path / f"home-{i}"
        env = git_env(home)
        env_args = [f"{k}={v}" for k, v in env.items()]
        proxy = f"http://{node.address}:{HOST_PORT}"
        argv = [
            *node.exec_prefix,
            "env",
            *env_args,
            "git",
            "-c",
            f"http.proxy={proxy}",
            "clone",
            "-q",
            repo.url,
            str(dest),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        repo.verify(dest)
        gets_after.append(len(repo.server.store_gets(repo.oids)))
    gets = repo.server.store_gets(repo.oids)[before:]
    # a seed may fetch an object in several ranges: count bytes, not requests
    sent = {oid: sum(g.bytes_sent for g in gets if g.key.endswith(oid)) for oid in repo.oids}
    sizes = {f.oid: f.size for f in repo.files}
    print(
        f"store: {len(gets)} GETs, {sum(sent.values())} bytes for {len(sizes)} objects of "
        f"{sum(sizes.values())} bytes over two clones on two nodes"
    )
    assert gets_after[1] == gets_after[0], "the second node's clone reached the store"
    for oid, size in sizes.items():
        assert size <= sent[oid] <= size * 1.01, f"{oid}: store sent {sent[oid]} of {size} bytes"


# --- 4. rule changes reach running peers, both rule sources ------------------------------


def _cached(proxy: str, url: str) -> bool:
    """Did the peer at ``proxy`` take ``url`` through its cache (a rule matched)?"""
    done = subprocess.run(
        ["curl", "-sS", "-m", "30", "-x", f"http://{proxy}", "-D", "-", "-o", "/dev/null", url],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return "x-damselfly-cache:" in done.stdout.lower()


def _pod_identities(swarm: Swarm) -> dict[str, tuple[str, int]]:
    return {
        node: (
            pod["metadata"]["uid"],
            sum(c["restartCount"] for c in pod["status"]["containerStatuses"]),
        )
        for node, pod in swarm.peer_pods().items()
    }


def _until_every_peer(cluster: ClusterInfo, url: str, cached: bool, timeout: float) -> float:
    start = time.monotonic()
    proxies = [f"{n.address}:{HOST_PORT}" for n in cluster.nodes]
    wait_for(
        lambda: all(_cached(p, url) == cached for p in proxies),
        timeout,
        f"{url} {'cached' if cached else 'forwarded'} by every peer",
        every=0.25,
    )
    return time.monotonic() - start


@pytest.mark.parametrize("source", ["ConfigMap", "API"])
def test_rule_add_change_delete_reach_running_peers(
    kube: Kubectl, swarm: Swarm, cluster: ClusterInfo, damselfly: str, origin: Any, source: str
):
    server, _, _ = origin
    current = kube.json("p2pcluster", "-n", damselfly, "damselfly")["spec"].get(
        "ruleSource", "ConfigMap"
    )
    if current != source:  # a peer.yaml change: the peers roll once, before the clock
        kube(
            "-n",
            damselfly,
            "patch",
            "p2pcluster",
            "damselfly",
            "--type=merge",
            "-p",
            f'{{"spec": {{"ruleSource": "{source}"}}}}',
        )
        rollout_status(kube, damselfly, "ds/damselfly-peer", timeout=240)
        wait_ready(kube, damselfly)
    pods_before = _pod_identities(swarm)
    rule = f"e2e-live-{source.lower()}"
    (server.directory / rule).mkdir()
    for name in ("a.dat", "b.dat"):
        (server.directory / rule / name).write_bytes(os.urandom(4096))
    first, second = server.url(f"{rule}/a.dat"), server.url(f"{rule}/b.dat")
    limit = 240 if source == "ConfigMap" else 60
    assert not _cached(f"{cluster.nodes[0].address}:{HOST_PORT}", first)

    kube.apply(proxy_rule(rule, rf"^{re.escape(server.base_url)}/{rule}/a\.dat$"), damselfly)
    added = _until_every_peer(cluster, first, True, limit)
    kube.apply(proxy_rule(rule, rf"^{re.escape(server.base_url)}/{rule}/b\.dat$"), damselfly)
    changed = _until_every_peer(cluster, second, True, limit)
    assert not any(_cached(f"{n.address}:{HOST_PORT}", first) for n in cluster.nodes)
    kube("-n", damselfly, "delete", "proxyrule", rule)
    deleted = _until_every_peer(cluster, second, False, limit)
    print(
        f"ruleSource {source}: added {added:.1f}s, changed {changed:.1f}s, deleted {deleted:.1f}s"
    )
    assert _pod_identities(swarm) == pods_before, "a rule change restarted a peer pod"


# --- 5. lifecycle ----------------------------------------------------------------------


def test_a_recreated_peer_pod_keeps_its_cache(
    kube: Kubectl, swarm: Swarm, cluster: ClusterInfo, damselfly: str, origin: Any
):
    server, digest, _ = origin
    node1 = cluster.nodes[0]
    old = swarm.peer_pods()[node1.name]["metadata"]
    kube("-n", damselfly, "delete", "pod", old["name"], "--wait=true", timeout=120)

    def replaced() -> bool:
        pod = swarm.peer_pods().get(node1.name)
        if not pod or pod["metadata"]["uid"] == old["uid"]:
            return False
        ready = condition(pod, "Ready")
        return bool(ready and ready["status"] == "True")

    wait_for(replaced, 120, f"a new peer pod Ready on {node1.name}")
    r = swarm.from_node(node1, f"{node1.address}:{HOST_PORT}", server.url("object.bin"))
    assert (r.sha256, r.cache, r.served_by) == (digest, "hit", node1.name)


def test_killing_the_scheduler_mid_download_does_not_fail_it(
    kube: Kubectl, swarm: Swarm, cluster: ClusterInfo, damselfly: str, origin: Any
):
    server, _, digest = origin
    node2 = cluster.nodes[1]
    url = f"{server.base_url}/@rate=12000000/slow.bin"  # ~5.6 s for 64 MiB
    download = subprocess.Popen(
        [*node2.exec_prefix, "sh", "-c", _curl_script(f"{node2.address}:{HOST_PORT}", url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    kube(
        "-n",
        damselfly,
        "delete",
        "pod",
        "-l",
        f"{COMPONENT_LABEL}=scheduler",
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    out, err = download.communicate(timeout=300)
    assert download.returncode == 0, err
    result = _parse("node2", out)
    assert result.sha256 == digest
    kube(
        "-n",
        damselfly,
        "rollout",
        "status",
        "deploy/damselfly-scheduler",
        "--timeout=120s",
        timeout=140,
    )


def _children(kube: Kubectl, namespace: str) -> dict[str, str]:
    kinds = "deployment,statefulset,daemonset,service,configmap,serviceaccount,role,rolebinding"
    items = kube.json(kinds, "-n", namespace, "-l", f"{CLUSTER_LABEL}=damselfly")["items"]
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items}


def test_an_operator_restart_writes_nothing_to_children(kube: Kubectl, damselfly: str):
    wait_ready(kube, damselfly)
    before = _children(kube, damselfly)
    cluster_rv = kube.json("p2pcluster", "-n", damselfly, "damselfly")["metadata"][
        "resourceVersion"
    ]
    assert len(before) >= 8, before
    kube("-n", OPERATOR_NAMESPACE, "rollout", "restart", "deploy/damselfly-operator")
    rollout_status(kube, OPERATOR_NAMESPACE, "deploy/damselfly-operator")
    time.sleep(15)  # the new operator's first full reconcile of every cluster
    assert _children(kube, damselfly) == before
    after_rv = kube.json("p2pcluster", "-n", damselfly, "damselfly")["metadata"]["resourceVersion"]
    assert after_rv == cluster_rv, "the restarted operator rewrote the P2PCluster's status"


def test_deleting_the_p2pcluster_removes_every_child(kube: Kubectl, damselfly: str):
    assert _children(kube, damselfly)
    kube("-n", damselfly, "delete", "p2pcluster", "damselfly", "--wait=true", timeout=120)
    wait_for(lambda: not _children(kube, damselfly), 120, "every child garbage-collected")
    wait_for(
        lambda: not kube.json("pods", "-n", damselfly, "-l", f"{CLUSTER_LABEL}=damselfly")["items"],
        180,
        "every Damselfly pod gone",
    )
