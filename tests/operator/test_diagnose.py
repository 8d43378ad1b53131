"""Why a component is not available: problems read from pod, PVC and Event dicts.

The dicts are shaped as the API server returns them (kubelet-written pod status,
the PV controller's and the workload controllers' Events).
"""

from __future__ import annotations

import random
from typing import Any

from damselfly.operator import diagnose as dg

T0 = "2030-01-01T00:00:00Z"
NOW = dg.parse_time("2030-01-01T00:10:00Z") or 0.0  # ten minutes after T0
LATE = "2030-01-01T00:09:50Z"  # ten seconds before NOW

PULL_MESSAGE = (
    'Back-off pulling image "ghcr.io/acme/damselfly:nope": ErrImagePull: failed to pull and '
    'unpack image "ghcr.io/acme/damselfly:nope": failed to resolve reference '
    '"ghcr.io/acme/damselfly:nope": ghcr.io/acme/damselfly:nope: not found'
)
FORBIDDEN = (
    'Error creating: pods "damselfly-peer-9xq2w" is forbidden: violates PodSecurity '
    '"baseline:latest": hostPath volumes (volume "cache"), hostPort (container "peer" uses '
    "hostPort 65001)"
)

FORBIDDEN_SHOWN = FORBIDDEN.replace('"damselfly-peer-9xq2w"', '"damselfly-peer-"')


def pod(
    name: str,
    *,
    created: str = T0,
    init: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Pending",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "creationTimestamp": created,
        "labels": {"damselfly.io/cluster": "damselfly", "damselfly.io/component": "peer"},
    }
    if deleting:
        meta["deletionTimestamp"] = LATE
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions
        or [
            {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None},
            {"type": "Initialized", "status": "True", "lastProbeTime": None},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None},
        ],
        "hostIP": "10.0.0.7",
        "startTime": created,
    }
    if init is not None:
        status["initContainerStatuses"] = init
    if containers is not None:
        status["containerStatuses"] = containers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def container(
    name: str,
    state: dict[str, Any],
    last: dict[str, Any] | None = None,
    restarts: int = 0,
) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/acme/damselfly:nope",
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": restarts,
        "state": state,
        "lastState": last or {},
    }


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    w: dict[str, Any] = {"reason": reason}
    if message is not None:
        w["message"] = message
    return {"waiting": w}


def pull_backoff_pod(name: str, raw: str = "ImagePullBackOff") -> dict[str, Any]:
    return pod(
        name,
        init=[container("cache-owner", waiting(raw, PULL_MESSAGE))],
        containers=[container("peer", waiting("PodInitializing"))],
        conditions=[
            {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            {"type": "PodScheduled", "status": "True"},
        ],
    )


def crash_pod(name: str, terminated: dict[str, Any]) -> dict[str, Any]:
    return pod(
        name,
        phase="Running",
        containers=[
            container(
                "peer",
                waiting(
                    "CrashLoopBackOff",
                    f"back-off 1m20s restarting failed container=peer pod={name}_ns(uid-{name})",
                ),
                last={"terminated": terminated},
                restarts=4,
            )
        ],
    )


def claim(name: str, phase: str = "Pending", created: str = T0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "labels": {"damselfly.io/cluster": "damselfly", "damselfly.io/component": "seed-peer"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "20Gi"}},
            "volumeMode": "Filesystem",
        },
        "status": {"phase": phase},
    }


def event(
    kind: str,
    name: str,
    reason: str,
    message: str,
    type_: str = "Warning",
    last: str = LATE,
    uid: str | None = None,
    component: str = "persistentvolume-controller",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.17f1c2a3b4c5d6e7", "namespace": "ns"},
        "involvedObject": {
            "apiVersion": "apps/v1" if kind in ("DaemonSet", "StatefulSet") else "v1",
            "kind": kind,
            "name": name,
            "namespace": "ns",
            "uid": uid or f"uid-{name}",
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": T0,
        "lastTimestamp": last,
        "count": 7,
        "type": type_,
        "eventTime": None,
        "reportingComponent": component,
    }


def daemonset() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "damselfly-peer", "namespace": "ns", "uid": "uid-damselfly-peer"},
        "spec": {},
        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 0, "numberReady": 0},
    }


# --- pods ------------------------------------------------------------------------------


