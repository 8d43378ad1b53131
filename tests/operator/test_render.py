"""Pure rendering of a P2PCluster's children: what the operator would apply."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from damselfly.api.ruleset import RuleSet
from damselfly.api.v1alpha1 import P2PCluster, ProxyRule
from damselfly.config.peer import parse_config
from damselfly.operator.render import (
    CONFIG_HASH_ANNOTATION,
    RULES_KEY,
    render_cluster,
    render_rules,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def example_docs() -> list[dict[str, Any]]:
    return [d for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]


def cluster(**spec: Any) -> P2PCluster:
    return P2PCluster.model_validate(
        {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "P2PCluster",
            "metadata": {
                "name": "c1",
                "namespace": "ns",
                "uid": "uid-1",
                "labels": {"argocd.argoproj.io/instance": "team-a", "team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            },
            "spec": {"image": "damselfly:dev", **spec},
        }
    )


def rule(name: str, regex: str, priority: int = 100, **spec: Any) -> ProxyRule:
    return ProxyRule.model_validate(
        {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "ProxyRule",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterRef": {"name": "c1"}, "regex": regex, "priority": priority, **spec},
        }
    )


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def test_children_are_named_owned_and_labelled_without_the_parents_labels() -> None:
    objects = render_cluster(cluster(), []).objects
    expected = {
        ("ConfigMap", "c1-peer-config"),
        ("ConfigMap", "c1-seed-peer-config"),
        ("ConfigMap", "c1-rules"),
        ("ServiceAccount", "c1-peer"),
        ("Role", "c1-peer"),
        ("RoleBinding", "c1-peer"),
        ("Service", "c1-scheduler"),
        ("Service", "c1-seed-peer"),
        ("Service", "c1-proxy"),
        ("Deployment", "c1-scheduler"),
        ("StatefulSet", "c1-seed-peer"),
        ("DaemonSet", "c1-peer"),
    }
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == expected
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "damselfly.io/v1alpha1",
                "kind": "P2PCluster",
                "name": "c1",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert "team" not in meta["labels"]
        assert "argocd.argoproj.io/instance" not in meta["labels"]
        assert "app.kubernetes.io/instance" not in meta["labels"]
        assert "annotations" not in meta


def test_peer_config_is_what_the_peer_accepts_and_carries_the_spec() -> None:
    c = cluster(peer={"cache": {"quota": "10Gi", "taskTTL": "2h"}}, proxy={"port": 8080})
    objects = render_cluster(c, []).objects
    text = by_kind(objects, "ConfigMap", "c1-peer-config")["data"]["peer.yaml"]
    config = parse_config(yaml.safe_load(text))
    assert config.storage.quota == 10 * 2**30
    assert config.storage.task_ttl == 7200
    assert config.proxy.port == 8080
    assert not config.seed
    assert config.rules.file == "/etc/damselfly/rules.yaml"
    assert config.scheduler.addresses == ["c1-scheduler.ns.svc:8002"]
    seed = parse_config(
        yaml.safe_load(by_kind(objects, "ConfigMap", "c1-seed-peer-config")["data"]["peer.yaml"])
    )
    assert seed.seed
    assert seed.storage.quota == 20 * 2**30
    ds = by_kind(objects, "DaemonSet", "c1-peer")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["peer", "--config", "/etc/damselfly/peer.yaml"]
    assert {p["containerPort"] for p in container["ports"]} == {8080, 65002, 65003}
    sts = by_kind(objects, "StatefulSet", "c1-seed-peer")
    assert sts["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--seed"


def test_peer_config_change_rolls_peers_but_rule_change_does_not() -> None:
    base = render_cluster(cluster(), [rule("a", "^https://a/")])
    more_rules = render_cluster(cluster(), [rule("a", "^https://a/"), rule("b", "^https://b/")])
    new_quota = render_cluster(cluster(peer={"cache": {"quota": "99Gi"}}), [])

    def template(r: Any) -> dict[str, Any]:
        tpl: dict[str, Any] = by_kind(r.objects, "DaemonSet", "c1-peer")["spec"]["template"]
        return tpl

    assert template(base) == template(more_rules)
    assert base.rules.digest != more_rules.rules.digest
    assert (
        template(new_quota)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        != template(base)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    )


def test_rules_are_ordered_by_priority_then_name_and_bad_ones_left_out() -> None:
    rendered = render_rules(
        "c1",
        [
            rule("zeta", "^https://z/", priority=10),
            rule("alpha", "^https://a/", priority=10),
            rule("first", "^https://f/", priority=1, useTLS=True, filteredQueryParams=["sig"]),
            rule("broken", "^https://(unclosed/"),
            rule("lookahead", "^https://x/(?=y)"),  # Python re takes it, RE2 does not
            rule("off", "^https://off/", disabled=True),
            ProxyRule.model_validate(
                {
                    "metadata": {"name": "other", "namespace": "ns"},
                    "spec": {"clusterRef": {"name": "c2"}, "regex": "x"},
                }
            ),
        ],
    )
    ruleset = RuleSet.from_yaml(rendered.yaml())
    assert [r.regex for r in ruleset.rules] == ["^https://f/", "^https://a/", "^https://z/"]
    assert ruleset.rules[0].use_tls
    assert ruleset.rules[0].filtered_query_params == ["sig"]
    verdicts = {v.rule.name: v for v in rendered.verdicts}
    assert "other" not in verdicts
    assert verdicts["broken"].reason == "InvalidRegex"
    assert not verdicts["broken"].accepted
    assert "RE2" in verdicts["lookahead"].message
    assert verdicts["off"].accepted
    assert not verdicts["off"].applied
    assert verdicts["off"].reason == "Disabled"


def test_rules_configmap_holds_one_ruleset_key() -> None:
    objects = render_cluster(cluster(), [rule("a", "^https://a/")]).objects
    data = by_kind(objects, "ConfigMap", "c1-rules")["data"]
    assert list(data) == [RULES_KEY]
    assert RuleSet.from_yaml(data[RULES_KEY]).rules[0].regex == "^https://a/"


def test_seed_storage_pvc_or_hostpath() -> None:
    pvc = by_kind(
        render_cluster(
            cluster(seedPeer={"storage": {"size": "5Gi", "storageClassName": "fast"}}), []
        ).objects,
        "StatefulSet",
        "c1-seed-peer",
    )
    claim = pvc["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi"
    assert claim["storageClassName"] == "fast"
    host = by_kind(
        render_cluster(cluster(seedPeer={"storage": {"hostPath": "/data/seed"}}), []).objects,
        "StatefulSet",
        "c1-seed-peer",
    )
    assert "volumeClaimTemplates" not in host["spec"]
    volumes = {v["name"]: v for v in host["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["hostPath"]["path"] == "/data/seed"
    # Both get the ownership fix: kubelet applies no fsGroup to hostPath or local PVs.
    for seed in (pvc, host):
        init = seed["spec"]["template"]["spec"]["initContainers"]
        assert [c["name"] for c in init] == ["cache-owner"]
        assert init[0]["command"] == ["chown", "65532:65532", "/var/cache/damselfly"]


def test_node_peers_listen_on_the_node_address_seeds_do_not() -> None:
    def proxy_port(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        container = by_kind(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
        return next(p for p in container["ports"] if p["name"] == "proxy")

    default = render_cluster(cluster(), []).objects
    assert proxy_port(default, "DaemonSet", "c1-peer")["hostPort"] == 65001
    assert "hostPort" not in proxy_port(default, "StatefulSet", "c1-seed-peer")
    moved = render_cluster(cluster(proxy={"port": 8080, "hostPort": 18080}), []).objects
    assert proxy_port(moved, "DaemonSet", "c1-peer") == {
        "name": "proxy",
        "containerPort": 8080,
        "hostPort": 18080,
        "protocol": "TCP",
    }
    off = render_cluster(cluster(proxy={"hostPort": 0}), []).objects
    assert "hostPort" not in proxy_port(off, "DaemonSet", "c1-peer")


def test_peer_scheduling_and_nodeport() -> None:
    objects = render_cluster(
        cluster(
            peer={
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "resources": {"requests": {"cpu": "100m", "memory": 1}},
            },
            proxy={"nodePort": 31000},
        ),
        [],
    ).objects
    pod = by_kind(objects, "DaemonSet", "c1-peer")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": 1}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["hostPath"] == {
        "path": "/var/cache/damselfly",
        "type": "DirectoryOrCreate",
    }
    svc = by_kind(objects, "Service", "c1-proxy")["spec"]
    assert svc["type"] == "NodePort"
    assert svc["externalTrafficPolicy"] == "Local"
    assert svc["ports"][0]["nodePort"] == 31000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"peer": {"cache": {"lowWatermarkPercent": 95}}}, "lowWatermarkPercent must be below"),
        ({"seedPeer": {"storage": {"hostPath": "/x", "storageClassName": "s"}}}, "not both"),
        ({"proxy": {"port": 65003}}, "taken by the peer"),
        ({"proxy": {"nodePort": 80}}, "greater than or equal to 30000"),
        ({"ruleSource": "Git"}, "'ConfigMap' or 'API'"),
        ({"peer": {"cache": {"quota": "lots"}}}, "is not a size"),
    ],
)
def test_models_reject_what_the_api_server_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cluster(**spec)


def test_cluster_name_must_fit_child_names() -> None:
    with pytest.raises(ValidationError, match="at most 40 characters"):
        P2PCluster.model_validate({"metadata": {"name": "a" * 41}, "spec": {"image": "i"}})


def run_render(*files: Path | str) -> subprocess.CompletedProcess[str]:
    args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(
        [sys.executable, "-m", "damselfly.cli", "render", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_render_command_prints_the_examples_children() -> None:
    result = run_render(*EXAMPLES)
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    rules = RuleSet.from_yaml(by_kind(objects, "ConfigMap", "damselfly-rules")["data"][RULES_KEY])
    assert len(rules.rules) == len([d for d in example_docs() if d["kind"] == "ProxyRule"])
    assert (
        by_kind(objects, "DaemonSet", "damselfly-peer")["metadata"].get("ownerReferences") is None
    )


def test_render_command_explains_bad_input(tmp_path: Path) -> None:
    docs = copy.deepcopy(example_docs())
    for doc in docs:
        if doc["kind"] == "P2PCluster":
            doc["spec"]["scheduler"] = {"replicas": 0}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    result = run_render(bad)
    assert result.returncode == 1
    assert "scheduler.replicas" in result.stderr
    assert "greater than or equal to 1" in result.stderr
