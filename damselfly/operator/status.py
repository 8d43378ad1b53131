"""Pure status computation: kstatus-compliant conditions from children's status.

kstatus (what Argo CD, Flux and ``kubectl wait`` read): ``observedGeneration``
equal to ``metadata.generation`` means the status is current; ``Reconciling``
True means work is in progress, ``Stalled`` True means it cannot progress
without a change from the user; ``Ready`` True means everything is available.
A condition keeps its ``lastTransitionTime`` while its status is unchanged, so
recomputing an unchanged status yields the same object and no write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from damselfly.api.report import PeerReport
from damselfly.operator.diagnose import Problem, describe

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SCHEDULER_AVAILABLE = "SchedulerAvailable"
SEED_PEERS_AVAILABLE = "SeedPeersAvailable"
PEERS_AVAILABLE = "PeersAvailable"
ACCEPTED = "Accepted"
APPLIED = "Applied"
PROPAGATED = "Propagated"


MAX_MESSAGE = 1024


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """Head and tail of a long message: API errors put the useful part at both ends
    ("StatefulSet ... is invalid: spec.volumeClaimTemplates ... field is immutable")."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else str(self.status)


def merge_conditions(
    previous: list[dict[str, Any]] | None, new: list[Cond], generation: int, now: str
) -> list[dict[str, Any]]:
    """metav1.Conditions for ``new``, keeping a transition time when status is unchanged."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in new:
        old = before.get(cond.type)
        since = now
        if (
            old is not None
            and old.get("status") == cond.status_text
            and old.get("lastTransitionTime")
        ):
            since = str(old["lastTransitionTime"])
        out.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "observedGeneration": generation,
                "lastTransitionTime": since,
                "reason": cond.reason,
                "message": shorten(cond.message),
            }
        )
    return out


@dataclass(frozen=True)
class Counts:
    desired: int
    ready: int
    updated: int
    current: bool  # the controller has seen the latest spec (observedGeneration)

    @property
    def available(self) -> bool:
        return self.current and self.ready >= self.desired and self.updated >= self.desired

    def as_status(self) -> dict[str, int]:
        return {"desired": self.desired, "ready": self.ready, "updated": self.updated}


def _current(obj: dict[str, Any]) -> bool:
    generation = obj.get("metadata", {}).get("generation", 0)
    return int(obj.get("status", {}).get("observedGeneration", -1)) >= int(generation)


def replica_counts(obj: dict[str, Any]) -> Counts:
    """A Deployment's or a StatefulSet's counts: both report replicas alike."""
    status = obj.get("status", {})
    return Counts(
        desired=int(obj.get("spec", {}).get("replicas", 1)),
        ready=int(status.get("readyReplicas", 0)),
        updated=int(status.get("updatedReplicas", 0)),
        current=_current(obj),
    )


def daemonset_counts(obj: dict[str, Any]) -> Counts:
    status = obj.get("status", {})
    return Counts(
        desired=int(status.get("desiredNumberScheduled", 0)),
        ready=int(status.get("numberReady", 0)),
        updated=int(status.get("updatedNumberScheduled", 0)),
        current=_current(obj),
    )


def availability(type_: str, what: str, counts: Counts) -> Cond:
    if not counts.current:
        return Cond(type_, False, "Progressing", f"the {what} controller has not seen the spec")
    if counts.available:
        return Cond(
            type_, True, "MinimumReplicasAvailable", f"{counts.ready}/{counts.desired} {what} ready"
        )
    if counts.updated < counts.desired:
        return Cond(
            type_,
            False,
            "RollingUpdate",
            f"{counts.updated}/{counts.desired} {what} updated, {counts.ready} ready",
        )
    return Cond(type_, False, "ReplicasNotReady", f"{counts.ready}/{counts.desired} {what} ready")


@dataclass(frozen=True)
class Observed:
    """What one reconcile saw: the children's status (None when not applied)."""

    scheduler: dict[str, Any] | None
    seed_peers: dict[str, Any] | None
    peers: dict[str, Any] | None
    rules: int
    rules_hash: str
    node_port: int
    error: str | None = None  # apply failed in a way only a spec change fixes
    # why a component is not available (diagnose.diagnose), by component:
    # "scheduler", "seed-peer", "peer"; empty when nothing was found or looked for
    problems: Mapping[str, Sequence[Problem]] = field(default_factory=dict)


COUNTS: dict[str, Callable[[dict[str, Any]], Counts]] = {
    "Deployment": replica_counts,
    "StatefulSet": replica_counts,
    "DaemonSet": daemonset_counts,
}


def available(workload: dict[str, Any]) -> bool:
    """Whether a child workload is available (its counts are complete and current)."""
    return COUNTS[str(workload.get("kind"))](workload).available


def explained(cond: Cond, problems: Sequence[Problem]) -> Cond:
    """A component's availability condition with the children's reason and words."""
    if cond.status is True or not problems:
        return cond
    return Cond(cond.type, False, problems[0].reason, f"{cond.message}: {describe(problems)}")


