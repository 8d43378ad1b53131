"""Rule propagation, pure parts: the shared rule set, peer reports, the Propagated condition,
the peer's watch bookkeeping, and how the operator renders API mode."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from damselfly.api.report import (
    PeerReport,
    lease_body,
    lease_name,
    live_reports,
    micro_time,
    next_expiry,
    peer_report,
    stale_leases,
)
from damselfly.api.rules import render_rules, ruleset_from_objects
from damselfly.api.v1alpha1 import P2PCluster, ProxyRule
from damselfly.config.load import ConfigError
from damselfly.config.peer import parse_config
from damselfly.operator import status as st
from damselfly.operator.render import peer_config, peer_rbac
from damselfly.peer.rules.kubesource import (
    Resync,
    apply_event,
    backoff_delay,
    invalid_summary,
    mine,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def raw_rule(name: str, regex: str, cluster: str = "c", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "ProxyRule",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
        "spec": {"clusterRef": {"name": cluster}, "regex": regex, **spec},
    }


def cluster(rule_source: str = "API") -> P2PCluster:
    return P2PCluster.model_validate(
        {
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"image": "damselfly:dev", "ruleSource": rule_source},
        }
    )


# --- the shared rule set ---------------------------------------------------------------


def test_peer_and_operator_compute_the_same_digest_from_the_same_objects() -> None:
    raws = [
        raw_rule("b", "/b/", priority=5),
        raw_rule("a", "/a/", priority=5),
        raw_rule("z", "/z/", priority=1, filteredQueryParams=["sig"]),
        raw_rule("off", "/off/", disabled=True),
        raw_rule("bad", "(?<=x)y"),
        raw_rule("elsewhere", "/e/", cluster="other"),
        {"metadata": {"name": "broken"}, "spec": {"clusterRef": {"name": "c"}}},  # no regex
    ]
    peer_side = ruleset_from_objects("c", raws)
    parsed = [ProxyRule.model_validate(r) for r in raws if "regex" in r["spec"]]
    operator_side = render_rules("c", parsed)
    assert peer_side.digest == operator_side.digest
    assert [r.regex for r in peer_side.ruleset.rules] == ["/z/", "/a/", "/b/"]
    summary = invalid_summary(peer_side, len(mine("c", raws)), len(peer_side.verdicts))
    assert summary is not None
    assert "ProxyRule bad" in summary
    assert "1 ProxyRule(s) do not validate" in summary


def test_nothing_left_out_means_no_summary() -> None:
    rendered = ruleset_from_objects("c", [raw_rule("a", "/a/")])
    assert invalid_summary(rendered, 1, 1) is None


# --- the watch's bookkeeping -------------------------------------------------------------


def test_watch_events_fold_into_the_object_map() -> None:
    objects: dict[str, dict[str, Any]] = {}
    a = raw_rule("a", "/a/")
    assert apply_event(objects, {"type": "ADDED", "object": a}) == "1"
    changed = {**a, "metadata": {**a["metadata"], "resourceVersion": "7"}}
    assert apply_event(objects, {"type": "MODIFIED", "object": changed}) == "7"
    assert objects["a"]["metadata"]["resourceVersion"] == "7"
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert apply_event(objects, bookmark) == "9"
    assert apply_event(objects, {"type": "DELETED", "object": changed}) == "7"
    assert objects == {}


def test_410_gone_and_any_error_event_mean_resync() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    with pytest.raises(Resync, match="410"):
        apply_event({}, gone)


def test_backoff_doubles_to_a_cap_and_jitter_spreads_it() -> None:
    assert backoff_delay(1, 30, 1.0) == pytest.approx(0.25 * 1.0)
    assert backoff_delay(3, 30, 1.0) == pytest.approx(1.0)
    assert backoff_delay(20, 30, 1.0) == pytest.approx(30)
    assert backoff_delay(20, 30, 0.0) == pytest.approx(15)


def test_only_rules_of_this_cluster_count() -> None:
    raws = [raw_rule("a", "/a/"), raw_rule("b", "/b/", cluster="other"), {"metadata": {}}]
    assert [r["metadata"]["name"] for r in mine("c", raws)] == ["a"]


# --- reports -----------------------------------------------------------------------------


def test_lease_names_are_valid_stable_and_distinct() -> None:
    name = lease_name("c", "Node_1.Example.COM")
    assert name.startswith("c-rules-node-1-example-com-")
    assert name == lease_name("c", "Node_1.Example.COM")
    assert lease_name("c", "a.b") != lease_name("c", "a-b")
    assert len(lease_name("abcdefghij" * 4, "x" * 300)) <= 253
    assert lease_name("c", "___").startswith("c-rules-peer-")


def test_a_lease_body_reads_back_as_the_same_report() -> None:
    body = lease_body("c", "ns", "node-1", "abcdef0123456789", 15, NOW)
    assert body["spec"]["renewTime"] == "2026-01-02T03:04:05.678901Z" == micro_time(NOW)
    report = peer_report(body)
    assert report == PeerReport("node-1", "abcdef0123456789", NOW.timestamp() + 15)


def test_expired_and_malformed_reports_do_not_count() -> None:
    now = NOW.timestamp()
    live = lease_body("c", "ns", "b-live", "h1", 15, NOW)
    old = lease_body("c", "ns", "a-old", "h1", 15, datetime.fromtimestamp(now - 60, UTC))
    malformed = {"metadata": {"labels": {}}, "spec": {}}
    reports = live_reports([live, old, malformed], now)
    assert [r.host for r in reports] == ["b-live"]
    assert next_expiry(reports, now) == pytest.approx(15)
    assert next_expiry([], now) is None


def test_long_expired_reports_are_housekeeping() -> None:
    now = NOW.timestamp()
    fresh = lease_body("c", "ns", "fresh", "h", 15, NOW)
    expired = lease_body("c", "ns", "recent", "h", 15, datetime.fromtimestamp(now - 60, UTC))
    ancient = lease_body("c", "ns", "gone", "h", 15, datetime.fromtimestamp(now - 3600, UTC))
    assert stale_leases([fresh, expired, ancient], now) == [lease_name("c", "gone")]


def test_propagated_condition() -> None:
    now = NOW.timestamp()
    reports = [
        PeerReport("n1", "new", now + 10),
        PeerReport("n2", "old", now + 10),
        PeerReport("n3", "new", now + 10),
    ]
    prop = st.propagation(reports, "new")
    assert prop.text == "2/3"
    cond = st.propagated_condition(prop)
    assert (cond.status, cond.reason) == (False, "Propagating")
    assert "behind: n2" in cond.message
    done = st.propagated_condition(st.propagation(reports[:1], "new"))
    assert (done.status, done.reason, done.message) == (
        True,
        "Propagated",
        "1/1 peers run rules new",
    )
    none = st.propagated_condition(st.propagation([], "new"))
    assert (none.status, none.reason) == (None, "NoReports")


def test_rule_status_carries_propagation_and_keeps_transition_times() -> None:
    accepted = st.Cond(st.ACCEPTED, True, "Valid")
    applied = st.Cond(st.APPLIED, True, "Applied")
    propagated = st.Cond(st.PROPAGATED, False, "Propagating", "1/2")
    first = st.rule_status(None, 1, accepted, applied, "t1", propagated, "1/2")
    assert first["propagation"] == "1/2"
    assert [c["type"] for c in first["conditions"]] == ["Accepted", "Applied", "Propagated"]
    again = st.rule_status(first, 1, accepted, applied, "t2", propagated, "1/2")
    assert again == first  # nothing changed: no write
    without = st.rule_status(None, 1, accepted, applied, "t1")
    assert "propagation" not in without


# --- rendering API mode ------------------------------------------------------------------


def test_api_rule_source_renders_a_watching_peer_config() -> None:
    config = peer_config(cluster("API"), seed=False)
    assert config.rules.source == "api"
    assert config.rules.api is not None
    assert (config.rules.api.cluster_name, config.rules.api.namespace) == ("c", "ns")
    assert config.rules.file == "/etc/damselfly/rules.yaml"  # the start-up set
    assert peer_config(cluster("ConfigMap"), seed=False).rules.source == "file"


def test_peer_role_may_write_leases_but_not_pods() -> None:
    role = next(o for o in peer_rbac(cluster()) if o["kind"] == "Role")
    by_group = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
    assert set(by_group[("coordination.k8s.io", "leases")]) == {"get", "create", "patch", "delete"}
    assert by_group[("damselfly.io", "proxyrules")] == ["get", "list", "watch"]
    assert all("pods" not in r["resources"] for r in role["rules"])


def test_api_source_needs_its_section() -> None:
    with pytest.raises(ConfigError, match=r"rules\.source api needs rules\.api"):
        parse_config({"rules": {"source": "api"}})
    ok = parse_config({"rules": {"source": "api", "api": {"clusterName": "c"}}})
    assert ok.rules.api is not None
    assert ok.rules.api.report is True
