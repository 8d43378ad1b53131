"""Pure functions from a P2PCluster (and its ProxyRules) to child manifests.

No I/O here: the operator applies what these return, ``damselfly render``
prints it, and unit tests check it without a cluster.

GitOps rules kept here: children are named from the cluster's name alone; they
carry an ownerReference (so garbage collection removes them) and our own labels,
never the parent's labels or annotations (Argo CD and Flux track objects by
those, and would claim or prune our children). We also avoid
``app.kubernetes.io/instance``, the label Argo CD tracks by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from damselfly.api.labels import CLUSTER_LABEL, COMPONENT_LABEL
from damselfly.api.rules import RenderedRules as RenderedRules
from damselfly.api.rules import RuleVerdict as RuleVerdict
from damselfly.api.rules import render_rules as render_rules
from damselfly.api.v1alpha1 import API_VERSION, GROUP, P2PCluster, ProxyRule
from damselfly.config import ports
from damselfly.config.peer import (
    PeerConfig,
    ProxySection,
    RulesApiSection,
    RulesSection,
    SchedulerSection,
    StorageSection,
)
from damselfly.config.units import parse_duration, parse_size

FIELD_MANAGER = "damselfly-operator"
MANAGED_BY = "damselfly-operator"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"

CONFIG_DIR = "/etc/damselfly"
PEER_CONFIG_KEY = "peer.yaml"
RULES_KEY = "rules.yaml"
CACHE_DIR = "/var/cache/damselfly"
RUN_AS = 65532  # the image's non-root user


@dataclass(frozen=True)
class Names:
    """Deterministic child names: a re-render always finds the same objects."""

    cluster: str

    @property
    def scheduler(self) -> str:
        return f"{self.cluster}-scheduler"

    @property
    def seed_peer(self) -> str:
        return f"{self.cluster}-seed-peer"

    @property
    def seed_peer_config(self) -> str:
        return f"{self.cluster}-seed-peer-config"

    @property
    def peer(self) -> str:
        return f"{self.cluster}-peer"

    @property
    def peer_config(self) -> str:
        return f"{self.cluster}-peer-config"

    @property
    def rules(self) -> str:
        return f"{self.cluster}-rules"

    @property
    def proxy(self) -> str:
        return f"{self.cluster}-proxy"


def labels(cluster: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "damselfly",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        CLUSTER_LABEL: cluster,
        COMPONENT_LABEL: component,
    }


def selector(cluster: str, component: str) -> dict[str, str]:
    return {CLUSTER_LABEL: cluster, COMPONENT_LABEL: component}


def owner_reference(cluster: P2PCluster) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "P2PCluster",
        "name": cluster.name,
        "uid": cluster.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(cluster: P2PCluster, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cluster.namespace,
        "labels": labels(cluster.name, component),
    }
    if cluster.uid:  # `damselfly render` of a file has no uid: no ownerReference then
        meta["ownerReferences"] = [owner_reference(cluster)]
    return meta


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- rules ---------------------------------------------------------------------------


# --- configs -------------------------------------------------------------------------


def scheduler_address(cluster: P2PCluster) -> str:
    names = Names(cluster.name)
    return f"{names.scheduler}.{cluster.namespace}.svc:{cluster.spec.scheduler.port}"


def rules_section(cluster: P2PCluster) -> RulesSection:
    """ConfigMap: peers poll the mounted rules file. API: they watch ProxyRules (the
    mounted file still gives them the operator's last rendering at start-up)."""
    path = f"{CONFIG_DIR}/{RULES_KEY}"
    if cluster.spec.rule_source == "API":
        return RulesSection(
            source="api",
            file=path,
            api=RulesApiSection(cluster_name=cluster.name, namespace=cluster.namespace),
        )
    return RulesSection(file=path)


def peer_config(cluster: P2PCluster, seed: bool) -> PeerConfig:
    spec = cluster.spec
    cache = spec.peer.cache
    proxy_kwargs: dict[str, Any] = {"port": spec.proxy.port}
    if spec.proxy.default_filtered_query_params is not None:
        proxy_kwargs["default_filtered_query_params"] = spec.proxy.default_filtered_query_params
    if spec.proxy.allowed_client_cidrs is not None:
        proxy_kwargs["allowed_client_cidrs"] = spec.proxy.allowed_client_cidrs
    quota = spec.seed_peer.storage.size if seed else cache.quota
    return PeerConfig(
        seed=seed,
        proxy=ProxySection(**proxy_kwargs),
        storage=StorageSection(
            dir=CACHE_DIR,
            quota=parse_size(quota),
            high_watermark_percent=cache.high_watermark_percent,
            low_watermark_percent=cache.low_watermark_percent,
            task_ttl=parse_duration(cache.task_ttl),
        ),
        rules=rules_section(cluster),
        scheduler=SchedulerSection(addresses=[scheduler_address(cluster)]),
    )


def peer_config_yaml(cluster: P2PCluster, seed: bool) -> str:
    """The peer.yaml of the ConfigMap. The transfer tunables and storage.minFree stay at
    their defaults and out of the file, so a peer of the previous version (unknown keys
    refused) reads it."""
    dumped = peer_config(cluster, seed).model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude={"transfer": True, "storage": {"min_free"}},
    )
    return yaml.safe_dump(dumped, sort_keys=False)