def cluster_conditions(observed: Observed) -> tuple[list[Cond], dict[str, Any]]:
    """Conditions and the count fields of a P2PCluster's status."""
    fields: dict[str, Any] = {
        "rules": observed.rules,
        "rulesHash": observed.rules_hash,
        "nodePort": observed.node_port,
    }
    if observed.error is not None:
        stalled = [
            Cond(READY, False, "ApplyFailed", observed.error),
            Cond(RECONCILING, False, "ApplyFailed", "waiting for a change to the spec"),
            Cond(STALLED, True, "ApplyFailed", observed.error),
        ]
        return stalled, fields
    parts = [
        (SCHEDULER_AVAILABLE, "scheduler", "scheduler", observed.scheduler, replica_counts),
        (SEED_PEERS_AVAILABLE, "seed peers", "seedPeers", observed.seed_peers, replica_counts),
        (PEERS_AVAILABLE, "peers", "peers", observed.peers, daemonset_counts),
    ]
    components = {"scheduler": "scheduler", "seedPeers": "seed-peer", "peers": "peer"}
    conds: list[Cond] = []
    stalls: list[Problem] = []
    for type_, what, key, obj, count in parts:
        if obj is None:
            conds.append(Cond(type_, None, "NotCreated", f"the {what} workload does not exist yet"))
            continue
        counts = count(obj)
        fields[key] = counts.as_status()
        cond = availability(type_, what, counts)
        if cond.status is not True:
            problems = observed.problems.get(components[key], ())
            cond = explained(cond, problems)
            stalls += [p for p in problems if p.stall]
        conds.append(cond)
    waiting = [c for c in conds if c.status is not True]
    if waiting and stalls:
        # kstatus: it cannot progress without a change from the user
        message = "; ".join(f"{c.type}: {c.message}" for c in waiting)
        reason = stalls[0].reason
        conds = [
            Cond(READY, False, reason, message),
            Cond(RECONCILING, False, reason, "waiting for a change: see Stalled"),
            Cond(STALLED, True, reason, message),
            *conds,
        ]
    elif waiting:
        message = "; ".join(f"{c.type}: {c.message}" for c in waiting)
        conds = [
            Cond(READY, False, "Progressing", message),
            Cond(RECONCILING, True, "Progressing", message),
            Cond(STALLED, False, "Progressing", ""),
            *conds,
        ]
    else:
        conds = [
            Cond(READY, True, "Available", "all components are available"),
            Cond(RECONCILING, False, "Available", ""),
            Cond(STALLED, False, "Available", ""),
            *conds,
        ]
    return conds, fields


def suspended_conditions(previous: list[dict[str, Any]] | None) -> list[Cond]:
    """Suspend keeps the last known availability and says reconciling stopped."""
    kept = [
        Cond(
            c["type"],
            {"True": True, "False": False}.get(c["status"]),
            c["reason"],
            c.get("message", ""),
        )
        for c in previous or []
        if c.get("type") not in (RECONCILING, STALLED)
    ]
    return [
        *kept,
        Cond(
            RECONCILING, False, "Suspended", "spec.suspend is true: children are left as they are"
        ),
        Cond(STALLED, False, "Suspended", ""),
    ]


def cluster_status(
    previous: dict[str, Any] | None,
    generation: int,
    conds: list[Cond],
    fields: dict[str, Any],
    now: str,
) -> dict[str, Any]:
    prev = previous or {}
    status = {k: v for k, v in prev.items() if k not in ("conditions", "observedGeneration")}
    status.update(fields)
    status["observedGeneration"] = generation
    status["conditions"] = merge_conditions(prev.get("conditions"), conds, generation, now)
    return status


def rule_status(
    previous: dict[str, Any] | None,
    generation: int,
    accepted: Cond,
    applied: Cond,
    now: str,
    propagated: Cond | None = None,
    propagation: str | None = None,
) -> dict[str, Any]:
    prev = previous or {}
    conds = [accepted, applied] if propagated is None else [accepted, applied, propagated]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(prev.get("conditions"), conds, generation, now),
    }
    if propagation is not None:
        status["propagation"] = propagation
    return status


# --- rule propagation: which rules the peers run ----------------------------------------


@dataclass(frozen=True)
class Propagation:
    expected: str
    current: int
    total: int
    behind: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.current}/{self.total}"


def propagation(reports: list[PeerReport], expected: str) -> Propagation:
    behind = tuple(r.host for r in reports if r.rules_hash != expected)
    return Propagation(expected, len(reports) - len(behind), len(reports), behind)


def propagated_condition(prop: Propagation) -> Cond:
    """Propagated: True when every reporting peer runs the expected rule set."""
    if prop.total == 0:
        return Cond(
            PROPAGATED,
            None,
            "NoReports",
            "no peer reports the rules it runs (peers report with ruleSource API)",
        )
    if not prop.behind:
        return Cond(PROPAGATED, True, "Propagated", f"{prop.text} peers run rules {prop.expected}")
    shown = ", ".join(prop.behind[:5]) + (" ..." if len(prop.behind) > 5 else "")
    return Cond(
        PROPAGATED,
        False,
        "Propagating",
        f"{prop.text} peers run rules {prop.expected}; behind: {shown}",
    )


def transitions(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions whose status changed: the notable ones become Kubernetes Events."""
    old = {c.get("type"): c.get("status") for c in before or []}
    return [c for c in after if old.get(c["type"]) != c["status"]]


def notable(
    before: list[dict[str, Any]] | None, after: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Transitions, and a stall that goes on for another reason (a new cause is news)."""
    changed = transitions(before, after)
    old = {c.get("type"): c for c in before or []}
    for cond in after:
        prev = old.get(cond["type"])
        if (
            cond["type"] == STALLED
            and cond["status"] == "True"
            and prev is not None
            and prev.get("status") == "True"
            and prev.get("reason") != cond["reason"]
        ):
            changed.append(cond)
    return changed
