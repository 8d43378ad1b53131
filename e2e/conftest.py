"""Fixtures of the e2e suite: a live cluster, Damselfly installed as the README says.

Without a cluster (no cluster file, see e2e/kube.py) the tests are skipped with one
reason; ``DAMSELFLY_REQUIRE_E2E=1`` (set on CI) makes that a failure.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.kube import REPO, ClusterInfo, Kubectl, Node, condition, wait_for

# the repository's process fixtures and LFS rig, shared with tests/
from tests.conftest import processes, pytest_runtest_makereport  # noqa: F401
from tests.lfs_rig import lfs_server, make_lfs_repo  # noqa: F401

OPERATOR_NAMESPACE = "damselfly-system"
CLIENT_IMAGE = os.environ.get("DAMSELFLY_E2E_CLIENT_IMAGE", "localhost/damselfly-e2e/client:1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> ClusterInfo:
    info = ClusterInfo.load()
    if info is None:
        reason = "no e2e cluster: run `e2e/cluster up` (or e2e/kind.sh) first"
        if os.environ.get("DAMSELFLY_REQUIRE_E2E"):
            pytest.fail(reason)
        pytest.skip(reason)
    return info


@pytest.fixture(scope="session")
def kube(cluster: ClusterInfo) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(autouse=True)
def cluster_report_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed e2e test prints what a user would look at: pods, recent Warning events,
    Damselfly's objects and the operator's last log lines."""
    yield
    failed = getattr(request.node, "rep_call", None)
    info = ClusterInfo.load()
    if failed is None or not failed.failed or info is None:
        return
    kube = Kubectl(info)
    views = [
        ("pods", ["get", "pods", "-A", "-o", "wide"]),
        ("damselfly", ["get", "damselfly", "-A", "-o", "wide"]),
        ("warnings", ["get", "events", "-A", "--field-selector=type=Warning"]),
        (
            "operator log",
            ["-n", OPERATOR_NAMESPACE, "logs", "deploy/damselfly-operator", "--tail=40"],
        ),
    ]
    for title, args in views:
        done = kube.run(*args, check=False, timeout=30)
        print(f"\n--- {title}\n{done.stdout[-6000:]}{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def operator(kube: Kubectl) -> None:
    """deploy/ applied the README's way; the operator Deployment rolled out."""
    kube("apply", "--server-side", "-k", str(REPO / "deploy"), timeout=180)
    rollout_status(kube, OPERATOR_NAMESPACE, "deploy/damselfly-operator")


def rollout_status(kube: Kubectl, namespace: str, workload: str, timeout: int = 180) -> None:
    kube(
        "-n",
        namespace,
        "rollout",
        "status",
        workload,
        f"--timeout={timeout}s",
        timeout=timeout + 20,
    )


def make_namespace(kube: Kubectl, prefix: str, level: str = "privileged") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.apply(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Namespace
            metadata:
              name: {name}
              labels:
                pod-security.kubernetes.io/enforce: {level}
            """
        )
    )
    return name


def delete_namespace(kube: Kubectl, name: str) -> None:
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def has_default_storage_class(kube: Kubectl) -> bool:
    classes = kube.json("storageclass")["items"]
    return any(
        c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
        for c in classes
    )


def seed_volume(kube: Kubectl, namespace: str, cluster_name: str = "damselfly") -> str | None:
    """A cluster without a provisioner gets a hostPath PV for the seed's claim, as an
    admin would make one (root-owned directory: kubelet applies no fsGroup to it).
    Returns the PV's name, to delete afterwards."""
    if has_default_storage_class(kube):
        return None
    pv = f"{namespace}-seed-0"
    kube.apply(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: PersistentVolume
            metadata: {{name: {pv}}}
            spec:
              capacity: {{storage: 20Gi}}
              accessModes: [ReadWriteOnce]
              persistentVolumeReclaimPolicy: Delete
              claimRef: {{namespace: {namespace}, name: cache-{cluster_name}-seed-peer-0}}
              hostPath: {{path: /var/cache/damselfly-seed/{namespace}, type: DirectoryOrCreate}}
            """
        )
    )
    return pv


def wait_ready(kube: Kubectl, namespace: str, name: str = "damselfly", timeout: int = 300) -> None:
    done = kube.run(
        "-n",
        namespace,
        "wait",
        "--for=condition=Ready",
        f"p2pcluster/{name}",
        f"--timeout={timeout}s",
        timeout=timeout + 30,
        check=False,
    )
    if done.returncode != 0:
        status = kube("-n", namespace, "get", "p2pcluster", name, "-o", "jsonpath={.status}")
        pods = kube("-n", namespace, "get", "pods", "-o", "wide")
        raise AssertionError(
            f"P2PCluster {namespace}/{name} not Ready:\n{done.stderr}\n{status}\n{pods}"
        )


@pytest.fixture(scope="module")
def damselfly(kube: Kubectl, operator: None) -> Iterator[str]:
    """examples/ applied in a namespace of this module's own; yields the namespace."""
    namespace = make_namespace(kube, "e2e")
    pv = seed_volume(kube, namespace)
    kube("apply", "-n", namespace, "-f", str(REPO / "examples"))
    yield namespace
    kube.run("-n", namespace, "delete", "p2pcluster", "--all", "--wait=false", check=False)
    delete_namespace(kube, namespace)
    if pv:
        kube.run("delete", "pv", pv, "--wait=false", check=False)


def client_pod(kube: Kubectl, namespace: str, node: Node) -> str:
    """A pod pinned to ``node`` that waits for `kubectl exec`; HOST_IP is its node's IP."""
    name = f"client-{node.name}"
    kube.apply(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Pod
            metadata: {{name: {name}}}
            spec:
              nodeName: {node.name}
              terminationGracePeriodSeconds: 1
              containers:
                - name: client
                  image: {CLIENT_IMAGE}
                  imagePullPolicy: IfNotPresent
                  command: [sleep, infinity]
                  env: [{{name: HOST_IP, valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}}}]
            """
        ),
        namespace,
    )
    return name


def wait_pods_ready(kube: Kubectl, namespace: str, names: list[str], timeout: int = 120) -> None:
    def ready() -> bool:
        for name in names:
            pod = kube.json("pod", "-n", namespace, name)
            cond = condition(pod, "Ready")
            if not cond or cond["status"] != "True":
                return False
        return True

    wait_for(ready, timeout, f"pods {names} Ready in {namespace}")


def random_file(path: Path, size: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()