def config_map(
    cluster: P2PCluster, name: str, component: str, data: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(cluster, name, component),
        "data": data,
    }


# --- pods ----------------------------------------------------------------------------


def _env() -> list[dict[str, Any]]:
    def field_ref(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        field_ref("DAMSELFLY_NODE_NAME", "spec.nodeName"),
        field_ref("DAMSELFLY_POD_NAME", "metadata.name"),
        field_ref("DAMSELFLY_POD_IP", "status.podIP"),
    ]


def _restricted(run_as: int = RUN_AS) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as,
        "runAsGroup": run_as,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _chown_cache(cluster: P2PCluster) -> dict[str, Any]:
    """hostPath directories are created root-owned, and volumes kubelet applies no fsGroup
    to stay so; the peer runs as the image's user."""
    return {
        "name": "cache-owner",
        "image": cluster.spec.image,
        "imagePullPolicy": cluster.spec.image_pull_policy,
        "command": ["chown", f"{RUN_AS}:{RUN_AS}", CACHE_DIR],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        },
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR}],
    }


def _proxy_port(cluster: P2PCluster, seed: bool) -> dict[str, Any]:
    """The node peers' proxy also listens on the node's address (hostPort): kube-proxy
    sends a pod's or the node's own NodePort traffic to any node's peer, even with
    externalTrafficPolicy Local, so only the hostPort keeps a node's clients on its
    peer. Seeds are not per-node caches and get none."""
    port: dict[str, Any] = {"name": "proxy", "containerPort": cluster.spec.proxy.port}
    if not seed and cluster.spec.proxy.host_port:
        port["hostPort"] = cluster.spec.proxy.host_port
    port["protocol"] = "TCP"
    return port