def test_image_pull_backoff_in_the_init_container_is_a_stall_naming_the_pod() -> None:
    [problem] = dg.pod_problems([pull_backoff_pod("damselfly-peer-x7k2p")], NOW)
    assert problem.reason == "ImagePullBackOff"
    assert problem.stall
    assert problem.message.startswith(
        "pod damselfly-peer-x7k2p init container cache-owner: ImagePullBackOff: Back-off pulling"
    )
    assert problem.message.endswith("not found")


def test_err_image_pull_and_its_backoff_are_one_reason() -> None:
    [pulling] = dg.pod_problems([pull_backoff_pod("p", raw="ErrImagePull")], NOW)
    [backoff] = dg.pod_problems([pull_backoff_pod("p")], NOW)
    assert pulling.reason == backoff.reason == "ImagePullBackOff"
    assert pulling.stall
    assert backoff.stall
    assert "ErrImagePull: " in pulling.message  # kubelet's own reason stays in the words


def test_invalid_image_name_is_a_stall() -> None:
    bad = pod(
        "p",
        containers=[
            container(
                "peer",
                waiting(
                    "InvalidImageName",
                    'Failed to apply default image tag "Damselfly:dev": couldn\'t parse image '
                    "name: invalid reference format: repository name must be lowercase",
                ),
            )
        ],
    )
    [problem] = dg.pod_problems([bad], NOW)
    assert (problem.reason, problem.stall) == ("InvalidImageName", True)
    assert "repository name must be lowercase" in problem.message


def test_crash_loop_carries_the_peers_termination_message() -> None:
    crashed = crash_pod(
        "damselfly-peer-x7k2p",
        {
            "exitCode": 2,
            "reason": "Error",
            "message": "cache dir /var/cache/damselfly is not writable by uid 65532 gid 65532: "
            "chown it in an initContainer or set fsGroup\n",
            "startedAt": T0,
            "finishedAt": T0,
            "containerID": "containerd://0123",
        },
    )
    [problem] = dg.pod_problems([crashed], NOW)
    assert problem.reason == "CrashLoopBackOff"
    assert problem.stall
    assert problem.message == (
        "pod damselfly-peer-x7k2p container peer: exit code 2: cache dir /var/cache/damselfly "
        "is not writable by uid 65532 gid 65532: chown it in an initContainer or set fsGroup"
    )
    assert "back-off" not in problem.message  # kubelet's growing delay would change it


def test_a_container_just_exited_again_is_the_same_crash_loop() -> None:
    words = {"exitCode": 2, "reason": "Error", "message": "bad config"}
    looping = crash_pod("p", words)
    [backoff] = dg.pod_problems([looping], NOW)
    exited = looping["status"]["containerStatuses"][0]
    exited["state"] = {"terminated": words}
    [between] = dg.pod_problems([looping], NOW)
    assert between == backoff
    exited["restartCount"] = 0  # a first exit: kubelet restarts it, nothing to say yet
    assert dg.pod_problems([looping], NOW) == []


def test_crash_loop_without_a_message_says_exit_code_and_reason() -> None:
    oom = crash_pod("p", {"exitCode": 137, "reason": "OOMKilled", "startedAt": T0})
    [problem] = dg.pod_problems([oom], NOW)
    assert problem.message == "pod p container peer: exit code 137 (OOMKilled)"


def test_a_log_tail_termination_message_gives_its_last_line() -> None:
    tail = "Traceback (most recent call last):\n  File x\nValueError: bad quota\n\n"
    [problem] = dg.pod_problems([crash_pod("p", {"exitCode": 1, "message": tail})], NOW)
    assert problem.message.endswith("exit code 1: ValueError: bad quota")


def test_unschedulable_is_a_stall_with_the_schedulers_words() -> None:
    text = (
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
        "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    )
    stuck = pod(
        "damselfly-seed-peer-0",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": text,
                "lastProbeTime": None,
                "lastTransitionTime": T0,
            }
        ],
    )
    [problem] = dg.pod_problems([stuck], NOW)
    assert (problem.reason, problem.stall) == ("Unschedulable", True)
    assert problem.message == f"pod damselfly-seed-peer-0: {text}"


