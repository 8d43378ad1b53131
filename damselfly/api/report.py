"""The rules report: how a peer tells the operator which rule set it runs.

Each peer that reports (rule source API) applies a Lease of its own,
``<cluster>-rules-<host>-<hash8>``, labelled with its cluster, the component
``peer-rules`` and the rules hash it runs (``lease_body``), and renews it well
within ``leaseDurationSeconds``. The operator lists the Leases by label
(``report_selector``), counts the live ones (renewed less than a lease duration
ago: ``live_reports``), compares their hashes with the cluster's rulesHash, and
deletes reports that ran out long ago (``stale_leases``). Both sides take the
protocol from here, so what one writes the other reads.

Why a Lease, not a Pod annotation: patching pods would let a peer rewrite any pod
in its namespace (images included), and local processes (tests, ``damselfly
local``) have no Pod; a Lease is a small object made for heartbeats, whose
``renewTime`` + ``leaseDurationSeconds`` tells the operator which reports are
live, and a Role can grant leases without granting anything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from damselfly.api.labels import CLUSTER_LABEL, COMPONENT_LABEL
from damselfly.api.v1alpha1 import GROUP

RULES_HASH_LABEL = f"{GROUP}/rules-hash"
REPORT_COMPONENT = "peer-rules"  # the component label of a report
FIELD_MANAGER = "damselfly-peer"  # who applies reports (server-side apply)
# Reports expired this long ago are deleted by the operator.
STALE_REPORT_SECONDS = 600.0


def report_selector(cluster: str) -> str:
    """The label selector of one cluster's reports."""
    return f"{CLUSTER_LABEL}={cluster},{COMPONENT_LABEL}={REPORT_COMPONENT}"


def lease_name(cluster: str, host_id: str) -> str:
    """A valid, stable object name for one peer's report: readable, and unique by hash.

    Host ids are node names or hostnames (dots, capitals, anything): the readable part
    is squeezed into DNS-1123, and a digest of the raw id keeps two ids apart that
    squeeze to the same text.
    """
    readable = re.sub(r"[^a-z0-9-]+", "-", host_id.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(host_id.encode()).hexdigest()[:8]
    return f"{cluster}-rules-{readable or 'peer'}-{digest}"


def micro_time(at: datetime) -> str:
    """metav1.MicroTime, as Lease.spec.renewTime wants it."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    cluster: str, namespace: str, host_id: str, rules_hash: str, duration: float, now: datetime
) -> dict[str, Any]:
    """The Lease a peer applies to say which rules it runs."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(cluster, host_id),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "damselfly",
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
                CLUSTER_LABEL: cluster,
                COMPONENT_LABEL: REPORT_COMPONENT,
                RULES_HASH_LABEL: rules_hash,
            },
        },
        "spec": {
            "holderIdentity": host_id,
            "leaseDurationSeconds": max(1, int(duration)),
            "renewTime": micro_time(now),
        },
    }


@dataclass(frozen=True)
class PeerReport:
    """One peer's Lease: the rules hash it runs, and until when the report holds."""

    host: str
    rules_hash: str
    expires: float  # epoch seconds


def parse_time(text: Any) -> float | None:
    """metav1.Time or MicroTime (RFC 3339, 'Z') to epoch seconds; None when absent or
    unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def peer_report(lease: dict[str, Any]) -> PeerReport | None:
    """A peer's report from its Lease; None if malformed."""
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    rules_hash = (meta.get("labels") or {}).get(RULES_HASH_LABEL)
    renewed = parse_time(str(spec.get("renewTime") or ""))
    if not rules_hash or renewed is None:
        return None
    duration = float(spec.get("leaseDurationSeconds") or 0)
    host = str(spec.get("holderIdentity") or meta.get("name", "?"))
    return PeerReport(host, str(rules_hash), renewed + duration)


def live_reports(leases: list[dict[str, Any]], now: float) -> list[PeerReport]:
    """Reports still renewed: a peer that died stops counting once its lease runs out."""
    reports = (peer_report(lease) for lease in leases)
    return sorted((r for r in reports if r is not None and r.expires > now), key=lambda r: r.host)


def stale_leases(leases: list[dict[str, Any]], now: float) -> list[str]:
    """Names of reports expired long ago (pods replaced without a clean stop): the
    operator deletes them so the namespace does not fill with dead peers' Leases."""
    stale = []
    for lease in leases:
        report = peer_report(lease)
        if report is not None and report.expires + STALE_REPORT_SECONDS < now:
            stale.append(str(lease["metadata"]["name"]))
    return stale


def next_expiry(reports: list[PeerReport], now: float) -> float | None:
    """Seconds until the first live report runs out: then the counts change by themselves."""
    if not reports:
        return None
    return max(0.0, min(r.expires for r in reports) - now)
