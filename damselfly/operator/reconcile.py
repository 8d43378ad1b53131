"""One reconcile of one P2PCluster: read, render, apply, report.

Level-triggered: every pass starts from what the API says now, so a missed
event or an operator restart costs nothing. Any event about the cluster, its
ProxyRules or its workloads just queues the cluster's key (see main.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from damselfly.api import report
from damselfly.api.rules import parse_proxy_rules
from damselfly.api.v1alpha1 import API_VERSION, P2PCluster
from damselfly.errors import describe_validation
from damselfly.kube import ApiError, Kube, resource_path
from damselfly.operator import status as st
from damselfly.operator.diagnose import Problem, diagnose
from damselfly.operator.render import (
    FIELD_MANAGER,
    Names,
    RuleVerdict,
    render_cluster,
    render_rules,
    selector,
)

log = logging.getLogger("damselfly.operator")
Key = tuple[str, str]  # (namespace, cluster name)
COMPONENT = "damselfly-operator"
ACCESS_KINDS = frozenset({"ServiceAccount", "Role", "RoleBinding"})
# Pods, PVCs and Events are not watched (there are too many in a cluster): while a
# component is not available, the cluster is looked at again this often.
NOT_READY_REQUEUE_SECONDS = 15.0
WORKLOADS = (("scheduler", "Deployment"), ("seed-peer", "StatefulSet"), ("peer", "DaemonSet"))


def _cluster_path(namespace: str, name: str) -> str:
    return resource_path(API_VERSION, "P2PCluster", namespace, name)


def _rule_path(rule: dict[str, Any]) -> str:
    meta = rule["metadata"]
    return resource_path(API_VERSION, "ProxyRule", meta["namespace"], meta["name"])


@dataclass
class Reconciler:
    kube: Kube
    now: Callable[[], str] = st.now_rfc3339
    # queue a key again after a delay: when the first peer report runs out
    later: Callable[[Key, float], None] | None = None
    clock: Callable[[], float] = time.time
    not_ready_requeue: float = NOT_READY_REQUEUE_SECONDS

    async def reconcile(self, namespace: str, name: str) -> None:
        raw = await self.kube.get(_cluster_path(namespace, name))
        raw_rules = await self.kube.list(resource_path(API_VERSION, "ProxyRule", namespace))
        raw_rules = [
            r for r in raw_rules if r.get("spec", {}).get("clusterRef", {}).get("name") == name
        ]
        rules, invalid = parse_proxy_rules(raw_rules)
        by_name = {r["metadata"]["name"]: r for r in raw_rules}
        if raw is None:  # deleted, or not created yet: its children go by garbage collection
            verdicts = render_rules(name, rules).verdicts
            await self._rule_statuses(verdicts, by_name, invalid, Names(name).rules, None, name)
            return
        try:
            cluster = P2PCluster.model_validate(raw)
        except ValidationError as exc:
            await self._stalled(raw, "InvalidSpec", describe_validation(exc))
            return
        if cluster.spec.suspend:
            await self._write_status(raw, st.suspended_conditions(_conditions(raw)), {})
            return
        rendered = render_cluster(cluster, rules)
        applied: dict[str, dict[str, Any]] = {}
        error: str | None = None
        # Access objects first: they depend only on the cluster's name, and a RoleBinding
        # cannot even be dry-run before its Role exists.
        first = [o for o in rendered.objects if o["kind"] in ACCESS_KINDS]
        rest = [o for o in rendered.objects if o["kind"] not in ACCESS_KINDS]
        try:
            for obj in first:
                await self.kube.apply(obj, FIELD_MANAGER)
            # A dry run of everything spec-driven: a child the server rejects leaves the
            # others untouched instead of half-applied.
            for obj in rest:
                await self.kube.apply(obj, FIELD_MANAGER, dry_run=True)
            for obj in rest:
                applied[obj["kind"]] = await self.kube.apply(obj, FIELD_MANAGER)
        except ApiError as exc:
            if not exc.permanent:
                raise
            error = f"applying {obj['kind']} {obj['metadata']['name']}: {exc.message}"
        problems: dict[str, list[Problem]] = {}
        not_available = False
        for component, kind in WORKLOADS:
            workload = applied.get(kind)
            if error is not None or workload is None or st.available(workload):
                continue  # an apply error already stalls it; available needs no reason
            not_available = True
            found = await self._diagnose(namespace, name, component, workload)
            if found:
                problems[component] = found
        observed = st.Observed(
            scheduler=applied.get("Deployment"),
            seed_peers=applied.get("StatefulSet"),
            peers=applied.get("DaemonSet"),
            rules=len(rendered.rules.ruleset.rules),
            rules_hash=rendered.rules.digest,
            node_port=cluster.spec.proxy.node_port,
            error=error,
            problems=problems,
        )
        conds, fields = st.cluster_conditions(observed)
        prop, expiry = await self._propagation(namespace, name, rendered.rules.digest)
        fields["rulesPropagation"] = prop.text
        await self._write_status(raw, conds, fields)
        # one timer per key (the latest call wins): the sooner of the two reasons
        delays = [] if expiry is None else [expiry + 0.5]
        if not_available:
            delays.append(self.not_ready_requeue)
        if delays and self.later is not None:
            self.later((namespace, name), min(delays))
        await self._rule_statuses(
            rendered.rules.verdicts, by_name, invalid, Names(name).rules, error, prop=prop
        )

    async def _diagnose(
        self, namespace: str, name: str, component: str, workload: dict[str, Any]
    ) -> list[Problem]:
        """Why a component is not available, from its pods, PVCs and their Events.

        Only an explanation: when these cannot be read, the status says less, and the
        reconcile goes on. Reads come from the API server's watch cache; Events are
        asked for per object (a namespace may hold thousands)."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector(name, component).items()))
        kind = str(workload.get("kind"))
        try:
            pods = await self.kube.list(
                resource_path("v1", "Pod", namespace), label_selector=labels, cached=True
            )
            claims: list[dict[str, Any]] = []
            if kind == "StatefulSet" and workload.get("spec", {}).get("volumeClaimTemplates"):
                claims = await self.kube.list(
                    resource_path("v1", "PersistentVolumeClaim", namespace),
                    label_selector=labels,
                    cached=True,
                )
            # a Deployment tells its ReplicaSet's FailedCreate in its own conditions
            involved = [] if kind == "Deployment" else [str(workload["metadata"]["name"])]
            involved += sorted(
                str(c["metadata"]["name"])
                for c in claims
                if (c.get("status") or {}).get("phase") != "Bound"
            )
            events: list[dict[str, Any]] = []
            for obj_name in involved:
                events += await self.kube.list(
                    resource_path("v1", "Event", namespace),
                    field_selector=f"involvedObject.name={obj_name}",
                    cached=True,
                )
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "could not read why %s of %s/%s is not available: %s",
                component,
                namespace,
                name,
                exc,
            )
            return []
        return diagnose(workload, pods, claims, events, self.clock())

    async def _propagation(
        self, namespace: str, name: str, expected: str
    ) -> tuple[st.Propagation, float | None]:
        """Which peers run ``expected``, from their Leases (see damselfly.api.report),
        and in how many seconds the first live report runs out (None: no reports)."""
        leases = await self.kube.list(
            resource_path("coordination.k8s.io/v1", "Lease", namespace),
            label_selector=report.report_selector(name),
        )
        now = self.clock()
        for stale in report.stale_leases(leases, now):
            try:
                await self.kube.delete(
                    resource_path("coordination.k8s.io/v1", "Lease", namespace, stale)
                )
            except ApiError as exc:  # housekeeping only; never fail a reconcile on it
                log.warning("could not delete stale report %s: %s", stale, exc)
        reports = report.live_reports(leases, now)
        return st.propagation(reports, expected), report.next_expiry(reports, now)

    # --- rules ---------------------------------------------------------------------

    async def _rule_statuses(
        self,
        verdicts: list[RuleVerdict],
        raw_by_name: dict[str, dict[str, Any]],
        invalid: list[tuple[dict[str, Any], str]],
        configmap: str,
        cluster_error: str | None,
        missing_cluster: str | None = None,
        prop: st.Propagation | None = None,
    ) -> None:
        for verdict in verdicts:
            raw = raw_by_name[verdict.rule.name]
            if verdict.accepted:
                accepted = st.Cond(st.ACCEPTED, True, "Valid", "")
            else:
                accepted = st.Cond(st.ACCEPTED, False, verdict.reason, verdict.message)
            if not verdict.accepted:
                applied = st.Cond(st.APPLIED, False, "NotAccepted", "the rule was not accepted")
            elif missing_cluster is not None:
                applied = st.Cond(
                    st.APPLIED, False, "ClusterNotFound", f"no P2PCluster {missing_cluster!r} here"
                )
            elif cluster_error is not None:
                applied = st.Cond(st.APPLIED, False, "ClusterStalled", cluster_error)
            elif verdict.applied:
                applied = st.Cond(st.APPLIED, True, "Applied", f"in ConfigMap {configmap}")
            else:
                applied = st.Cond(st.APPLIED, False, verdict.reason, verdict.message)
            propagated: st.Cond | None = None
            if prop is not None:
                propagated = st.propagated_condition(prop)
                if not verdict.accepted:
                    propagated = st.Cond(
                        st.PROPAGATED, False, "NotAccepted", "the rule was not accepted"
                    )
            await self._write_rule_status(raw, accepted, applied, propagated, prop)
        for raw, message in invalid:
            await self._write_rule_status(
                raw,
                st.Cond(st.ACCEPTED, False, "InvalidRule", message),
                st.Cond(st.APPLIED, False, "NotAccepted", "the rule was not accepted"),
            )

    async def _write_rule_status(
        self,
        raw: dict[str, Any],
        accepted: st.Cond,
        applied: st.Cond,
        propagated: st.Cond | None = None,
        prop: st.Propagation | None = None,
    ) -> None:
        generation = int(raw["metadata"].get("generation") or 0)
        before = raw.get("status")
        after = st.rule_status(
            before,
            generation,
            accepted,
            applied,
            self.now(),
            propagated,
            None if prop is None else prop.text,
        )
        if after == before:
            return
        try:
            await self.kube.patch_status(_rule_path(raw), after)
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
            return
        for cond in st.transitions((before or {}).get("conditions"), after["conditions"]):
            if cond["type"] == st.ACCEPTED and cond["status"] == "False":
                await self._event(raw, "Warning", cond["reason"], cond["message"])

    # --- cluster status --------------------------------------------------------------

    async def _stalled(self, raw: dict[str, Any], reason: str, message: str) -> None:
        conds = [
            st.Cond(st.READY, False, reason, message),
            st.Cond(st.RECONCILING, False, reason, "waiting for a change to the spec"),
            st.Cond(st.STALLED, True, reason, message),
        ]
        await self._write_status(raw, conds, {})

    async def _write_status(
        self, raw: dict[str, Any], conds: list[st.Cond], fields: dict[str, Any]
    ) -> None:
        meta = raw["metadata"]
        before = raw.get("status")
        after = st.cluster_status(
            before, int(meta.get("generation") or 0), conds, fields, self.now()
        )
        if after == before:
            return
        await self.kube.patch_status(_cluster_path(meta["namespace"], meta["name"]), after)
        previous = (before or {}).get("conditions")
        for cond in st.notable(previous, after["conditions"]):
            if cond["type"] == st.READY and cond["status"] == "True":
                await self._event(raw, "Normal", "Ready", cond["message"])
            elif cond["type"] == st.STALLED and cond["status"] == "True":
                await self._event(raw, "Warning", cond["reason"], cond["message"])
            elif cond["type"] == st.RECONCILING and cond["reason"] == "Suspended":
                await self._event(raw, "Normal", "Suspended", cond["message"])

    async def _event(self, raw: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            await self.kube.post_event(raw, type_, reason, message, COMPONENT, self.now())
        except ApiError as exc:  # an Event is best effort; never fail a reconcile on it
            log.warning("could not post event %s: %s", reason, exc)


def _conditions(raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    conds: list[dict[str, Any]] | None = (raw.get("status") or {}).get("conditions")
    return conds


@dataclass
class WorkQueue:
    """Keys to reconcile, each queued at most once; retries with backoff."""

    _queue: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    _pending: set[Key] = field(default_factory=set)
    _failures: dict[Key, int] = field(default_factory=dict)
    _timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)

    def add_after(self, key: Key, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds; one timer per key, the latest call wins."""
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add(self, key: Key) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def retry(self, key: Key) -> float:
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        delay = min(60.0, 0.5 * float(2 ** (count - 1)))
        asyncio.get_running_loop().call_later(delay, self.add, key)
        return delay

    def done(self, key: Key) -> None:
        self._failures.pop(key, None)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._pending.discard(key)
        return key


async def work(reconciler: Reconciler, queue: WorkQueue) -> None:
    """Reconcile queued keys forever, one at a time."""
    while True:
        key = await queue.get()
        started = time.monotonic()
        try:
            await reconciler.reconcile(*key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = queue.retry(key)
            log.warning("reconcile %s/%s failed, retrying in %.1fs: %s", *key, delay, exc)
        else:
            queue.done(key)
            log.debug("reconciled %s/%s in %.3fs", *key, time.monotonic() - started)
