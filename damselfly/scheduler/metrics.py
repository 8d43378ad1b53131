"""Scheduler metrics on their own registry (one per service, so tests can run several).

The back-to-source share is
``traffic_bytes{type="back_to_source"} / sum(traffic_bytes)``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Scheduling is in-memory work: the interesting range is tens of µs to tens of ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    2.5,
)


class SchedulerMetrics:
    """Every metric the scheduler exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ns = "damselfly_scheduler"
        self.announces = Counter(
            f"{ns}_announces", "Host announces received.", registry=self.registry
        )
        self.registrations = Counter(
            f"{ns}_registrations", "Task registrations received.", registry=self.registry
        )
        self.reschedules = Counter(
            f"{ns}_reschedules", "Reschedule requests received.", registry=self.registry
        )
        self.schedules = Counter(
            f"{ns}_schedules",
            "Schedules answered, by outcome (parents, seed, back_to_source).",
            ["result"],
            registry=self.registry,
        )
        self.schedule_latency = Histogram(
            f"{ns}_schedule_latency_seconds",
            "Time to answer a register/reschedule, including a seed trigger.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.piece_reports = Counter(
            f"{ns}_piece_reports",
            "Piece reports received (pieces, not requests).",
            registry=self.registry,
        )
        self.digest_conflicts = Counter(
            f"{ns}_digest_conflicts",
            "Piece digests that differ from the first one recorded (ignored).",
            registry=self.registry,
        )
        self.traffic_bytes = Counter(
            f"{ns}_traffic_bytes",
            "Bytes of finished pieces by where they came from.",
            ["type"],
            registry=self.registry,
        )
        self.seed_triggers = Counter(
            f"{ns}_seed_triggers",
            "Seed peers asked to fetch a task, by result.",
            ["result"],
            registry=self.registry,
        )
        self.task_results = Counter(
            f"{ns}_task_results", "Task results reported.", ["result"], registry=self.registry
        )
        self.unauthorized = Counter(
            f"{ns}_unauthorized_requests",
            "API requests refused because they lacked the shared token.",
            registry=self.registry,
        )
        self.parent_failures = Counter(
            f"{ns}_parent_failures",
            "Parent failures reported.",
            ["reason"],
            registry=self.registry,
        )
        self.hosts_expired = Counter(
            f"{ns}_hosts_expired", "Hosts dropped for not announcing.", registry=self.registry
        )
        self.hosts = Gauge(f"{ns}_hosts", "Hosts known.", registry=self.registry)
        self.seed_hosts = Gauge(f"{ns}_seed_hosts", "Seed hosts known.", registry=self.registry)
        self.tasks = Gauge(f"{ns}_tasks", "Tasks known.", registry=self.registry)
        for result in ("parents", "seed", "back_to_source"):
            self.schedules.labels(result)
        for kind in ("back_to_source", "remote_peer"):
            self.traffic_bytes.labels(kind)
        for result in ("accepted", "failed"):
            self.seed_triggers.labels(result)
