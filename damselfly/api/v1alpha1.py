"""P2PCluster and ProxyRule, group damselfly.io, version v1alpha1.

These models are the single source of truth: ``damselfly crds`` turns them into
the CRD OpenAPI schemas, and the operator and ``damselfly render`` validate CRs
with them. Rules the API server checks with CEL (``x-kubernetes-validations``)
are mirrored by pydantic validators, so ``render`` rejects what the server would.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from damselfly.api.ruleset import RuleFields, narrowed
from damselfly.config import ports

GROUP = "damselfly.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes' resource.Quantity syntax, as controller-gen writes it into CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A byte size the peer's parse_size understands: 512Mi, 100Gi, 2T, 1048576.
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
# Children are named "<cluster>-seed-peer" etc.; Services need DNS-1035 labels.
CLUSTER_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)(:[0-9]{1,5})?$"
QUERY_KEY_PATTERN = r"^[^\s&=]+$"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def _matches(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _int_or_string(pattern: str, description: str) -> WithJsonSchema:
    """The schema Kubernetes uses for values like ``cpu: 1`` or ``cpu: 500m``."""
    return WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": pattern,
            "x-kubernetes-int-or-string": True,
            "description": description,
        }
    )


Quantity = Annotated[
    int | str,
    _matches(QUANTITY_PATTERN, "a Kubernetes quantity (examples: 500m, 2, 1Gi)"),
    _int_or_string(QUANTITY_PATTERN, "A Kubernetes quantity: 500m, 2, 1Gi."),
]
Size = Annotated[
    int | str,
    _matches(SIZE_PATTERN, "a size (examples: 512Mi, 100Gi, 2T)"),
    _int_or_string(SIZE_PATTERN, "Bytes, or a size such as 512Mi, 100Gi, 2T."),
]
Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, description="A duration such as 90s, 30m, 24h, 7d."),
]


def section(cls: type[BaseModel], description: str) -> Any:
    """A nested object that is optional and defaults to its fields' defaults.

    The default is written out in full (not ``{}``): the API server validates a
    default against the CEL rules as it stands, before nested defaults apply.
    """
    default = cls().model_dump(mode="json", by_alias=True, exclude_none=True)
    return Field(
        default_factory=cls, description=description, json_schema_extra={"default": default}
    )


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
    )


class ResourceRequirements(_Model):
    """CPU and memory for a container, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources.")

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


class Toleration(_Model):
    """A Pod toleration, so peers run on tainted nodes (GPU pools, CI runners)."""

    key: str | None = Field(default=None, description="Taint key; empty with Exists = all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty = all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class LocalObjectReference(_Model):
    """A reference to an object in the same namespace, by name."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


class SchedulerSpec(_Model):
    """The scheduler Deployment: picks parents for peers and triggers seed peers."""

    replicas: int = Field(default=1, ge=1, le=9, description="Scheduler replicas.")
    port: int = Field(default=ports.SCHEDULER, ge=1, le=65535, description="Scheduler API port.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the scheduler container."
    )


class SeedStorage(_Model):
    """Where a seed peer keeps its cache: a PersistentVolumeClaim, or a hostPath."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.hostPath) && has(self.storageClassName))",
                    "set either hostPath or storageClassName, not both",
                )
            ]
        }
    )

    size: Size = Field(default="20Gi", description="PVC size; also the seed's cache quota.")
    storage_class_name: str | None = Field(
        default=None, min_length=1, description="StorageClass of the PVC; empty = default class."
    )
    host_path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="Use this node directory instead of a PVC (absolute path).",
    )

    @model_validator(mode="after")
    def _one_backend(self) -> SeedStorage:
        if self.host_path is not None and self.storage_class_name is not None:
            raise ValueError("set either hostPath or storageClassName, not both")
        return self


class SeedPeerSpec(_Model):
    """Seed peers fetch from origins first and keep objects longest."""

    replicas: int = Field(default=1, ge=0, le=32, description="Seed peers; 0 = none.")
    storage: SeedStorage = section(SeedStorage, "Cache storage of each seed peer.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the seed peer container."
    )


