"""A P2PCluster that cannot progress says why, on a real API server.

No kubelet runs here, so no pod ever starts. Two tests run the real workload
controllers (a kube-controller-manager with the DaemonSet, StatefulSet and
PersistentVolume binder controllers, and one Node object for the DaemonSet to
aim at) and meet real refusals: Pod Security admission rejecting the peers'
hostPath pods (FailedCreate), and a seed PVC no volume can bind. The third writes
a pod's status by hand, as kubelet would, to show an image pull failure and its
recovery. The extra controllers run only during their test: the other tests
write the workloads' status themselves and must not have it overwritten.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import Kubectl
from tests.k8s.controlplane import REPO, ControlPlane, wait_for
from tests.support.ports import free_port
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(120)]

CLUSTER = "damselfly"
WAIT = 30.0
NODE = "stall-test-node"
_node_ports = itertools.count(32100)


def cluster_manifest(**spec: Any) -> str:
    doc = yaml.safe_load((REPO / "examples" / "p2pcluster.yaml").read_text())
    doc["spec"]["proxy"]["nodePort"] = next(_node_ports)
    doc["spec"].update(spec)
    return yaml.safe_dump(doc)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_stalled(kubectl: Kubectl, ns: str, status: str, reason: str | None = None) -> Any:
    def check() -> dict[str, Any] | None:
        obj = kubectl.get("p2pcluster", CLUSTER, ns)
        cond = condition(obj, "Stalled")
        if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return obj
        return None

    try:
        return wait_for(check, WAIT, f"Stalled={status} {reason or ''}")
    except AssertionError as exc:
        obj = kubectl.get("p2pcluster", CLUSTER, ns) or {}
        conds = obj.get("status", {}).get("conditions")
        raise AssertionError(f"{exc}\nconditions: {json.dumps(conds, indent=1)}") from None


def events_about(kubectl: Kubectl, ns: str, kind: str, name: str) -> list[dict[str, Any]]:
    out = kubectl.run(
        "get", "events", "-n", ns, "-o", "json",
        "--field-selector", f"involvedObject.kind={kind},involvedObject.name={name}",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


@pytest.fixture
def controllers(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """kube-controller-manager with the controllers that create pods and bind PVCs."""
    if not control_plane.has_gc:
        pytest.skip("no kube-controller-manager among the binaries ($KUBEBUILDER_ASSETS)")
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
    }
    kubectl.run("apply", "--server-side", "-f", "-", input=json.dumps(node))
    logs = tmp_path_factory.mktemp("controllers")
    kcm = ManagedProcess(
        "kube-controller-manager-workloads",
        [
            str(control_plane.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--authentication-kubeconfig={control_plane.kubeconfig}",
            f"--authorization-kubeconfig={control_plane.kubeconfig}",
            "--controllers=daemonset,statefulset,persistentvolume-binder",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ],
        logs,
    )
    try:
        yield kcm
    finally:
        kcm.stop()
        kubectl.run("delete", "node", NODE, "--wait=false", check=False)


def test_pod_security_refusing_the_peers_stalls_with_failed_create(
    kubectl: Kubectl, namespace: str, operator: ManagedProcess, controllers: ManagedProcess
) -> None:
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl.apply(cluster_manifest(), namespace)
    stalled = wait_stalled(kubectl, namespace, "True", "FailedCreate")
    message = condition(stalled, "Stalled")["message"]
    assert "forbidden" in message
    assert "PodSecurity" in message
    assert "DaemonSet damselfly-peer: " in message  # the controller's words, named
    assert 'pods "damselfly-peer-" is forbidden' in message  # not each attempt's pod name
    assert condition(stalled, "Ready")["status"] == "False"
    assert condition(stalled, "Ready")["reason"] == "FailedCreate"
    assert condition(stalled, "Reconciling")["status"] == "False"
    assert condition(stalled, "PeersAvailable")["reason"] == "FailedCreate"
    assert stalled["status"]["observedGeneration"] == stalled["metadata"]["generation"]
    posted = events_about(kubectl, namespace, "P2PCluster", CLUSTER)
    assert [e["type"] for e in posted if e["reason"] == "FailedCreate"] == ["Warning"]


def test_a_seed_pvc_nothing_can_bind_stalls_the_cluster(
    kubectl: Kubectl, namespace: str, operator: ManagedProcess, controllers: ManagedProcess
) -> None:
    # no StorageClass exists and no PersistentVolume: the PV binder says so in an Event
    kubectl.apply(cluster_manifest(), namespace)
    stalled = wait_stalled(kubectl, namespace, "True", "PersistentVolumeClaimPending")
    seeds = condition(stalled, "SeedPeersAvailable")
    assert seeds["reason"] == "PersistentVolumeClaimPending"
    assert "PersistentVolumeClaim cache-damselfly-seed-peer-0 is Pending" in seeds["message"]
    assert "no storage class is set" in seeds["message"]
    assert condition(stalled, "Stalled")["message"] == condition(stalled, "Ready")["message"]


def pod_status(state: str) -> dict[str, Any]:
    """What kubelet writes for a peer pod: pulling the image fails, or it runs."""
    image = "ghcr.io/acme/damselfly:nope"
    if state == "pull":
        init_state = {
            "waiting": {
                "reason": "ImagePullBackOff",
                "message": f'Back-off pulling image "{image}": ErrImagePull: failed to pull '
                f'and unpack image "{image}": not found',
            }
        }
        main_state: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
        ready = "False"
    else:
        init_state = {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": "2030-01-01T00:00:00Z",
                "finishedAt": "2030-01-01T00:00:01Z",
            }
        }
        main_state = {"running": {"startedAt": "2030-01-01T00:00:02Z"}}
        ready = "True"

    def container(name: str, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": name,
            "image": image,
            "imageID": "",
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
            "lastState": {},
        }

    return {
        "phase": "Pending" if state == "pull" else "Running",
        "conditions": [
            {"type": "Initialized", "status": "True" if ready == "True" else "False"},
            {"type": "Ready", "status": ready},
            {"type": "ContainersReady", "status": ready},
            {"type": "PodScheduled", "status": "True"},
        ],
        "initContainerStatuses": [container("cache-owner", init_state, False)],
        "containerStatuses": [container("peer", main_state, ready == "True")],
    }


def test_an_image_pull_failure_stalls_and_recovery_clears_it(
    kubectl: Kubectl, namespace: str, operator: ManagedProcess
) -> None:
    kubectl.apply(cluster_manifest(), namespace)
    kubectl.wait_get("daemonset", "damselfly-peer", namespace, timeout=WAIT)
    peer = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "damselfly-peer-x7k2p",
            "labels": {"damselfly.io/cluster": CLUSTER, "damselfly.io/component": "peer"},
        },
        "spec": {
            "nodeName": NODE,
            "initContainers": [{"name": "cache-owner", "image": "ghcr.io/acme/damselfly:nope"}],
            "containers": [{"name": "peer", "image": "ghcr.io/acme/damselfly:nope"}],
        },
    }
    kubectl.apply(json.dumps(peer), namespace)
    kubectl.patch_status("pod", "damselfly-peer-x7k2p", namespace, pod_status("pull"))
    stalled = wait_stalled(kubectl, namespace, "True", "ImagePullBackOff")
    peers = condition(stalled, "PeersAvailable")
    assert peers["reason"] == "ImagePullBackOff"
    assert (
        "pod damselfly-peer-x7k2p init container cache-owner: ImagePullBackOff: Back-off pulling"
        in peers["message"]
    )
    assert condition(stalled, "Ready")["reason"] == "ImagePullBackOff"
    posted = events_about(kubectl, namespace, "P2PCluster", CLUSTER)
    assert "ImagePullBackOff" in {e["reason"] for e in posted if e["type"] == "Warning"}
    # kubelet pulls it after all: no longer stalled, progressing again (the DaemonSet
    # controller, absent here, never counted the pod)
    kubectl.patch_status("pod", "damselfly-peer-x7k2p", namespace, pod_status("running"))
    recovered = wait_stalled(kubectl, namespace, "False")
    assert condition(recovered, "Reconciling")["status"] == "True"
    assert condition(recovered, "PeersAvailable")["reason"] != "ImagePullBackOff"