def _peer_container(cluster: P2PCluster, seed: bool) -> dict[str, Any]:
    spec = cluster.spec
    args = ["peer", "--config", f"{CONFIG_DIR}/{PEER_CONFIG_KEY}"]
    if seed:
        args.append("--seed")
    resources = spec.seed_peer.resources if seed else spec.peer.resources
    container: dict[str, Any] = {
        "name": "seed-peer" if seed else "peer",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": args,
        "env": _env(),
        "ports": [
            _proxy_port(cluster, seed),
            {"name": "upload", "containerPort": ports.UPLOAD, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports.PEER_METRICS, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
        },
        "securityContext": _restricted(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if resources is not None and resources.to_k8s():
        container["resources"] = resources.to_k8s()
    return container


def _config_volume(config_name: str, rules_name: str) -> dict[str, Any]:
    """peer.yaml and rules.yaml side by side; both follow ConfigMap updates (no subPath)."""
    return {
        "name": "config",
        "projected": {
            "sources": [
                {
                    "configMap": {
                        "name": config_name,
                        "items": [{"key": PEER_CONFIG_KEY, "path": PEER_CONFIG_KEY}],
                    }
                },
                {
                    "configMap": {
                        "name": rules_name,
                        "items": [{"key": RULES_KEY, "path": RULES_KEY}],
                    }
                },
            ]
        },
    }


def _pod_common(cluster: P2PCluster) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "serviceAccountName": Names(cluster.name).peer,
        "automountServiceAccountToken": cluster.spec.rule_source == "API",
        "enableServiceLinks": False,
    }
    if cluster.spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in cluster.spec.image_pull_secrets]
    return pod


def peer_daemonset(cluster: P2PCluster, config_hash: str) -> dict[str, Any]:
    names = Names(cluster.name)
    peer = cluster.spec.peer
    pod: dict[str, Any] = {
        **_pod_common(cluster),
        "initContainers": [_chown_cache(cluster)],
        "containers": [_peer_container(cluster, seed=False)],
        "volumes": [
            _config_volume(names.peer_config, names.rules),
            {
                "name": "cache",
                "hostPath": {"path": peer.cache.host_path, "type": "DirectoryOrCreate"},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if peer.node_selector:
        pod["nodeSelector"] = dict(peer.node_selector)
    if peer.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in peer.tolerations]
    if peer.priority_class_name:
        pod["priorityClassName"] = peer.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(cluster, names.peer, "peer"),
        "spec": {
            "selector": {"matchLabels": selector(cluster.name, "peer")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": labels(cluster.name, "peer"),
                    # a peer.yaml change rolls the peers; rules.yaml is reloaded in place
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
                },
                "spec": pod,
            },
        },
    }


def seed_statefulset(cluster: P2PCluster, config_hash: str) -> dict[str, Any]:
    names = Names(cluster.name)
    seed = cluster.spec.seed_peer
    volumes: list[dict[str, Any]] = [
        _config_volume(names.seed_peer_config, names.rules),
        {"name": "tmp", "emptyDir": {}},
    ]
    spec: dict[str, Any] = {
        "serviceName": names.seed_peer,
        "replicas": seed.replicas,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector(cluster.name, "seed-peer")},
    }
    # The ownership fix runs for a PVC too: kubelet applies fsGroup only on volumes
    # that support it (not on hostPath or local PVs, nor on some CSI drivers).
    pod: dict[str, Any] = {
        **_pod_common(cluster),
        "initContainers": [_chown_cache(cluster)],
        "containers": [_peer_container(cluster, seed=True)],
        "volumes": volumes,
    }
    if seed.storage.host_path:
        volumes.append(
            {
                "name": "cache",
                "hostPath": {"path": seed.storage.host_path, "type": "DirectoryOrCreate"},
            }
        )
    else:
        pod["securityContext"] = {"fsGroup": RUN_AS}
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(seed.storage.size)}},
        }
        if seed.storage.storage_class_name:
            claim["storageClassName"] = seed.storage.storage_class_name
        spec["volumeClaimTemplates"] = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "cache", "labels": labels(cluster.name, "seed-peer")},
                "spec": claim,
            }
        ]
    spec["template"] = {
        "metadata": {
            "labels": labels(cluster.name, "seed-peer"),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
        },
        "spec": pod,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(cluster, names.seed_peer, "seed-peer"),
        "spec": spec,
    }