class CacheSpec(_Model):
    """The peer cache on each node: a hostPath, so it survives pod restarts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.lowWatermarkPercent < self.highWatermarkPercent",
                    "lowWatermarkPercent must be below highWatermarkPercent",
                )
            ]
        }
    )

    host_path: str = Field(
        default="/var/cache/damselfly",
        pattern=r"^/",
        description="Node directory of the cache (absolute path).",
    )
    quota: Size = Field(default="50Gi", description="Bytes the cache may hold on each node.")
    high_watermark_percent: int = Field(
        default=90, ge=1, le=100, description="Garbage collection starts above this % of quota."
    )
    low_watermark_percent: int = Field(
        default=70, ge=0, le=99, description="Garbage collection stops below this % of quota."
    )
    task_ttl: Duration = Field(
        default="168h", alias="taskTTL", description="Objects unused this long are removed."
    )

    @model_validator(mode="after")
    def _low_below_high(self) -> CacheSpec:
        if self.low_watermark_percent >= self.high_watermark_percent:
            raise ValueError("lowWatermarkPercent must be below highWatermarkPercent")
        return self


class PeerSpec(_Model):
    """The peer DaemonSet: a caching proxy on every selected node."""

    node_selector: dict[str, str] | None = Field(
        default=None, description="Run peers only on nodes with these labels."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=64, description="Taints the peers tolerate."
    )
    priority_class_name: str | None = Field(
        default=None, min_length=1, description="PriorityClass of the peer pods."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the peer container."
    )
    cache: CacheSpec = section(CacheSpec, "The node-local cache.")


PEER_PORTS_TAKEN = (
    f"port {ports.UPLOAD} (upload) and {ports.PEER_METRICS} (metrics) are taken by the peer"
)


class ProxySpec(_Model):
    """How clients reach the peer's HTTP proxy."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.port != {ports.UPLOAD} && self.port != {ports.PEER_METRICS}",
                    PEER_PORTS_TAKEN,
                    ".port",
                )
            ]
        }
    )

    port: int = Field(default=ports.PROXY, ge=1, le=65535, description="Proxy port in the pod.")
    host_port: int = Field(
        default=ports.PROXY,
        ge=0,
        le=65535,
        description="Port of the proxy on each node's own address: a client on a node "
        "(a pod, or the node itself) reaches that node's peer at <node>:hostPort. "
        "0 = no hostPort (clients then use the NodePort, which kube-proxy may send "
        "to another node's peer).",
    )
    node_port: int = Field(
        default=30950, ge=30000, le=32767, description="NodePort of the proxy on every node."
    )
    default_filtered_query_params: list[Annotated[str, Field(pattern=QUERY_KEY_PATTERN)]] | None = (
        Field(
            default=None,
            max_length=256,
            description="Query keys left out of cache keys for every rule; "
            "empty = the built-in list (S3, GCS, OSS, OBS, COS, CloudFront, GitHub...).",
        )
    )
    allowed_client_cidrs: (
        list[
            Annotated[
                str,
                Field(
                    json_schema_extra={
                        "x-kubernetes-validations": [cel("isCIDR(self)", "must be a CIDR")]
                    },
                    max_length=64,
                ),
            ]
        ]
        | None
    ) = Field(
        default=None,
        alias="allowedClientCIDRs",
        max_length=64,
        description="Clients allowed to use the proxy; empty = any.",
    )

    @model_validator(mode="after")
    def _port_free(self) -> ProxySpec:
        if self.port in (ports.UPLOAD, ports.PEER_METRICS):
            raise ValueError(PEER_PORTS_TAKEN)
        return self


class P2PClusterSpec(_Model):
    """A peer-to-peer cache: scheduler, seed peers, and a peer on every node."""

    image: str = Field(min_length=1, description="The damselfly image every component runs.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of the image."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=16, description="Secrets for pulling the image."
    )
    scheduler: SchedulerSpec = section(SchedulerSpec, "The scheduler.")
    seed_peer: SeedPeerSpec = section(SeedPeerSpec, "The seed peers.")
    peer: PeerSpec = section(PeerSpec, "The peers, one per node.")
    proxy: ProxySpec = section(ProxySpec, "The proxy the peers serve.")
    rule_source: Literal["ConfigMap", "API"] = Field(
        default="ConfigMap",
        description="ConfigMap: peers read the rules ConfigMap the operator writes. "
        "API: peers may also read ProxyRules from the API (they get a token).",
    )
    suspend: bool = Field(
        default=False, description="Pause reconciliation; children stay as they are."
    )


class Condition(_Model):
    """A status condition in the metav1.Condition shape."""

    type: str = Field(min_length=1, max_length=316, description="Condition type, CamelCase.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition is about."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed.",
    )
    reason: str = Field(max_length=1024, pattern=REASON_PATTERN, description="Why, in CamelCase.")
    message: str = Field(default="", max_length=32768, description="Details for humans.")


