"""Prometheus metrics of one peer, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PeerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "damselfly_peer_requests",
            "Proxy requests by route: cache, pass-through, tunnel, refused",
            ["route"],
            registry=r,
        )
        self.served_bytes = Counter(
            "damselfly_peer_served_bytes",
            "Bytes sent to clients from the cache, by where they first came from",
            ["source"],
            registry=r,
        )
        self.downloaded_bytes = Counter(
            "damselfly_peer_downloaded_bytes",
            "Bytes this peer fetched into its store, by source (origin, parent)",
            ["source"],
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "damselfly_peer_uploaded_bytes",
            "Piece bytes this peer served to other peers",
            registry=r,
        )
        self.passthrough_bytes = Counter(
            "damselfly_peer_passthrough_bytes",
            "Response bytes relayed for requests that bypass the cache",
            registry=r,
        )
        self.cache_lookups = Counter(
            "damselfly_peer_cache_lookups",
            "Cache lookups by result: hit, miss (incl. joining a running download)",
            ["result"],
            registry=r,
        )
        self.task_duration = Histogram(
            "damselfly_peer_task_duration_seconds",
            "Time to download a task into the store, by outcome",
            ["outcome"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.store_used = Gauge(
            "damselfly_peer_store_used_bytes", "Bytes the piece store holds", registry=r
        )
        self.store_quota = Gauge(
            "damselfly_peer_store_quota_bytes", "The piece store's quota", registry=r
        )
        self.store_tasks = Gauge(
            "damselfly_peer_store_tasks", "Tasks in the store (complete or not)", registry=r
        )
        self.gc_evicted = Counter(
            "damselfly_peer_gc_evicted_tasks",
            "Tasks removed by GC, by reason (watermark, ttl, corrupt)",
            ["reason"],
            registry=r,
        )
        self.integrity_failures = Counter(
            "damselfly_peer_integrity_failures",
            "Pieces or objects whose digest did not match, by kind (piece, object)",
            ["kind"],
            registry=r,
        )
        self.rule_reloads = Counter(
            "damselfly_peer_rule_reloads", "Rule sets loaded and swapped in", registry=r
        )
        self.rule_reload_failures = Counter(
            "damselfly_peer_rule_reload_failures",
            "Rule files rejected (the last good set stays in use)",
            registry=r,
        )
        self.rules_info = Gauge(
            "damselfly_peer_rules_info",
            "The rule set this peer runs: 1 for its hash",
            ["hash"],
            registry=r,
        )
        self.rules_count = Gauge("damselfly_peer_rules", "Rules in the running set", registry=r)
        self.refusals = Counter(
            "damselfly_peer_refused_requests",
            "Requests refused by access control, by reason",
            ["reason"],
            registry=r,
        )

        self.store_errors = Counter(
            "damselfly_peer_store_errors",
            "Store failures, by kind (disk_full: a write found no space; no_room: an object "
            "was forwarded unstored to keep storage.minFree free)",
            ["kind"],
            registry=r,
        )
        self.unauthorized = Counter(
            "damselfly_peer_unauthorized_requests",
            "Requests to the upload port refused because they lacked the shared token",
            registry=r,
        )
        self.parents_refused = Counter(
            "damselfly_peer_parents_refused",
            "Parent addresses from the scheduler that the egress guard refused to dial",
            registry=r,
        )

    def set_rules(self, digest: str, count: int) -> None:
        self.rules_info.clear()
        self.rules_info.labels(hash=digest).set(1)
        self.rules_count.set(count)
