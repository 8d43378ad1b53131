"""Why a component is not available, from its pods, PVCs and Events: pure functions.

A workload's counts say *that* replicas are missing; the children say *why*: an
image that cannot be pulled, a crash loop (the peer writes its one-line reason to
the termination log), an admission webhook or Pod Security refusing the pods, an
unbound PVC, a pod no node can take. Each finding is a ``Problem`` with a CamelCase
reason, a message naming the object and carrying the child's own words, and
whether it is a *stall*: it will not resolve without a change from the user.

Inputs are the plain dicts the API returns. Messages hold no ages or timestamps
and inputs are sorted, so an unchanged situation yields the same conditions and
no status write. Time (``now``, epoch seconds) only decides whether a young
object is still given its grace period.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from damselfly.api.report import parse_time

# Seconds a Pending PVC without an explanation is given before it counts as stalled
# (dynamic provisioning usually binds within seconds).
CLAIM_GRACE_SECONDS = 30.0
# Seconds a young pod is given for the waiting reasons kubelet may still clear by
# itself (a ConfigMap created a moment later, a runtime hiccup).
POD_GRACE_SECONDS = 60.0
DETAIL_LIMIT = 400  # characters of a child's own text in one problem
MAX_PROBLEMS = 3  # per component; the rest are counted, not listed

# kubelet alternates ErrImagePull (an attempt failed) and ImagePullBackOff (waiting
# to retry): one reason for both, so the conditions do not flap between them.
IMAGE_PULL = {"ErrImagePull": "ImagePullBackOff", "ImagePullBackOff": "ImagePullBackOff"}
# Waiting reasons that mean kubelet already failed and backs off: stalls at once.
STALL_AT_ONCE = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CrashLoopBackOff"}
)
# Waiting reasons kubelet retries on every sync: stalls once the pod is past its grace.
STALL_AFTER_GRACE = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreStartHookError",
        "PostStartHookError",
        "ContainerCannotRun",
        "RegistryUnavailable",
        "ImageInspectError",
    }
)
CLAIM_FAILURES = frozenset({"FailedBinding", "ProvisioningFailed"})
# client-go's event correlator folds a burst of similar Events into one with this prefix
AGGREGATED = "(combined from similar events): "


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, e.g. ImagePullBackOff
    message: str  # names the object; the child's own words, shortened
    stall: bool  # True: cannot resolve without a change from the user


def clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    """One line, at most ``limit`` characters: the child's text, squeezed."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _age(obj: dict[str, Any], now: float) -> float:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return 0.0 if created is None else now - created


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def event_time(event: dict[str, Any]) -> float:
    """When an Event was last seen: series, lastTimestamp, eventTime, creation."""
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        when = parse_time(value)
        if when is not None:
            return when
    return 0.0


def events_about(
    events: Iterable[dict[str, Any]], obj: dict[str, Any], kind: str
) -> list[dict[str, Any]]:
    """The Events about ``obj`` (same kind and name; same uid when both tell), newest last."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    found = []
    for event in events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") != kind or involved.get("name") != meta.get("name"):
            continue
        if uid and involved.get("uid") and involved["uid"] != uid:
            continue  # about an earlier object of the same name
        found.append(event)
    return sorted(found, key=lambda e: (event_time(e), _name(e)))


# --- pods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PodFinding:
    reason: str
    stall: bool
    where: str  # "container peer", "" for the pod itself
    detail: str


def _last_words(terminated: dict[str, Any]) -> str:
    """A crash's useful text: the termination message, else its reason and exit code."""
    if not terminated:
        return "restarting after a failure"
    code = terminated.get("exitCode")
    # the peer writes one line; a FallbackToLogsOnError tail ends with the error
    lines = [line for line in str(terminated.get("message") or "").splitlines() if line.strip()]
    said = clip(lines[-1]) if lines else ""
    reason = terminated.get("reason")
    head = f"exit code {code}" if code is not None else "terminated"
    if reason and reason not in ("Error", "Completed"):
        head += f" ({reason})"
    return f"{head}: {said}" if said else head


def _container_findings(pod: dict[str, Any], now: float) -> list[_PodFinding]:
    status = pod.get("status") or {}
    found = []
    containers = [
        *(("init container", c) for c in status.get("initContainerStatuses") or []),
        *(("container", c) for c in status.get("containerStatuses") or []),
    ]
    young = _age(pod, now) < POD_GRACE_SECONDS
    for label, container in containers:
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        raw = str(waiting.get("reason") or "")
        where = f"{label} {container.get('name', '?')}"
        exited = state.get("terminated") or {}
        if exited.get("exitCode") and int(container.get("restartCount") or 0) > 0:
            # between a crash and kubelet's back-off: the same loop, not a recovery
            found.append(_PodFinding("CrashLoopBackOff", True, where, _last_words(exited)))
        if not raw:
            continue
        if raw == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            found.append(_PodFinding(raw, True, where, _last_words(last)))
        elif raw in IMAGE_PULL or raw in STALL_AT_ONCE:
            text = clip(str(waiting.get("message") or ""))
            detail = f"{raw}: {text}" if text else raw
            found.append(_PodFinding(IMAGE_PULL.get(raw, raw), True, where, detail))
        elif raw in STALL_AFTER_GRACE:
            text = clip(str(waiting.get("message") or "")) or raw
            found.append(_PodFinding(raw, not young, where, text))
    return found


