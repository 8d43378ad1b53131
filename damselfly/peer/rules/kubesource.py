"""API-watch mode: a peer learns its rules from ProxyRule objects, within a second.

A mounted ConfigMap reaches the peer only when kubelet syncs it (up to about a
minute); a watch on ProxyRules reaches it at once. List, then watch from the
list's resourceVersion; after any error or a 410 Gone, back off and list again,
so a missed event costs one resync, never a stale rule set. The rules are built
by the same function the operator renders the rules ConfigMap with
(``damselfly.api.rules.ruleset_from_objects``), so both compute the same digest.

The peer reports the digest it runs in a Lease of its own; the protocol (name,
labels, body, liveness) is ``damselfly.api.report``, which the operator reads with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from damselfly.api.report import FIELD_MANAGER, lease_body, lease_name
from damselfly.api.rules import RenderedRules, ruleset_from_objects
from damselfly.api.v1alpha1 import API_VERSION
from damselfly.config.peer import RulesApiSection
from damselfly.errors import ServiceError
from damselfly.kube import ApiError, Kube, load_credentials, resource_path
from damselfly.peer.rules.filesource import RulesRejected, RulesSource

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# --- pure parts ---------------------------------------------------------------------


class Resync(ServiceError):
    """The watch cannot go on from its resourceVersion: list everything again."""


def apply_event(objects: dict[str, dict[str, Any]], event: dict[str, Any]) -> str | None:
    """Fold one watch event into ``objects`` (name -> object); the new resourceVersion.

    Raises Resync on an ERROR event (410 Gone: the version is too old; anything else:
    the stream is in an unknown state). BOOKMARKs only move the resourceVersion.
    """
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        raise Resync(f"watch error {obj.get('code', '?')}: {obj.get('message', obj)}")
    meta = obj.get("metadata") or {}
    version = meta.get("resourceVersion")
    name = meta.get("name")
    if kind in ("ADDED", "MODIFIED") and name:
        objects[name] = obj
    elif kind == "DELETED" and name:
        objects.pop(name, None)
    return str(version) if version else None


def backoff_delay(failures: int, cap: float, jitter: float) -> float:
    """0.25 s doubling per consecutive failure up to ``cap``; ``jitter`` in [0, 1) spreads
    a fleet of peers so they do not all hit a recovering API server at once."""
    base: float = min(cap, 0.25 * 2.0 ** max(0, failures - 1))
    return base * (0.5 + jitter / 2)


def invalid_summary(rendered: RenderedRules, raw_count: int, valid_count: int) -> str | None:
    """What was left out of a rule set, for the peer's status (None when nothing)."""
    parts = [f"ProxyRule {v.rule.name}: {v.message}" for v in rendered.verdicts if not v.accepted]
    if raw_count > valid_count:
        parts.append(f"{raw_count - valid_count} ProxyRule(s) do not validate")
    return "; ".join(parts) or None


