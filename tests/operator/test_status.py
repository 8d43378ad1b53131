"""kstatus conditions computed from children's status, as pure functions."""

from __future__ import annotations

from typing import Any

from damselfly.operator import status as st
from damselfly.operator.diagnose import Problem


def deployment(
    replicas: int, ready: int, updated: int, generation: int = 1, seen: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": seen, "readyReplicas": ready, "updatedReplicas": updated},
    }


def daemonset(desired: int, ready: int, updated: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "updatedNumberScheduled": updated,
        },
    }


def observed(**kw: Any) -> st.Observed:
    base: dict[str, Any] = {
        "scheduler": deployment(1, 1, 1),
        "seed_peers": deployment(1, 1, 1),
        "peers": daemonset(3, 3, 3),
        "rules": 2,
        "rules_hash": "abc",
        "node_port": 30950,
    }
    base.update(kw)
    return st.Observed(**base)


def by_type(conds: list[st.Cond]) -> dict[str, st.Cond]:
    return {c.type: c for c in conds}


def test_all_available_is_ready_and_not_reconciling() -> None:
    conds, fields = st.cluster_conditions(observed())
    c = by_type(conds)
    assert c["Ready"].status is True
    assert c["Reconciling"].status is False
    assert c["Stalled"].status is False
    assert fields["peers"] == {"desired": 3, "ready": 3, "updated": 3}
    assert fields["rules"] == 2
    assert fields["nodePort"] == 30950


def test_peers_not_ready_means_reconciling_with_counts_in_the_message() -> None:
    conds, _ = st.cluster_conditions(observed(peers=daemonset(8, 7, 8)))
    c = by_type(conds)
    assert c["Ready"].status is False
    assert c["Reconciling"].status is True
    assert c["PeersAvailable"].reason == "ReplicasNotReady"
    assert "7/8 peers ready" in c["Ready"].message


def test_unobserved_generation_is_not_available() -> None:
    conds, _ = st.cluster_conditions(observed(scheduler=deployment(1, 1, 1, generation=2, seen=1)))
    assert by_type(conds)["SchedulerAvailable"].reason == "Progressing"


def test_apply_error_is_stalled() -> None:
    conds, _ = st.cluster_conditions(observed(error="StatefulSet: forbidden"))
    c = by_type(conds)
    assert c["Stalled"].status is True
    assert c["Reconciling"].status is False
    assert c["Ready"].reason == "ApplyFailed"


