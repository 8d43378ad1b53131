"""The peer's YAML config, validated by pydantic.

Keys are camelCase, like the custom resources they are rendered from. An error
names the bad key and value (see ``load_config``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from damselfly.api.ruleset import DEFAULT_FILTERED_QUERY_PARAMS, Rule
from damselfly.config import ports
from damselfly.config.load import load_model, parse_model
from damselfly.config.units import parse_duration, parse_size

Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class BasicAuth(_Section):
    username: str = Field(min_length=1)
    password: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("basicAuth needs exactly one of password or passwordFile")
        return self

    def resolved_password(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        return Path(self.password_file).read_text().strip()


class ProxySection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=ports.PROXY, ge=0, le=65535)
    connect_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [443],
        description="Ports CONNECT may reach; the proxy is not an open relay.",
    )
    allow_link_local: bool = Field(
        default=False,
        description="Allow 169.254.0.0/16, fe80::/10 and fd00:ec2::254 (cloud metadata).",
    )
    allowed_client_cidrs: list[str] = Field(
        default_factory=list, description="Clients allowed to use the proxy; empty = any."
    )
    basic_auth: BasicAuth | None = None
    default_filtered_query_params: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FILTERED_QUERY_PARAMS)
    )
    upstream_ca_file: str | None = Field(
        default=None, description="Extra CA bundle for https origins (default: system CAs)."
    )
    upstream_connect_timeout: Seconds = 10.0
    upstream_read_timeout: Seconds = 60.0
    request_head_timeout: Seconds = Field(
        default=60.0,
        description="A client connection that brings no complete request head within this "
        "long (idle keep-alive included) is closed, so idle or slow clients cannot hold "
        "sockets forever.",
    )

    @field_validator("allowed_client_cidrs")
    @classmethod
    def _cidrs_parse(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a CIDR: {exc}") from exc
        return values


class ListenSection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)


# A seed serves each task to at most this many children at once by default: the
# rest fetch from those children (measured with bench/p2p_fanout.py: 3.2x -> ~1.4x
# the fluid bound for 8 peers).
SEED_SLOTS_PER_TASK = 2
PEER_SLOTS_PER_TASK = 4


class UploadSection(ListenSection):
    port: int = Field(default=ports.UPLOAD, ge=0, le=65535)
    slots: int = Field(default=32, ge=1, description="Pieces served to other peers at once.")
    slots_per_task: int | None = Field(
        default=None,
        ge=1,
        description="Pieces of one task served at once, and children of that task the "
        "scheduler gives this peer; default 2 on seeds, 4 on other peers. A parent serving "
        "every child at once gives each a sliver of its upload; capped, children go to other "
        "holders and trade among themselves.",
    )

    def task_slots(self, seed: bool) -> int:
        """Pieces of one task served at once: slotsPerTask, or the default for the role."""
        return self.slots_per_task or (SEED_SLOTS_PER_TASK if seed else PEER_SLOTS_PER_TASK)


class StorageSection(_Section):
    dir: str = "/var/cache/damselfly"
    quota: Size = Field(default=100 * 2**30, description="Bytes the store may hold.")
    min_free: Size = Field(
        default=2**30,
        description="Bytes to leave free on the store's filesystem, whatever the quota: past "
        "it the peer evicts, then forwards without storing, before the disk is full.",
    )
    high_watermark_percent: int = Field(default=90, ge=1, le=100)
    low_watermark_percent: int = Field(default=70, ge=0, le=99)
    task_ttl: Seconds = Field(default=7 * 86400, description="Unused tasks older than this go.")
    gc_interval: Seconds = 60.0

    @model_validator(mode="after")
    def _low_below_high(self) -> StorageSection:
        if self.low_watermark_percent >= self.high_watermark_percent:
            raise ValueError(
                f"lowWatermarkPercent ({self.low_watermark_percent}) must be below "
                f"highWatermarkPercent ({self.high_watermark_percent})"
            )
        return self


class RulesApiSection(_Section):
    """Where a peer in API-watch mode reads ProxyRules, and how it reports its rules."""

    cluster_name: str = Field(min_length=1, description="ProxyRules with this clusterRef.name.")
    namespace: str | None = Field(
        default=None, description="Namespace of the ProxyRules; default: the pod's own."
    )
    kubeconfig: str | None = Field(
        default=None, description="A kubeconfig file; default: the in-cluster service account."
    )
    report: bool = Field(
        default=True, description="Write the running rules hash into a Lease for the operator."
    )
    lease_duration: Seconds = Field(
        default=60.0, ge=3, description="A report not renewed for this long counts as gone."
    )
    watch_timeout: Seconds = Field(
        default=300.0, ge=1, description="Server-side length of one watch request."
    )
    max_backoff: Seconds = Field(default=30.0, ge=0.1, description="Longest wait between retries.")


class RulesSection(_Section):
    source: Literal["file", "api"] = Field(
        default="file",
        description="file: poll `file` (a mounted ConfigMap works); "
        "api: watch ProxyRules through the Kubernetes API (`file` is then only the start-up set).",
    )
    file: str | None = Field(
        default=None, description="A rules YAML file (or a mounted ConfigMap dir) to watch."
    )
    rules: list[Rule] = Field(default_factory=list, description="Rules used when no file.")
    watch_interval: Seconds = 1.0
    api: RulesApiSection | None = None

    @model_validator(mode="after")
    def _api_needs_its_section(self) -> RulesSection:
        if self.source == "api" and self.api is None:
            raise ValueError("rules.source api needs rules.api (at least clusterName)")
        return self


class SchedulerSection(_Section):
    addresses: list[str] = Field(
        default_factory=list, description="host:port of schedulers; empty: no P2P, origin only."
    )
    timeout: Seconds = Field(default=2.0, description="Per call; a slow scheduler means origin.")
    announce_interval: Seconds = 5.0
    piece_timeout: Seconds = Field(default=30.0, description="One piece from one parent.")
    stall_timeout: Seconds = Field(
        default=10.0, description="No parent news for this long: fetch the rest from the origin."
    )


class TransferSection(_Section):
    """How a download fetches its pieces. The defaults are the measured ones
    (bench/p2p_fanout.py sets these with --peer-set transfer.NAME=VALUE)."""

    origin_workers: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Pieces fetched from the origin at once without a swarm: enough "
        "range GETs to fill the link, few enough not to look like a flood to the origin.",
    )
    swarm_workers: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Pieces fetched at once in a swarm download, over all parents (and the "
        "origin once stalled): several parents must be kept busy at the same time.",
    )
    piece_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Tries of one piece from the origin before the download fails: a "
        "blip is retried, a broken origin fails the clients quickly.",
    )
    reschedule_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="New parents asked for when every parent is gone; then the origin: "
        "a swarm that keeps failing must not hold the download up.",
    )
    parent_refresh: Seconds = Field(
        default=1.0,
        description="While no parent holds a wanted piece, ask for more parents this "
        "often: peers that joined later may hold it.",
    )
    requests_per_parent: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Pieces requested from one parent at once: more spreads a child over "
        "fewer parents.",
    )
    requests_per_seed: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Pieces requested from one seed at once: one keeps the seed from being "
        "the only source of every piece while the children could trade among themselves.",
    )
    piece_window: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="Rarest-first looks this many wanted pieces ahead of the reading "
        "position, per parent: wider spreads pieces, narrower keeps a reader fed.",
    )
    busy_backoff: Seconds = Field(
        default=0.5,
        description="A parent that answered 503 (no upload slot free) is left alone this long.",
    )


class PeerConfig(_Section):
    host_id: str | None = Field(default=None, description="Defaults to the hostname.")
    advertise_ip: str | None = Field(default=None, description="Address other peers dial.")
    seed: bool = False
    proxy: ProxySection = Field(default_factory=ProxySection)
    upload: UploadSection = Field(default_factory=UploadSection)
    metrics: ListenSection = Field(default_factory=lambda: ListenSection(port=ports.PEER_METRICS))
    storage: StorageSection = Field(default_factory=StorageSection)
    rules: RulesSection = Field(default_factory=RulesSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    transfer: TransferSection = Field(default_factory=TransferSection)


def parse_config(data: Any, source: str = "config") -> PeerConfig:
    return parse_model(PeerConfig, data, source)


def load_config(path: str | None) -> PeerConfig:
    """The config from a YAML file, or the defaults when ``path`` is None."""
    return load_model(PeerConfig, path)