def test_config_errors_get_a_grace_period_on_a_young_pod() -> None:
    text = 'configmap "damselfly-peer-config" not found'
    state = waiting("CreateContainerConfigError", text)
    young = pod("p", created=LATE, containers=[container("peer", state)])
    old = pod("p", created=T0, containers=[container("peer", state)])
    [transient] = dg.pod_problems([young], NOW)
    [stalled] = dg.pod_problems([old], NOW)
    assert (transient.reason, transient.stall) == ("CreateContainerConfigError", False)
    assert stalled.stall
    assert stalled.message == f"pod p container peer: {text}"


def test_ordinary_waiting_and_running_are_not_problems() -> None:
    starting = pod(
        "p",
        init=[container("cache-owner", {"terminated": {"exitCode": 0, "reason": "Completed"}})],
        containers=[container("peer", waiting("ContainerCreating"))],
    )
    running = pod("q", phase="Running", containers=[container("peer", {"running": {}})])
    assert dg.pod_problems([starting, running], NOW) == []


def test_terminating_pods_are_left_out() -> None:
    assert dg.pod_problems([pod("p", deleting=True, containers=[])], NOW) == []
    gone = pull_backoff_pod("p")
    gone["metadata"]["deletionTimestamp"] = LATE
    assert dg.pod_problems([gone], NOW) == []


def test_the_same_problem_on_many_pods_is_one_line_in_any_order() -> None:
    pods = [pull_backoff_pod(f"damselfly-peer-{i:02d}") for i in range(40)]
    pods.append(crash_pod("damselfly-peer-zz", {"exitCode": 2, "message": "bad config"}))
    first = dg.pod_problems(pods, NOW)
    random.Random(7).shuffle(pods)
    assert dg.pod_problems(pods, NOW) == first
    assert [p.reason for p in first] == ["ImagePullBackOff", "CrashLoopBackOff"]
    assert first[0].message.startswith(
        "pod damselfly-peer-00 (and 39 more) init container cache-owner: ImagePullBackOff: "
    )


def test_long_texts_are_clipped_to_one_line() -> None:
    huge = "x" * 5000 + "\nsecond line"
    bad = pod("p", containers=[container("peer", waiting("InvalidImageName", huge))])
    [problem] = dg.pod_problems([bad], NOW)
    assert len(problem.message) < dg.DETAIL_LIMIT + 100
    assert "\n" not in problem.message


# --- claims ----------------------------------------------------------------------------

NO_CLASS = "no persistent volumes available for this claim and no storage class is set"
PVC = "cache-damselfly-seed-peer-0"


def test_a_claim_that_cannot_bind_is_stalled_at_once() -> None:
    young = claim(PVC, created=LATE)
    # the PV controller files this one as Normal; its reason says it failed
    found = event("PersistentVolumeClaim", PVC, "FailedBinding", NO_CLASS, type_="Normal")
    problem = dg.claim_problem(young, [found], NOW)
    assert problem == dg.Problem(
        "PersistentVolumeClaimPending",
        f"PersistentVolumeClaim {PVC} is Pending: FailedBinding: {NO_CLASS}",
        True,
    )


def test_provisioning_failed_is_a_stall() -> None:
    text = 'storageclass.storage.k8s.io "fast" not found'
    found = event("PersistentVolumeClaim", PVC, "ProvisioningFailed", text)
    problem = dg.claim_problem(claim(PVC, created=LATE), [found], NOW)
    assert problem is not None
    assert problem.stall
    assert problem.message.endswith(f"ProvisioningFailed: {text}")


def test_a_silent_pending_claim_stalls_after_its_grace() -> None:
    young = dg.claim_problem(claim(PVC, created=LATE), [], NOW)
    old = dg.claim_problem(claim(PVC, created=T0), [], NOW)
    assert young is not None
    assert not young.stall
    assert old is not None
    assert old.stall
    assert young.message == old.message  # no ages in messages


def test_wait_for_first_consumer_is_not_a_stall() -> None:
    text = "waiting for first consumer to be created before binding"
    found = event("PersistentVolumeClaim", PVC, "WaitForFirstConsumer", text, type_="Normal")
    problem = dg.claim_problem(claim(PVC), [found], NOW)
    assert problem is not None
    assert not problem.stall


def test_bound_and_lost_claims() -> None:
    assert dg.claim_problem(claim(PVC, phase="Bound"), [], NOW) is None
    lost = dg.claim_problem(claim(PVC, phase="Lost"), [], NOW)
    assert lost is not None
    assert (lost.reason, lost.stall) == ("PersistentVolumeClaimLost", True)


