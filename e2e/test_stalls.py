"""A P2PCluster that cannot progress says why: each failure a user meets in pods, in a
namespace of its own, and the P2PCluster's status must name the child's own reason.

All the broken clusters are created at once (module fixture), so the waits overlap.
Each has its own NodePort, hostPort and cache hostPath: they must not collide with
the P2PCluster of test_user_path.py, which may run on the same cluster.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.conftest import delete_namespace, make_namespace, wait_ready
from e2e.kube import ClusterInfo, Kubectl, condition, wait_for

IMAGE = "docker.io/library/damselfly:dev"
# Nothing listens there: the pull fails at once, as for a typo in a registry name.
ABSENT_IMAGE = "localhost:5999/damselfly/absent:0"
# Waits on pods are long on 2 cores (image start, kubelet sync); each is bounded itself.
pytestmark = pytest.mark.timeout(600)


def p2pcluster(namespace: str, node_port: int, host_port: int, **spec: Any) -> str:
    body: dict[str, Any] = {
        "image": IMAGE,
        "seedPeer": {"replicas": 0},
        "peer": {
            "tolerations": [{"operator": "Exists"}],
            "cache": {"hostPath": f"/var/cache/damselfly-{namespace}", "quota": "1Gi"},
        },
        "proxy": {"nodePort": node_port, "hostPort": host_port},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return yaml.safe_dump(
        {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "P2PCluster",
            "metadata": {"name": "damselfly", "namespace": namespace},
            "spec": body,
        }
    )


def stalled(kube: Kubectl, namespace: str) -> dict[str, Any] | None:
    obj = kube.json("p2pcluster", "-n", namespace, "damselfly")
    cond = condition(obj, "Stalled")
    return cond if cond and cond["status"] == "True" else None


def wait_stalled(kube: Kubectl, namespace: str, timeout: float = 150) -> dict[str, Any]:
    wait_for(lambda: stalled(kube, namespace) is not None, timeout, f"{namespace} Stalled")
    cond = stalled(kube, namespace)
    assert cond is not None
    obj = kube.json("p2pcluster", "-n", namespace, "damselfly")
    ready = condition(obj, "Ready")
    assert ready, obj["status"]
    assert ready["status"] == "False", obj["status"]
    print(f"{namespace}: Stalled {cond['reason']}: {cond['message']}")
    return cond


@pytest.fixture(scope="module")
def broken(kube: Kubectl, cluster: ClusterInfo, operator: None) -> Iterator[dict[str, str]]:
    """Five broken P2PClusters, created together; yields their namespaces by case."""
    made: dict[str, str] = {}
    node1 = cluster.nodes[0]

    # Pod Security: the default a careful admin sets; peers need hostPath + hostPort.
    ns = make_namespace(kube, "e2e-psa", level="baseline")
    kube.apply(p2pcluster(ns, 30961, 65111))
    made["psa"] = ns

    # A seed claim nothing can bind: a StorageClass that does not exist.
    ns = make_namespace(kube, "e2e-pvc")
    kube.apply(
        p2pcluster(
            ns,
            30962,
            65112,
            seedPeer={"replicas": 1, "storage": {"size": "1Gi", "storageClassName": "absent"}},
        )
    )
    made["pvc"] = ns

    # An image no registry serves.
    ns = make_namespace(kube, "e2e-image")
    kube.apply(p2pcluster(ns, 30963, 65113, image=ABSENT_IMAGE))
    made["image"] = ns

    # A peer that exits at start: a cache an older root-run peer left behind.
    ns = make_namespace(kube, "e2e-crash")
    leftover = f"/var/cache/damselfly-{ns}"
    done = node1.run(
        [
            "sh",
            "-c",
            f"mkdir -p {leftover} && echo old > {leftover}/store.db"
            f" && chmod 600 {leftover}/store.db",
        ]
    )
    assert done.returncode == 0, done.stderr
    kube.apply(p2pcluster(ns, 30964, 65114))
    made["crash"] = ns

    # A hostPort another pod on node 1 already holds: node 1's peer cannot be scheduled.
    ns = make_namespace(kube, "e2e-port")
    kube.apply(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Pod
            metadata: {{name: port-holder, namespace: {ns}}}
            spec:
              nodeName: {node1.name}
              terminationGracePeriodSeconds: 1
              containers:
                - name: hold
                  image: localhost/damselfly-e2e/client:1
                  imagePullPolicy: IfNotPresent
                  command: [sleep, infinity]
                  ports: [{{containerPort: 8080, hostPort: 65115}}]
            """
        )
    )
    kube.apply(p2pcluster(ns, 30965, 65115))
    made["port"] = ns

    yield made
    for namespace in made.values():
        kube.run("-n", namespace, "delete", "p2pcluster", "--all", "--wait=false", check=False)
        delete_namespace(kube, namespace)
    node1.run(["rm", "-rf", leftover])


def test_pod_security_rejection_names_failed_create_and_clears_when_fixed(
    kube: Kubectl, broken: dict[str, str]
):
    ns = broken["psa"]
    cond = wait_stalled(kube, ns)
    assert cond["reason"] == "FailedCreate"
    assert "PodSecurity" in cond["message"] or "forbidden" in cond["message"], cond
    assert "damselfly-peer" in cond["message"], cond
    # The user's fix: a namespace that admits the peers. The status follows.
    kube("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged", "--overwrite")
    wait_ready(kube, ns, timeout=240)


def test_an_unbound_seed_claim_names_the_claim(kube: Kubectl, broken: dict[str, str]):
    cond = wait_stalled(kube, broken["pvc"])
    assert cond["reason"] == "PersistentVolumeClaimPending", cond
    assert "cache-damselfly-seed-peer-0" in cond["message"], cond


def test_an_image_that_cannot_be_pulled_names_the_image(kube: Kubectl, broken: dict[str, str]):
    cond = wait_stalled(kube, broken["image"])
    assert cond["reason"] in ("ImagePullBackOff", "ErrImagePull"), cond
    assert ABSENT_IMAGE in cond["message"], cond


def test_a_crash_looping_peer_gives_its_last_words(kube: Kubectl, broken: dict[str, str]):
    ns = broken["crash"]
    cond = wait_stalled(kube, ns, timeout=180)
    assert cond["reason"] == "CrashLoopBackOff", cond
    # the peer's one line from its termination log: the file, and who it runs as
    assert "store.db" in cond["message"], cond
    assert "uid 65532" in cond["message"], cond


def test_a_peer_that_cannot_be_scheduled_says_why(kube: Kubectl, broken: dict[str, str]):
    cond = wait_stalled(kube, broken["port"])
    assert cond["reason"] == "Unschedulable", cond
    assert "free ports" in cond["message"], cond