def scheduler_deployment(cluster: P2PCluster) -> dict[str, Any]:
    names = Names(cluster.name)
    sched = cluster.spec.scheduler
    container: dict[str, Any] = {
        "name": "scheduler",
        "image": cluster.spec.image,
        "imagePullPolicy": cluster.spec.image_pull_policy,
        "args": [
            "scheduler",
            "--port",
            str(sched.port),
            "--metrics-port",
            str(ports.SCHEDULER_METRICS),
        ],
        "ports": [
            {"name": "api", "containerPort": sched.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports.SCHEDULER_METRICS, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "api"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "api"}, "periodSeconds": 5},
        "securityContext": _restricted(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if sched.resources is not None and sched.resources.to_k8s():
        container["resources"] = sched.resources.to_k8s()
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if cluster.spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in cluster.spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(cluster, names.scheduler, "scheduler"),
        "spec": {
            "replicas": sched.replicas,
            "selector": {"matchLabels": selector(cluster.name, "scheduler")},
            "template": {"metadata": {"labels": labels(cluster.name, "scheduler")}, "spec": pod},
        },
    }


def _port(name: str, port: int, target: str, node_port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}
    if node_port is not None:
        out["nodePort"] = node_port
    return out


def services(cluster: P2PCluster) -> list[dict[str, Any]]:
    names = Names(cluster.name)
    spec = cluster.spec
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, names.scheduler, "scheduler"),
            "spec": {
                "selector": selector(cluster.name, "scheduler"),
                "ports": [
                    _port("api", spec.scheduler.port, "api"),
                    _port("metrics", ports.SCHEDULER_METRICS, "metrics"),
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, names.seed_peer, "seed-peer"),
            "spec": {
                "clusterIP": "None",  # headless: each seed has a stable DNS name
                "publishNotReadyAddresses": True,
                "selector": selector(cluster.name, "seed-peer"),
                "ports": [
                    _port("upload", ports.UPLOAD, "upload"),
                    _port("metrics", ports.PEER_METRICS, "metrics"),
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(cluster, names.proxy, "peer"),
            "spec": {
                "type": "NodePort",
                # node:nodePort reaches the peer on that node, never another node's
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "selector": selector(cluster.name, "peer"),
                "ports": [_port("proxy", spec.proxy.port, "proxy", spec.proxy.node_port)],
            },
        },
    ]


def peer_rbac(cluster: P2PCluster) -> list[dict[str, Any]]:
    """Peers may read their rules from the API (ProxyRules, their rules ConfigMap) and
    report which rules they run (Leases)."""
    names = Names(cluster.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(cluster, names.peer, "peer"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(cluster, names.peer, "peer"),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["proxyrules"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [names.rules],
                    "verbs": ["get", "list", "watch"],
                },
                # each peer reports the rules hash it runs in a Lease of its own; create
                # cannot be limited by name, and a peer can at worst misreport a peer
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "patch", "delete"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(cluster, names.peer, "peer"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.peer,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": names.peer, "namespace": cluster.namespace}
            ],
        },
    ]


@dataclass
class Rendered:
    """Every child of one P2PCluster, in the order they are applied."""

    objects: list[dict[str, Any]]
    rules: RenderedRules
    peer_config_hash: str


def render_cluster(cluster: P2PCluster, rules: Iterable[ProxyRule]) -> Rendered:
    """All children: config first, so workloads never start against missing config."""
    names = Names(cluster.name)
    rendered_rules = render_rules(cluster.name, rules)
    peer_yaml = peer_config_yaml(cluster, seed=False)
    seed_yaml = peer_config_yaml(cluster, seed=True)
    peer_hash = content_hash(peer_yaml)
    objects: list[dict[str, Any]] = [
        config_map(cluster, names.peer_config, "peer", {PEER_CONFIG_KEY: peer_yaml}),
        config_map(cluster, names.seed_peer_config, "seed-peer", {PEER_CONFIG_KEY: seed_yaml}),
        config_map(cluster, names.rules, "rules", {RULES_KEY: rendered_rules.yaml()}),
        *peer_rbac(cluster),
        *services(cluster),
        scheduler_deployment(cluster),
        seed_statefulset(cluster, content_hash(seed_yaml)),
        peer_daemonset(cluster, peer_hash),
    ]
    return Rendered(objects, rendered_rules, peer_hash)