CONDITIONS_SCHEMA_EXTRA: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ReplicaCounts(_Model):
    """Replica counts taken from a child workload's status."""

    desired: int = Field(default=0, ge=0, description="Pods wanted.")
    ready: int = Field(default=0, ge=0, description="Pods ready.")
    updated: int = Field(default=0, ge=0, description="Pods running the current spec.")


class P2PClusterStatus(_Model):
    """What the operator observed; written only by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The generation the status describes."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Reconciling, Stalled, SchedulerAvailable, SeedPeersAvailable, "
        "PeersAvailable.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    scheduler: ReplicaCounts | None = Field(default=None, description="Scheduler pods.")
    seed_peers: ReplicaCounts | None = Field(default=None, description="Seed peer pods.")
    peers: ReplicaCounts | None = Field(default=None, description="Peer pods.")
    rules: int | None = Field(default=None, description="Rules in the rules ConfigMap.")
    rules_hash: str | None = Field(default=None, description="Digest of the rules peers get.")
    rules_propagation: str | None = Field(
        default=None,
        description='Peers running rulesHash / live peers reporting their rules, as "7/8" '
        "(peers report in API rule-source mode).",
    )
    node_port: int | None = Field(default=None, description="The proxy's NodePort.")


class ClusterRef(_Model):
    """The P2PCluster, in the same namespace, whose peers get this rule."""

    name: str = Field(
        min_length=1, max_length=40, pattern=CLUSTER_NAME_PATTERN, description="Its name."
    )


class _RuleTarget(_Model):
    """Which cluster a ProxyRule belongs to, and where it stands among the others."""

    cluster_ref: ClusterRef = Field(description="The P2PCluster this rule belongs to.")
    priority: int = Field(
        default=100,
        ge=0,
        le=10000,
        description="Rules are tried in ascending priority, then by name; first match wins.",
    )


# The rule fields are ruleset.RuleFields; ProxyRuleSpec adds only what the API
# server's schema states (lengths, patterns). The regex is not checked for RE2 here
# (ruleset.regex_error): the operator must still read such a rule to report why.
class ProxyRuleSpec(RuleFields, _RuleTarget):
    """Which URLs the peers fetch through the swarm, and how (Dragonfly's field names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    regex: str = narrowed("regex", max_length=2048)
    redirect: str | None = narrowed("redirect", max_length=261, pattern=HOST_PORT_PATTERN)
    filtered_query_params: list[Annotated[str, Field(pattern=QUERY_KEY_PATTERN)]] | None = narrowed(
        "filtered_query_params", max_length=256
    )
    disabled: bool = Field(default=False, description="Keep the rule but do not apply it.")


class ProxyRuleStatus(_Model):
    """Whether the rule was accepted, is in its cluster's rules, and the peers run it."""

    observed_generation: int | None = Field(default=None, description="Generation described.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Accepted, Applied, Propagated.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    propagation: str | None = Field(
        default=None,
        description='Peers of the cluster running the current rule set / live peers, as "7/8".',
    )


class _Resource(BaseModel):
    """A whole custom resource as read from the API or a file."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)

    api_version: Literal["damselfly.io/v1alpha1"] = "damselfly.io/v1alpha1"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation") or 0)

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))


class P2PCluster(_Resource):
    kind: Literal["P2PCluster"] = "P2PCluster"
    spec: P2PClusterSpec
    status: P2PClusterStatus | None = None

    @model_validator(mode="after")
    def _name_fits_children(self) -> P2PCluster:
        if self.name and not re.match(CLUSTER_NAME_PATTERN, self.name):
            raise ValueError(CLUSTER_NAME_MESSAGE)
        return self


class ProxyRule(_Resource):
    kind: Literal["ProxyRule"] = "ProxyRule"
    spec: Annotated[ProxyRuleSpec, Field()]
    status: ProxyRuleStatus | None = None


CLUSTER_NAME_MESSAGE = (
    "a P2PCluster name must be a DNS label of at most 40 characters starting with a letter "
    "(children are named <name>-seed-peer and so on)"
)
CLUSTER_ROOT_VALIDATIONS = [
    cel(f"self.metadata.name.matches('{CLUSTER_NAME_PATTERN}')", CLUSTER_NAME_MESSAGE)
]
__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "CacheSpec",
    "Condition",
    "P2PCluster",
    "P2PClusterSpec",
    "P2PClusterStatus",
    "ProxyRule",
    "ProxyRuleSpec",
    "ProxyRuleStatus",
]