def test_the_latest_event_about_the_claim_itself_counts() -> None:
    events = [
        event("PersistentVolumeClaim", PVC, "FailedBinding", NO_CLASS, last=T0),
        event(
            "PersistentVolumeClaim",
            PVC,
            "ExternalProvisioning",
            "Waiting for a volume to be created by the external provisioner 'ebs.csi.aws.com'",
            type_="Normal",
        ),
        event("PersistentVolumeClaim", "other", "FailedBinding", "not ours"),
        event("PersistentVolumeClaim", PVC, "FailedBinding", "an earlier claim", uid="old-uid"),
    ]
    problem = dg.claim_problem(claim(PVC, created=LATE), events, NOW)
    assert problem is not None
    assert "ExternalProvisioning" in problem.message
    assert not problem.stall  # provisioning under way, and the claim is young


# --- workloads -------------------------------------------------------------------------


def test_failed_create_on_the_daemonset_is_a_stall_with_the_admission_message() -> None:
    found = event(
        "DaemonSet", "damselfly-peer", "FailedCreate", FORBIDDEN, component="daemonset-controller"
    )
    [problem] = dg.workload_problems(daemonset(), [found], [])
    assert (problem.reason, problem.stall) == ("FailedCreate", True)
    assert problem.message == f"DaemonSet damselfly-peer: {FORBIDDEN_SHOWN}"


def test_failed_create_messages_do_not_change_with_each_generated_pod_name() -> None:
    texts = set()
    for suffix in ("9xq2w", "k62lw"):
        text = FORBIDDEN.replace("9xq2w", suffix)
        for prefix in ("", "(combined from similar events): "):
            found = event("DaemonSet", "damselfly-peer", "FailedCreate", prefix + text)
            [problem] = dg.workload_problems(daemonset(), [found], [])
            texts.add(problem.message)
    assert texts == {f"DaemonSet damselfly-peer: {FORBIDDEN_SHOWN}"}


def test_a_failure_older_than_the_newest_pod_was_overcome() -> None:
    found = event("DaemonSet", "damselfly-peer", "FailedCreate", FORBIDDEN, last=T0)
    later_pod = pod("damselfly-peer-abcde", created=LATE)
    assert dg.workload_problems(daemonset(), [found], [later_pod]) == []
    older_pod = pod("damselfly-peer-abcde", created=T0)
    assert dg.workload_problems(daemonset(), [found], [older_pod]) != []


def test_failed_create_of_an_earlier_daemonset_of_the_same_name_is_ignored() -> None:
    found = event("DaemonSet", "damselfly-peer", "FailedCreate", FORBIDDEN, uid="old")
    assert dg.workload_problems(daemonset(), [found], []) == []


def test_a_deployments_replica_failure_condition() -> None:
    text = (
        'pods "damselfly-scheduler-5d8f9c7b6-" is forbidden: exceeded quota: compute, '
        "requested: cpu=1, used: cpu=4, limited: cpu=4"
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "damselfly-scheduler", "generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Available",
                    "status": "False",
                    "reason": "MinimumReplicasUnavailable",
                    "message": "Deployment does not have minimum availability.",
                },
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": text,
                },
            ],
        },
    }
    [problem] = dg.workload_problems(deployment, [], [])
    assert problem == dg.Problem("FailedCreate", f"Deployment damselfly-scheduler: {text}", True)


def test_diagnose_puts_stalls_first_and_keeps_the_workload_claims_pods_order() -> None:
    statefulset = {"kind": "StatefulSet", "metadata": {"name": "damselfly-seed-peer"}}
    wait = event("PersistentVolumeClaim", PVC, "WaitForFirstConsumer", "waiting", type_="Normal")
    unschedulable = pod(
        "damselfly-seed-peer-0",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m"}
        ],
    )
    problems = dg.diagnose(statefulset, [unschedulable], [claim(PVC)], [wait], NOW)
    assert [(p.reason, p.stall) for p in problems] == [
        ("Unschedulable", True),
        ("PersistentVolumeClaimPending", False),
    ]


def test_describe_lists_a_few_and_counts_the_rest() -> None:
    problems = [dg.Problem("R", f"m{i}", True) for i in range(5)]
    assert dg.describe(problems) == "m0; m1; m2; and 2 more"