def test_unchanged_status_keeps_transition_times_so_nothing_is_written() -> None:
    conds, fields = st.cluster_conditions(observed())
    first = st.cluster_status(None, 3, conds, fields, "2030-01-01T00:00:00Z")
    again = st.cluster_status(first, 3, conds, fields, "2030-01-02T00:00:00Z")
    assert again == first
    worse, _ = st.cluster_conditions(observed(peers=daemonset(3, 2, 3)))
    changed = st.cluster_status(first, 3, worse, fields, "2030-01-02T00:00:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in changed["conditions"]}
    assert times["Ready"] == "2030-01-02T00:00:00Z"
    assert times["SchedulerAvailable"] == "2030-01-01T00:00:00Z"
    assert all(c["observedGeneration"] == 3 for c in changed["conditions"])
    assert [c["type"] for c in st.transitions(first["conditions"], changed["conditions"])] == [
        "Ready",
        "Reconciling",
        "PeersAvailable",
    ]


def test_suspend_keeps_availability_and_stops_reconciling() -> None:
    conds, fields = st.cluster_conditions(observed())
    before = st.cluster_status(None, 1, conds, fields, "t0")
    suspended = by_type(st.suspended_conditions(before["conditions"]))
    assert suspended["Ready"].status is True
    assert suspended["Reconciling"].reason == "Suspended"


def test_long_messages_keep_head_and_tail() -> None:
    text = "StatefulSet x is invalid: " + "{...}" * 2000 + ": field is immutable"
    short = st.shorten(text)
    assert len(short) <= st.MAX_MESSAGE
    assert short.startswith("StatefulSet x is invalid")
    assert short.endswith("field is immutable")
    assert st.shorten("brief") == "brief"


# --- problems from the children (damselfly.operator.diagnose) ---------------------------

PULL = Problem(
    "ImagePullBackOff",
    "pod damselfly-peer-x7k2p init container cache-owner: ImagePullBackOff: Back-off pulling "
    'image "ghcr.io/acme/damselfly:nope"',
    True,
)
WAITING_FOR_CONSUMER = Problem(
    "PersistentVolumeClaimPending",
    "PersistentVolumeClaim cache-damselfly-seed-peer-0 is Pending: WaitForFirstConsumer: waiting",
    False,
)


def test_a_stall_makes_the_cluster_stalled_with_the_childs_reason() -> None:
    conds, _ = st.cluster_conditions(observed(peers=daemonset(3, 0, 3), problems={"peer": [PULL]}))
    c = by_type(conds)
    assert c["PeersAvailable"].status is False
    assert c["PeersAvailable"].reason == "ImagePullBackOff"
    assert c["PeersAvailable"].message == f"0/3 peers ready: {PULL.message}"
    assert (c["Ready"].status, c["Ready"].reason) == (False, "ImagePullBackOff")
    assert c["Ready"].message == f"PeersAvailable: 0/3 peers ready: {PULL.message}"
    assert (c["Reconciling"].status, c["Reconciling"].reason) == (False, "ImagePullBackOff")
    assert (c["Stalled"].status, c["Stalled"].reason) == (True, "ImagePullBackOff")
    assert c["Stalled"].message == c["Ready"].message


def test_the_first_stalled_component_names_the_reason() -> None:
    failed = Problem("FailedCreate", "StatefulSet damselfly-seed-peer: forbidden", True)
    conds, _ = st.cluster_conditions(
        observed(
            seed_peers=deployment(1, 0, 1),
            peers=daemonset(3, 0, 3),
            problems={"seed-peer": [failed], "peer": [PULL]},
        )
    )
    c = by_type(conds)
    assert c["Stalled"].reason == "FailedCreate"
    assert "SeedPeersAvailable: 0/1 seed peers ready: StatefulSet" in c["Stalled"].message
    assert "PeersAvailable: 0/3 peers ready: pod damselfly-peer-x7k2p" in c["Stalled"].message


def test_a_transient_problem_explains_but_keeps_progressing() -> None:
    conds, _ = st.cluster_conditions(
        observed(seed_peers=deployment(1, 0, 1), problems={"seed-peer": [WAITING_FOR_CONSUMER]})
    )
    c = by_type(conds)
    assert c["SeedPeersAvailable"].reason == "PersistentVolumeClaimPending"
    assert (c["Reconciling"].status, c["Reconciling"].reason) == (True, "Progressing")
    assert (c["Stalled"].status, c["Ready"].reason) == (False, "Progressing")


def test_problems_of_an_available_component_change_nothing() -> None:
    plain, _ = st.cluster_conditions(observed())
    with_problems, _ = st.cluster_conditions(observed(problems={"peer": [PULL]}))
    assert with_problems == plain


def test_a_stall_that_goes_away_returns_to_progressing_then_available() -> None:
    stalled, fields = st.cluster_conditions(
        observed(peers=daemonset(3, 0, 3), problems={"peer": [PULL]})
    )
    first = st.cluster_status(None, 1, stalled, fields, "t0")
    again = st.cluster_status(first, 1, stalled, fields, "t1")
    assert again == first  # the same problem writes nothing
    progressing, _ = st.cluster_conditions(observed(peers=daemonset(3, 1, 3)))
    second = st.cluster_status(first, 1, progressing, fields, "t2")
    c = {x["type"]: x for x in second["conditions"]}
    assert (c["Stalled"]["status"], c["Reconciling"]["status"]) == ("False", "True")
    assert c["PeersAvailable"]["reason"] == "ReplicasNotReady"
    ready, _ = st.cluster_conditions(observed())
    third = st.cluster_status(second, 1, ready, fields, "t3")
    assert {x["type"]: x["status"] for x in third["conditions"]}["Ready"] == "True"


def test_a_stall_for_a_new_reason_is_notable() -> None:
    pull, fields = st.cluster_conditions(
        observed(peers=daemonset(3, 0, 3), problems={"peer": [PULL]})
    )
    first = st.cluster_status(None, 1, pull, fields, "t0")
    crash = Problem("CrashLoopBackOff", "pod p container peer: exit code 2", True)
    crashing, _ = st.cluster_conditions(
        observed(peers=daemonset(3, 0, 3), problems={"peer": [crash]})
    )
    second = st.cluster_status(first, 1, crashing, fields, "t1")
    assert st.transitions(first["conditions"], second["conditions"]) == []
    [news] = st.notable(first["conditions"], second["conditions"])
    assert (news["type"], news["reason"]) == ("Stalled", "CrashLoopBackOff")
