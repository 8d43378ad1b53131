"""``damselfly operator``: kopf watches, one work queue, level-triggered reconciles.

Every kopf handler here is an event handler that only queues a key. Event
handlers keep no state on the objects: kopf's change-detecting handlers would
store their progress and last-handled spec in annotations and status, writes a
GitOps tool would see as drift. Handlers return nothing, so kopf never writes
results into a status that a structural schema would prune anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

import kopf

from damselfly.api.labels import CLUSTER_LABEL, COMPONENT_LABEL
from damselfly.api.report import REPORT_COMPONENT, RULES_HASH_LABEL
from damselfly.api.v1alpha1 import API_VERSION, GROUP, VERSION
from damselfly.kube import Kube, load_credentials
from damselfly.operator.reconcile import Key, Reconciler, WorkQueue, work
from damselfly.operator.render import MANAGED_BY

log = logging.getLogger("damselfly.operator")
RESYNC_SECONDS = 300.0


def build_registry(queue: WorkQueue) -> kopf.OperatorRegistry:
    """The kopf handlers: each turns a watch event into a queued cluster key."""
    registry = kopf.OperatorRegistry()
    rule_clusters: dict[str, Key] = {}  # ProxyRule uid -> the cluster it pointed at

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The official client's loaders: in-cluster token, else kubeconfig."""
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.on.event(GROUP, VERSION, "p2pclusters", registry=registry)
    def cluster_event(namespace: str | None, name: str, **_: Any) -> None:
        queue.add((namespace or "default", name))

    @kopf.on.event(GROUP, VERSION, "proxyrules", registry=registry)
    def rule_event(body: kopf.Body, namespace: str | None, uid: str, type: str, **_: Any) -> None:
        ref = str(body.get("spec", {}).get("clusterRef", {}).get("name", ""))
        key = (namespace or "default", ref)
        previous = rule_clusters.get(uid)
        if previous is not None and previous != key:
            queue.add(previous)  # the rule moved: its old cluster loses it
        if type == "DELETED":
            rule_clusters.pop(uid, None)
        else:
            rule_clusters[uid] = key
        if ref:
            queue.add(key)

    lease_hashes: dict[str, str] = {}  # Lease uid -> the rules hash it last reported

    @kopf.on.event(
        "coordination.k8s.io",
        "v1",
        "leases",
        labels={COMPONENT_LABEL: REPORT_COMPONENT},
        registry=registry,
    )
    def report_event(
        labels: kopf.Labels, namespace: str | None, uid: str, type: str, **_: Any
    ) -> None:
        """A peer reported other rules, or came or went; renewals alone change nothing."""
        rules_hash = str(labels.get(RULES_HASH_LABEL, ""))
        if type == "DELETED":
            changed = lease_hashes.pop(uid, None) is not None
        else:
            changed = lease_hashes.get(uid) != rules_hash
            lease_hashes[uid] = rules_hash
        cluster = labels.get(CLUSTER_LABEL)
        if changed and cluster and namespace:
            queue.add((namespace, str(cluster)))

    def child_event(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        cluster = labels.get(CLUSTER_LABEL)
        if cluster and namespace:
            queue.add((namespace, cluster))

    for plural in ("deployments", "statefulsets", "daemonsets"):
        kopf.on.event(
            "apps",
            "v1",
            plural,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
            id=f"child-{plural}",
        )(child_event)
    return registry


async def resync(kube: Kube, queue: WorkQueue, namespaces: list[str] | None) -> None:
    """Queue every cluster now and then: drift in children is repaired without events."""
    paths = (
        [f"/apis/{API_VERSION}/namespaces/{ns}/p2pclusters" for ns in namespaces]
        if namespaces
        else [f"/apis/{API_VERSION}/p2pclusters"]
    )
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        for path in paths:
            try:
                for item in await kube.list(path):
                    queue.add((item["metadata"]["namespace"], item["metadata"]["name"]))
            except Exception as exc:
                log.warning("resync list %s failed: %s", path, exc)


async def operate(args: argparse.Namespace) -> None:
    # kopf logs every handler run at INFO; ours only queue a key, so that is noise
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    queue = WorkQueue()
    kube = Kube(load_credentials())
    registry = build_registry(queue)
    namespaces: list[str] | None = args.namespace
    reconciler = Reconciler(
        kube, later=queue.add_after, not_ready_requeue=float(args.not_ready_requeue)
    )
    tasks = [
        asyncio.create_task(work(reconciler, queue), name="reconcile"),
        asyncio.create_task(resync(kube, queue, namespaces), name="resync"),
    ]
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
        )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await kube.close()


def run(args: argparse.Namespace) -> int:
    asyncio.run(operate(args))
    return 0