def pod_findings(pod: dict[str, Any], now: float) -> list[_PodFinding]:
    """What keeps one pod from being ready, as far as its status tells."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return []  # on its way out: its replacement is what matters
    found = []
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            found.append(
                _PodFinding("Unschedulable", True, "", clip(str(cond.get("message") or "")))
            )
    return found + _container_findings(pod, now)


def pod_problems(pods: Sequence[dict[str, Any]], now: float) -> list[Problem]:
    """Pods with the same finding are one problem: "pod a (and 41 more) container peer: ..."."""
    groups: dict[_PodFinding, list[str]] = {}
    for pod in pods:
        for finding in pod_findings(pod, now):
            groups.setdefault(finding, []).append(_name(pod))
    problems = []
    ordered = sorted(
        groups.items(), key=lambda g: (not g[0].stall, -len(g[1]), g[0].reason, g[0].detail)
    )
    for finding, names in ordered:
        names.sort()
        subject = f"pod {names[0]}"
        if len(names) > 1:
            subject += f" (and {len(names) - 1} more)"
        if finding.where:
            subject += f" {finding.where}"
        text = f"{subject}: {finding.detail}" if finding.detail else subject
        problems.append(Problem(finding.reason, text, finding.stall))
    return problems


# --- claims ----------------------------------------------------------------------------


def claim_problem(
    claim: dict[str, Any], events: Iterable[dict[str, Any]], now: float
) -> Problem | None:
    """An unbound PVC: stalled when an Event says it cannot bind, or after the grace."""
    name = _name(claim)
    phase = (claim.get("status") or {}).get("phase") or "Pending"
    if phase == "Bound":
        return None
    if phase == "Lost":
        return Problem(
            "PersistentVolumeClaimLost",
            f"PersistentVolumeClaim {name} lost its PersistentVolume (phase Lost)",
            True,
        )
    about = events_about(events, claim, "PersistentVolumeClaim")
    last = about[-1] if about else None
    if last is None:
        return Problem(
            "PersistentVolumeClaimPending",
            f"PersistentVolumeClaim {name} is Pending: no volume is bound to it",
            _age(claim, now) >= CLAIM_GRACE_SECONDS,
        )
    reason = str(last.get("reason") or "")
    said = clip(str(last.get("message") or ""))
    text = f"{reason}: {said}" if reason else said
    if reason == "WaitForFirstConsumer":
        stall = False  # binds once a pod is scheduled: a pod's problem says why not
    elif reason in CLAIM_FAILURES or last.get("type") == "Warning":
        stall = True
    else:
        stall = _age(claim, now) >= CLAIM_GRACE_SECONDS
    message = f"PersistentVolumeClaim {name} is Pending: {text}"
    return Problem("PersistentVolumeClaimPending", message, stall)


# --- workloads -------------------------------------------------------------------------


def workload_problems(
    workload: dict[str, Any], events: Iterable[dict[str, Any]], pods: Sequence[dict[str, Any]]
) -> list[Problem]:
    """The controller cannot create pods (or claims): admission, quota, Pod Security."""
    kind = str(workload.get("kind") or "")
    name = _name(workload)
    problems = []
    if kind == "Deployment":
        # the Deployment controller copies its ReplicaSet's ReplicaFailure condition
        for cond in (workload.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                problems.append(
                    Problem(
                        str(cond.get("reason") or "FailedCreate"),
                        f"Deployment {name}: {clip(str(cond.get('message') or ''))}",
                        True,
                    )
                )
            elif (
                cond.get("type") == "Progressing"
                and cond.get("status") == "False"
                and cond.get("reason") == "ProgressDeadlineExceeded"
            ):
                problems.append(
                    Problem(
                        "ProgressDeadlineExceeded",
                        f"Deployment {name}: {clip(str(cond.get('message') or ''))}",
                        True,
                    )
                )
        return problems
    failures = [
        e for e in events_about(events, workload, kind) if e.get("reason") == "FailedCreate"
    ]
    if not failures:
        return []
    last = failures[-1]
    # A failure older than the newest pod was overcome (the controller created one since).
    newest_pod = max(
        (parse_time((p.get("metadata") or {}).get("creationTimestamp")) or 0.0 for p in pods),
        default=0.0,
    )
    if event_time(last) < newest_pod:
        return []
    text = str(last.get("message") or "").removeprefix(AGGREGATED)
    # each attempt of a DaemonSet names another generated pod: the same refusal
    text = re.sub(rf'"{re.escape(name)}-[a-z0-9]{{5}}"', f'"{name}-"', text)
    return [Problem("FailedCreate", f"{kind} {name}: {clip(text)}", True)]


def diagnose(
    workload: dict[str, Any],
    pods: Sequence[dict[str, Any]],
    claims: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    now: float,
) -> list[Problem]:
    """A component's problems, stalls first; the workload's own, then claims, then pods."""
    problems = workload_problems(workload, events, pods)
    for claim in sorted(claims, key=_name):
        problem = claim_problem(claim, events, now)
        if problem is not None:
            problems.append(problem)
    problems += pod_problems(pods, now)
    return sorted(problems, key=lambda p: not p.stall)  # stable: the order above holds


def describe(problems: Sequence[Problem]) -> str:
    """The problems of one component in one message, the first few in full."""
    shown = "; ".join(p.message for p in problems[:MAX_PROBLEMS])
    rest = len(problems) - MAX_PROBLEMS
    return f"{shown}; and {rest} more" if rest > 0 else shown
