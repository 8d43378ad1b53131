"""The reconciler reads pods, PVCs and Events only while a component is not available,
never fails a reconcile on them, and looks again while the cluster is not Ready."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from damselfly.kube import ApiError
from damselfly.operator.reconcile import NOT_READY_REQUEUE_SECONDS, Reconciler

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "p2pcluster.yaml"
NS = "ns"
NOW = 1_900_000_000.0  # 2030-03-17


def ready_status(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "DaemonSet":
        return {
            "observedGeneration": 1,
            "desiredNumberScheduled": 2,
            "numberReady": 2,
            "updatedNumberScheduled": 2,
        }
    if obj["kind"] in ("Deployment", "StatefulSet"):
        n = obj["spec"].get("replicas", 1)
        return {"observedGeneration": 1, "readyReplicas": n, "updatedReplicas": n}
    return {}


class FakeKube:
    """Just what Reconciler calls; children come back with the status given to them."""

    def __init__(self, cluster: dict[str, Any]) -> None:
        self.cluster = cluster
        self.statuses: dict[str, dict[str, Any]] = {}  # kind -> workload status
        self.pods: list[dict[str, Any]] = []
        self.claims: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.forbidden: set[str] = set()  # resource plurals that answer 403
        self.lists: list[tuple[str, str | None, str | None, bool]] = []
        self.patched: list[dict[str, Any]] = []
        self.posted: list[tuple[str, str, str]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.cluster)

    async def list(
        self,
        path: str,
        label_selector: str | None = None,
        *,
        field_selector: str | None = None,
        cached: bool = False,
    ) -> list[dict[str, Any]]:
        self.lists.append((path.rsplit("/", 1)[-1], label_selector, field_selector, cached))
        plural = path.rsplit("/", 1)[-1]
        if plural in self.forbidden:
            raise ApiError(403, "Forbidden", f"cannot list resource {plural!r}")
        if plural == "pods":
            return self.pods
        if plural == "persistentvolumeclaims":
            return self.claims
        if plural == "events":
            name = (field_selector or "").removeprefix("involvedObject.name=")
            return [e for e in self.events if e["involvedObject"]["name"] == name]
        return []

    async def apply(self, obj: dict[str, Any], field_manager: str, **_: Any) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["metadata"]["generation"] = 1
        out["status"] = self.statuses.get(obj["kind"], ready_status(obj))
        return out

    async def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any]:
        self.patched.append(status)
        self.cluster["status"] = status
        return self.cluster

    async def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, *_: Any
    ) -> None:
        self.posted.append((type_, reason, message))

    async def delete(self, path: str) -> None:
        return None


def cluster() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    raw["metadata"].update({"namespace": NS, "uid": "uid-c", "generation": 1})
    return raw


def reconciler(kube: FakeKube) -> tuple[Reconciler, list[tuple[Any, float]]]:
    later: list[tuple[Any, float]] = []
    r = Reconciler(
        kube,  # type: ignore[arg-type]
        now=lambda: "2030-03-17T17:46:40Z",
        later=lambda key, delay: later.append((key, delay)),
        clock=lambda: NOW,
    )
    return r, later


def conditions(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in kube.cluster["status"]["conditions"]}


async def test_an_available_cluster_reads_no_pods_and_is_not_requeued() -> None:
    kube = FakeKube(cluster())
    r, later = reconciler(kube)
    await r.reconcile(NS, "damselfly")
    assert conditions(kube)["Ready"]["status"] == "True"
    assert {plural for plural, *_ in kube.lists} == {"proxyrules", "leases"}
    assert later == []


async def test_a_peer_in_image_pull_backoff_stalls_the_cluster_and_posts_its_reason() -> None:
    kube = FakeKube(cluster())
    kube.statuses["DaemonSet"] = {
        "observedGeneration": 1,
        "desiredNumberScheduled": 2,
        "numberReady": 0,
        "updatedNumberScheduled": 2,
    }
    kube.pods = [
        {
            "metadata": {
                "name": "damselfly-peer-x7k2p",
                "creationTimestamp": "2030-03-17T17:00:00Z",
            },
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "cache-owner",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": 'Back-off pulling image "damselfly:dev"',
                            }
                        },
                    }
                ],
            },
        }
    ]
    r, later = reconciler(kube)
    await r.reconcile(NS, "damselfly")
    c = conditions(kube)
    assert (c["Stalled"]["status"], c["Stalled"]["reason"]) == ("True", "ImagePullBackOff")
    assert "pod damselfly-peer-x7k2p init container cache-owner" in c["Stalled"]["message"]
    assert c["PeersAvailable"]["reason"] == "ImagePullBackOff"
    assert ("Warning", "ImagePullBackOff", c["Stalled"]["message"]) in kube.posted
    pods_read = [x for x in kube.lists if x[0] == "pods"]
    assert pods_read == [
        ("pods", "damselfly.io/cluster=damselfly,damselfly.io/component=peer", None, True)
    ]
    assert ("events", None, "involvedObject.name=damselfly-peer", True) in kube.lists
    assert later == [((NS, "damselfly"), NOT_READY_REQUEUE_SECONDS)]
    # the same situation again writes nothing and posts nothing
    writes, posts = len(kube.patched), len(kube.posted)
    await r.reconcile(NS, "damselfly")
    assert (len(kube.patched), len(kube.posted)) == (writes, posts)


async def test_a_seed_with_an_unbound_claim_reads_the_claims_events() -> None:
    kube = FakeKube(cluster())
    kube.statuses["StatefulSet"] = {"observedGeneration": 1, "readyReplicas": 0}
    kube.claims = [
        {
            "metadata": {
                "name": "cache-damselfly-seed-peer-0",
                "uid": "uid-pvc",
                "creationTimestamp": "2030-03-17T17:46:30Z",
            },
            "status": {"phase": "Pending"},
        }
    ]
    kube.events = [
        {
            "involvedObject": {
                "kind": "PersistentVolumeClaim",
                "name": "cache-damselfly-seed-peer-0",
                "uid": "uid-pvc",
            },
            "reason": "FailedBinding",
            "message": "no persistent volumes available for this claim and no storage class is set",
            "type": "Normal",
            "lastTimestamp": "2030-03-17T17:46:35Z",
        }
    ]
    r, _ = reconciler(kube)
    await r.reconcile(NS, "damselfly")
    c = conditions(kube)
    assert c["Stalled"]["reason"] == "PersistentVolumeClaimPending"
    assert "no storage class is set" in c["SeedPeersAvailable"]["message"]
    selectors = {x[2] for x in kube.lists if x[0] == "events"}
    assert selectors == {
        "involvedObject.name=damselfly-seed-peer",
        "involvedObject.name=cache-damselfly-seed-peer-0",
    }


async def test_unreadable_pods_leave_the_plain_message_and_the_reconcile_goes_on() -> None:
    kube = FakeKube(cluster())
    kube.statuses["DaemonSet"] = {
        "observedGeneration": 1,
        "desiredNumberScheduled": 2,
        "updatedNumberScheduled": 2,
    }
    kube.forbidden = {"pods"}
    r, later = reconciler(kube)
    await r.reconcile(NS, "damselfly")
    c = conditions(kube)
    assert c["PeersAvailable"]["reason"] == "ReplicasNotReady"
    assert c["Reconciling"]["status"] == "True"
    assert later == [((NS, "damselfly"), NOT_READY_REQUEUE_SECONDS)]
