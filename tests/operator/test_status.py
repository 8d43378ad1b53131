"""kstatus conditions computed from children's status, as pure functions."""

from __future__ import annotations

from typing import Any

from damselfly.operator import status as st


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