def mine(cluster: str, objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects whose clusterRef names ``cluster`` (the watch sees the whole namespace)."""
    return [
        o for o in objects if ((o.get("spec") or {}).get("clusterRef") or {}).get("name") == cluster
    ]


def own_namespace(configured: str | None) -> str:
    if configured:
        return configured
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return "default"


# --- the watch ----------------------------------------------------------------------


@dataclass
class WatchState:
    """What the watch knows, for logs and tests."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    failures: int = 0
    last_error: str | None = None


class KubeRules:
    """List+watch ProxyRules, swap rules in through RulesSource, report in a Lease."""

    def __init__(
        self,
        settings: RulesApiSection,
        source: RulesSource,
        host_id: str,
        kube: Kube | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.host_id = host_id
        self.cluster = settings.cluster_name
        self.namespace = own_namespace(settings.namespace)
        self.kube = kube or Kube(load_credentials(settings.kubeconfig))
        self.objects: dict[str, dict[str, Any]] = {}
        self.state = WatchState()
        self._reported: str | None = None
        self._report_wanted = asyncio.Event()
        self._last_invalid: str | None = None
        self._rules_path = resource_path(API_VERSION, "ProxyRule", self.namespace)

    async def run(self) -> None:
        """Forever: the watch and the reporter side by side."""
        tasks = [asyncio.create_task(self._watch_forever())]
        if self.settings.report:
            tasks.append(asyncio.create_task(self._report_forever()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Withdraw the report (this peer is going) and close the connection."""
        if self.settings.report:
            path = resource_path(
                "coordination.k8s.io/v1",
                "Lease",
                self.namespace,
                lease_name(self.cluster, self.host_id),
            )
            try:
                await asyncio.wait_for(self.kube.delete(path), 3)
            except (ApiError, OSError, TimeoutError) as exc:
                log.warning("could not withdraw the rules report", extra={"error": str(exc)})
        await self.kube.close()

    # -- watch --

    async def _watch_forever(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                failures = 0
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API down, 410, 403, bad JSON: all mean resync
                failures += 1
                self.state.failures += 1
                self.state.last_error = str(exc)
                delay = backoff_delay(failures, self.settings.max_backoff, random.random())
                log.warning(
                    "ProxyRule watch failed; resyncing",
                    extra={"error": str(exc), "retry_in": round(delay, 2), "failures": failures},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        result = await self.kube.request("GET", self._rules_path)
        self.state.lists += 1
        items = result.get("items") or []
        self.objects = {i["metadata"]["name"]: i for i in items if i.get("metadata")}
        self._rebuild()
        return str((result.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> None:
        """Watch from ``version`` until the stream breaks; re-watch when it just ends."""
        while True:
            params = {
                "watch": "1",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(int(self.settings.watch_timeout)),
            }
            if version:
                params["resourceVersion"] = version
            self.state.watches += 1
            idle = self.settings.watch_timeout + 30
            async for event in self.kube.stream(self._rules_path, params, idle):
                self.state.events += 1
                new_version = apply_event(self.objects, event)
                if new_version:
                    version = new_version
                if event.get("type") != "BOOKMARK":
                    self._rebuild()

    def _rebuild(self) -> None:
        """Recompute the rule set; swap it in when its digest changed."""
        raw = mine(self.cluster, self.objects.values())
        rendered = ruleset_from_objects(self.cluster, raw)
        invalid = invalid_summary(rendered, len(raw), len(rendered.verdicts))
        if invalid and invalid != self._last_invalid:
            self.source.reject(f"left out of the rule set: {invalid}")
        self._last_invalid = invalid
        if rendered.digest == self.source.holder.current.digest:
            if rendered.digest != self._reported:
                self._report_wanted.set()
            return
        try:
            self.source.apply(rendered.ruleset, source="api")
        except RulesRejected as exc:
            self.source.reject(str(exc))
        except Exception as exc:  # a bad set must never take the peer down
            self.source.reject(f"api: {type(exc).__name__}: {exc}")
        self._report_wanted.set()

    # -- report --

    async def _report_forever(self) -> None:
        """Apply the Lease on every change of the running hash, and renew it meanwhile."""
        renew = max(1.0, self.settings.lease_duration / 3)
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_wanted.wait(), renew)
            self._report_wanted.clear()
            running = self.source.holder.current.digest
            body = lease_body(
                self.cluster,
                self.namespace,
                self.host_id,
                running,
                self.settings.lease_duration,
                datetime.now(UTC),
            )
            try:
                await self.kube.apply(body, FIELD_MANAGER)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures, self.settings.max_backoff, random.random())
                log.warning(
                    "could not report the rules hash",
                    extra={"error": str(exc), "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                self._report_wanted.set()
                continue
            failures = 0
            if running != self._reported:
                log.info("reported rules hash", extra={"hash": running})
            self._reported = running
