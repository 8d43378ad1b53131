"""The operator against a real kube-apiserver: what a user of kubectl would see.

The API server runs no workload controllers, so where a test needs "the peers
are ready" it writes the children's status itself, as their controllers would.
kube-controller-manager runs only the garbage collector.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.api.ruleset import RuleSet
from damselfly.operator.render import CONFIG_HASH_ANNOTATION, content_hash
from tests.k8s.conftest import Kubectl
from tests.k8s.controlplane import REPO, ControlPlane, wait_for
from tests.support.procs import ManagedProcess

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(180)]

EXAMPLES = REPO / "examples"
CLUSTER = "damselfly"
CHILDREN = [
    ("configmap", "damselfly-peer-config"),
    ("configmap", "damselfly-seed-peer-config"),
    ("configmap", "damselfly-rules"),
    ("serviceaccount", "damselfly-peer"),
    ("role", "damselfly-peer"),
    ("rolebinding", "damselfly-peer"),
    ("service", "damselfly-scheduler"),
    ("service", "damselfly-seed-peer"),
    ("service", "damselfly-proxy"),
    ("deployment", "damselfly-scheduler"),
    ("statefulset", "damselfly-seed-peer"),
    ("daemonset", "damselfly-peer"),
]
WAIT = 30.0


NODE_PORTS: dict[str, int] = {}
_next_port = itertools.count(30951)


def examples_manifest(node_port: int) -> str:
    """examples/, with the cluster's NodePort changed: NodePorts are cluster-wide."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
    for doc in docs:
        if doc["kind"] == "P2PCluster":
            doc["spec"]["proxy"]["nodePort"] = node_port
    return yaml.safe_dump_all(docs)


@pytest.fixture
def ns(namespace: str, kubectl: Kubectl, operator: ManagedProcess) -> str:
    """A namespace with the examples applied and their children created."""
    NODE_PORTS[namespace] = next(_next_port)
    kubectl.apply(examples_manifest(NODE_PORTS[namespace]), namespace)
    try:
        kubectl.wait_get("daemonset", "damselfly-peer", namespace, timeout=WAIT)
    except AssertionError as exc:
        cluster = kubectl.get("p2pcluster", CLUSTER, namespace) or {}
        raise AssertionError(f"{exc}\nP2PCluster status: {cluster.get('status')}") from None
    return namespace


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_condition(
    kubectl: Kubectl,
    kind: str,
    name: str,
    ns: str,
    type_: str,
    status: str,
    reason: str | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kubectl.get(kind, name, ns)
        cond = condition(obj, type_)
        if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
            return obj
        return None

    found: dict[str, Any] = wait_for(check, WAIT, f"{kind}/{name} {type_}={status} {reason or ''}")
    return found


def rules_regexes(kubectl: Kubectl, ns: str) -> list[str]:
    cm = kubectl.must_get("configmap", "damselfly-rules", ns)
    return [r.regex for r in RuleSet.from_yaml(cm["data"]["rules.yaml"]).rules]


def example_rules() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("proxyrule-*.yaml"))]
    return {d["metadata"]["name"]: d for d in docs}


def simulate_ready(kubectl: Kubectl, ns: str, peers: int = 3) -> None:
    """Write the status the Deployment/StatefulSet/DaemonSet controllers would write."""
    for kind, name in [
        ("deployment", "damselfly-scheduler"),
        ("statefulset", "damselfly-seed-peer"),
    ]:
        obj = kubectl.must_get(kind, name, ns)
        n = obj["spec"]["replicas"]
        status = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": n,
            "readyReplicas": n,
            "updatedReplicas": n,
            "availableReplicas": n,
        }
        kubectl.patch_status(kind, name, ns, status)
    ds = kubectl.must_get("daemonset", "damselfly-peer", ns)
    kubectl.patch_status(
        "daemonset",
        "damselfly-peer",
        ns,
        {
            "observedGeneration": ds["metadata"]["generation"],
            "desiredNumberScheduled": peers,
            "currentNumberScheduled": peers,
            "numberMisscheduled": 0,
            "numberReady": peers,
            "updatedNumberScheduled": peers,
            "numberAvailable": peers,
        },
    )


def test_examples_create_the_expected_children(kubectl: Kubectl, ns: str) -> None:
    cluster = kubectl.must_get("p2pcluster", CLUSTER, ns)
    for kind, name in CHILDREN:
        obj = kubectl.wait_get(kind, name, ns)
        owners = obj["metadata"].get("ownerReferences", [])
        assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
            ("P2PCluster", cluster["metadata"]["uid"], True)
        ], f"{kind}/{name}"
        managers = {m["manager"] for m in obj["metadata"]["managedFields"]}
        assert "damselfly-operator" in managers, f"{kind}/{name}: {managers}"
    # defaults from the CRD schema are visible to the user
    assert cluster["spec"]["peer"]["cache"]["highWatermarkPercent"] == 90
    assert cluster["spec"]["proxy"]["port"] == 65001
    # the peers' config is hashed into their pod template
    peer_yaml = kubectl.must_get("configmap", "damselfly-peer-config", ns)["data"]["peer.yaml"]
    ds = kubectl.must_get("daemonset", "damselfly-peer", ns)
    template = ds["spec"]["template"]
    assert template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == content_hash(peer_yaml)
    assert yaml.safe_load(peer_yaml)["storage"]["quota"] == 50 * 2**30
    container = template["spec"]["containers"][0]
    assert container["args"] == ["peer", "--config", "/etc/damselfly/peer.yaml"]
    assert container["image"] == "damselfly:dev"
    assert template["spec"]["tolerations"] == [{"operator": "Exists"}]
    svc = kubectl.must_get("service", "damselfly-proxy", ns)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["nodePort"] == NODE_PORTS[ns]
    sts = kubectl.must_get("statefulset", "damselfly-seed-peer", ns)
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "20Gi"
    # rules, ordered by priority: LFS/S3 (100), Hugging Face (200), OCI (300)
    rules = example_rules()
    assert rules_regexes(kubectl, ns) == [
        rules[n]["spec"]["regex"] for n in ("git-lfs-s3", "huggingface-cdn", "oci-blobs")
    ]
    for name in rules:
        rule = wait_condition(kubectl, "proxyrule", name, ns, "Applied", "True")
        assert condition(rule, "Accepted")["status"] == "True"
    # the category lists both kinds
    listed = kubectl.run("get", "damselfly", "-n", ns, "-o", "name").stdout.split()
    assert f"p2pcluster.damselfly.io/{CLUSTER}" in listed
    assert {f"proxyrule.damselfly.io/{n}" for n in rules} <= set(listed)


def test_status_follows_the_children_to_ready(kubectl: Kubectl, ns: str) -> None:
    pending = wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Reconciling", "True")
    assert condition(pending, "Ready")["status"] == "False"
    assert condition(pending, "Stalled")["status"] == "False"
    simulate_ready(kubectl, ns, peers=3)
    ready = wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Ready", "True")
    status = ready["status"]
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert status["peers"] == {"desired": 3, "ready": 3, "updated": 3}
    assert status["seedPeers"] == {"desired": 1, "ready": 1, "updated": 1}
    assert status["rules"] == 3
    assert status["nodePort"] == NODE_PORTS[ns]
    for type_ in ("SchedulerAvailable", "SeedPeersAvailable", "PeersAvailable"):
        cond = condition(ready, type_)
        assert cond["status"] == "True", cond
        assert re.fullmatch(r"[A-Z][A-Za-z]+", cond["reason"])
        assert cond["observedGeneration"] == ready["metadata"]["generation"]
    assert condition(ready, "Reconciling")["status"] == "False"
    # kubectl wait and the printer columns read the same status
    kubectl.run("wait", "--for=condition=Ready", f"p2pcluster/{CLUSTER}", "-n", ns, "--timeout=10s")
    table = kubectl.run("get", "p2pc", "-n", ns).stdout.splitlines()
    assert table[0].split()[:7] == [
        "NAME",
        "READY",
        "PEERS",
        "DESIRED",
        "SEEDS",
        "NODEPORT",
        "RULES",
    ]
    assert table[1].split()[:7] == [CLUSTER, "True", "3", "3", "1", str(NODE_PORTS[ns]), "3"]
    events = kubectl.run(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.kind=P2PCluster",
        "-o",
        "json",
    )
    assert "Ready" in {e["reason"] for e in json.loads(events.stdout)["items"]}
    # a peer going away is noticed
    kubectl.patch_status("daemonset", "damselfly-peer", ns, {"numberReady": 2})
    degraded = wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "PeersAvailable", "False")
    assert "2/3 peers ready" in condition(degraded, "PeersAvailable")["message"]


def test_rule_changes_update_the_configmap_but_never_the_peers(kubectl: Kubectl, ns: str) -> None:
    rules = example_rules()
    ds_before = kubectl.must_get("daemonset", "damselfly-peer", ns)
    new_rule = {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "ProxyRule",
        "metadata": {"name": "artifacts"},
        "spec": {"clusterRef": {"name": CLUSTER}, "priority": 5, "regex": "^http://artifacts/"},
    }
    kubectl.apply(json.dumps(new_rule), ns)
    lfs = rules["git-lfs-s3"]["spec"]["regex"]
    hf = rules["huggingface-cdn"]["spec"]["regex"]
    oci = rules["oci-blobs"]["spec"]["regex"]
    wait_for(
        lambda: rules_regexes(kubectl, ns) == ["^http://artifacts/", lfs, hf, oci],
        WAIT,
        "rule added",
    )
    # change: move the OCI rule to the front
    kubectl.run(
        "patch", "proxyrule", "oci-blobs", "-n", ns, "--type=merge", "-p", '{"spec":{"priority":1}}'
    )
    wait_for(
        lambda: rules_regexes(kubectl, ns) == [oci, "^http://artifacts/", lfs, hf],
        WAIT,
        "rule moved",
    )
    # delete
    kubectl.run("delete", "proxyrule", "huggingface-cdn", "-n", ns)
    wait_for(
        lambda: rules_regexes(kubectl, ns) == [oci, "^http://artifacts/", lfs], WAIT, "rule gone"
    )
    # disable
    kubectl.run(
        "patch",
        "proxyrule",
        "artifacts",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"disabled":true}}',
    )
    wait_for(lambda: rules_regexes(kubectl, ns) == [oci, lfs], WAIT, "rule disabled")
    wait_condition(kubectl, "proxyrule", "artifacts", ns, "Applied", "False", "Disabled")
    ds_after = kubectl.must_get("daemonset", "damselfly-peer", ns)
    assert ds_after["metadata"]["generation"] == ds_before["metadata"]["generation"]
    assert ds_after["spec"]["template"] == ds_before["spec"]["template"]
    cluster = wait_for(
        lambda: (
            (c := kubectl.get("p2pcluster", CLUSTER, ns)) and c["status"].get("rules") == 2 and c
        ),
        WAIT,
        "status.rules == 2",
    )
    cm = kubectl.must_get("configmap", "damselfly-rules", ns)
    assert cluster["status"]["rulesHash"] == RuleSet.from_yaml(cm["data"]["rules.yaml"]).digest()


def test_a_config_change_rolls_the_peers(kubectl: Kubectl, ns: str) -> None:
    before = kubectl.must_get("daemonset", "damselfly-peer", ns)
    kubectl.run(
        "patch", "p2pcluster", CLUSTER, "-n", ns, "--type=merge",
        "-p", '{"spec":{"peer":{"cache":{"quota":"80Gi"}}}}',
    )  # fmt: skip

    def rolled() -> dict[str, Any] | None:
        ds = kubectl.must_get("daemonset", "damselfly-peer", ns)
        return ds if ds["metadata"]["generation"] > before["metadata"]["generation"] else None

    after = wait_for(rolled, WAIT, "the DaemonSet pod template to change")
    peer_yaml = kubectl.must_get("configmap", "damselfly-peer-config", ns)["data"]["peer.yaml"]
    assert yaml.safe_load(peer_yaml)["storage"]["quota"] == 80 * 2**30
    annotations = after["spec"]["template"]["metadata"]["annotations"]
    assert annotations[CONFIG_HASH_ANNOTATION] == content_hash(peer_yaml)


def test_an_invalid_regex_is_left_out_and_explained(kubectl: Kubectl, ns: str) -> None:
    bad = {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "ProxyRule",
        "metadata": {"name": "lookahead"},
        "spec": {"clusterRef": {"name": CLUSTER}, "priority": 0, "regex": "^https://x/(?=y)"},
    }
    kubectl.apply(json.dumps(bad), ns)
    rule = wait_condition(
        kubectl, "proxyrule", "lookahead", ns, "Accepted", "False", "InvalidRegex"
    )
    assert "not valid RE2" in condition(rule, "Accepted")["message"]
    assert condition(rule, "Applied")["status"] == "False"
    assert "^https://x/(?=y)" not in rules_regexes(kubectl, ns)
    assert len(rules_regexes(kubectl, ns)) == 3
    table = kubectl.run("get", "prule", "lookahead", "-n", ns).stdout
    assert re.search(r"lookahead\s+damselfly\s+0\s+False\s+False", table), table
    events = json.loads(
        kubectl.run(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=lookahead",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert [e["reason"] for e in events] == ["InvalidRegex"]


INVALID = [
    ("P2PCluster", {"metadata": {"name": "c"}, "spec": {}}, "spec.image: Required value"),
    (
        "P2PCluster",
        {"metadata": {"name": "c"}, "spec": {"image": "i", "proxy": {"nodePort": 80}}},
        "spec.proxy.nodePort: Invalid value: 80: spec.proxy.nodePort in body should be "
        "greater than or equal to 30000",
    ),
    (
        "P2PCluster",
        {"metadata": {"name": "c"}, "spec": {"image": "i", "ruleSource": "Git"}},
        'spec.ruleSource: Unsupported value: "Git": supported values: "ConfigMap", "API"',
    ),
    (
        "P2PCluster",
        {
            "metadata": {"name": "c"},
            "spec": {"image": "i", "peer": {"cache": {"lowWatermarkPercent": 95}}},
        },
        "lowWatermarkPercent must be below highWatermarkPercent",
    ),
    (
        "P2PCluster",
        {
            "metadata": {"name": "c"},
            "spec": {
                "image": "i",
                "seedPeer": {"storage": {"hostPath": "/x", "storageClassName": "s"}},
            },
        },
        "set either hostPath or storageClassName, not both",
    ),
    (
        "P2PCluster",
        {"metadata": {"name": "c"}, "spec": {"image": "i", "proxy": {"port": 65002}}},
        "port 65002 (upload) and 65003 (metrics) are taken by the peer",
    ),
    (
        "P2PCluster",
        {
            "metadata": {"name": "c"},
            "spec": {"image": "i", "proxy": {"allowedClientCIDRs": ["10.0.0.0/33"]}},
        },
        "must be a CIDR",
    ),
    (
        "P2PCluster",
        {"metadata": {"name": "x" * 41}, "spec": {"image": "i"}},
        "at most 40 characters",
    ),
    (
        "P2PCluster",
        {"metadata": {"name": "c"}, "spec": {"image": "i", "peer": {"cache": {"quota": "lots"}}}},
        "spec.peer.cache.quota: Invalid value",
    ),
    (
        "ProxyRule",
        {"metadata": {"name": "r"}, "spec": {"regex": "x"}},
        "spec.clusterRef: Required value",
    ),
    (
        "ProxyRule",
        {
            "metadata": {"name": "r"},
            "spec": {"clusterRef": {"name": "c"}, "regex": "x", "redirect": "http://h/"},
        },
        "spec.redirect in body should match",
    ),
    (
        "ProxyRule",
        {
            "metadata": {"name": "r"},
            "spec": {"clusterRef": {"name": "c"}, "regex": "x", "priority": -1},
        },
        "spec.priority in body should be greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(("kind", "obj", "message"), INVALID, ids=[m for _, _, m in INVALID])
def test_invalid_resources_are_rejected_with_their_message(
    kubectl: Kubectl, namespace: str, installed: None, kind: str, obj: dict[str, Any], message: str
) -> None:
    doc = {"apiVersion": "damselfly.io/v1alpha1", "kind": kind, **obj}
    result = kubectl.run(
        "apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    listed = kubectl.run("get", "p2pclusters,proxyrules", "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""


def resource_versions(kubectl: Kubectl, ns: str) -> dict[str, str]:
    out = kubectl.run(
        "get",
        "p2pclusters,proxyrules," + ",".join(sorted({k for k, _ in CHILDREN})),
        "-n",
        ns,
        "-o",
        "json",
    ).stdout
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in json.loads(out)["items"]
        if o["kind"] != "ServiceAccount" or o["metadata"]["name"] != "default"
    }


def reconciles(operator: ManagedProcess, ns: str) -> int:
    return operator.log_path.read_text().count(f"reconciled {ns}/{CLUSTER}")


def test_applying_the_same_resources_twice_writes_nothing(
    kubectl: Kubectl, ns: str, operator: ManagedProcess
) -> None:
    simulate_ready(kubectl, ns)
    wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Ready", "True")
    for name in example_rules():
        wait_condition(kubectl, "proxyrule", name, ns, "Applied", "True")
    before = resource_versions(kubectl, ns)
    count = reconciles(operator, ns)
    # the user applies again (no --force-conflicts: the operator owns no field of theirs)
    kubectl.apply(examples_manifest(NODE_PORTS[ns]), ns)
    # and a metadata-only change makes the operator reconcile once more
    kubectl.run("label", "p2pcluster", CLUSTER, "-n", ns, "team=a")
    wait_for(lambda: reconciles(operator, ns) > count, WAIT, "a reconcile after the label")
    after = resource_versions(kubectl, ns)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {f"P2PCluster/{CLUSTER}"}, changed  # only the user's own label edit
    ds = kubectl.must_get("daemonset", "damselfly-peer", ns)
    assert "team" not in ds["metadata"]["labels"]


def test_server_rejection_stalls_without_half_applying(kubectl: Kubectl, ns: str) -> None:
    seed_config = kubectl.must_get("configmap", "damselfly-seed-peer-config", ns)
    # volumeClaimTemplates of a StatefulSet are immutable: the API server refuses
    kubectl.run(
        "patch", "p2pcluster", CLUSTER, "-n", ns, "--type=merge",
        "-p", '{"spec":{"seedPeer":{"storage":{"size":"40Gi"}}}}',
    )  # fmt: skip
    stalled = wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Stalled", "True", "ApplyFailed")
    message = condition(stalled, "Stalled")["message"]
    assert "StatefulSet damselfly-seed-peer" in message
    assert message.endswith("field is immutable")
    assert len(message) <= 1024
    assert stalled["status"]["observedGeneration"] == stalled["metadata"]["generation"]
    # the seed config (which would carry the new quota) was not written either
    after = kubectl.must_get("configmap", "damselfly-seed-peer-config", ns)
    assert after["metadata"]["resourceVersion"] == seed_config["metadata"]["resourceVersion"]
    # undoing the change recovers
    kubectl.run(
        "patch", "p2pcluster", CLUSTER, "-n", ns, "--type=merge",
        "-p", '{"spec":{"seedPeer":{"storage":{"size":"20Gi"}}}}',
    )  # fmt: skip
    wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Stalled", "False")


def test_suspend_pauses_reconciliation(kubectl: Kubectl, ns: str) -> None:
    before = kubectl.must_get("configmap", "damselfly-peer-config", ns)
    kubectl.run(
        "patch", "p2pcluster", CLUSTER, "-n", ns, "--type=merge",
        "-p", '{"spec":{"suspend":true,"peer":{"cache":{"quota":"70Gi"}}}}',
    )  # fmt: skip
    wait_condition(kubectl, "p2pcluster", CLUSTER, ns, "Reconciling", "False", "Suspended")
    assert (
        kubectl.must_get("configmap", "damselfly-peer-config", ns)["metadata"]["resourceVersion"]
        == before["metadata"]["resourceVersion"]
    )
    kubectl.run(
        "patch", "p2pcluster", CLUSTER, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )

    def quota() -> int:
        cm = kubectl.must_get("configmap", "damselfly-peer-config", ns)
        return int(yaml.safe_load(cm["data"]["peer.yaml"])["storage"]["quota"])

    wait_for(lambda: quota() == 70 * 2**30, WAIT, "the held-back change to be applied")


def test_deleting_the_cluster_leaves_nothing_behind(
    kubectl: Kubectl, ns: str, control_plane: ControlPlane
) -> None:
    uid = kubectl.must_get("p2pcluster", CLUSTER, ns)["metadata"]["uid"]
    for kind, name in CHILDREN:  # what the garbage collector follows
        owners = kubectl.must_get(kind, name, ns)["metadata"]["ownerReferences"]
        assert [(o["uid"], o["blockOwnerDeletion"]) for o in owners] == [(uid, True)]
    kubectl.run("delete", "p2pcluster", CLUSTER, "-n", ns, "--wait=true", "--timeout=30s")
    if not control_plane.has_gc:
        pytest.skip("no kube-controller-manager: ownerReferences checked, GC not run")

    def all_gone() -> bool:
        return all(kubectl.get(kind, name, ns) is None for kind, name in CHILDREN)

    wait_for(all_gone, 60, "garbage collection of every child")
    cluster_after = kubectl.get("p2pcluster", CLUSTER, ns)
    assert cluster_after is None  # no finalizer held it
    rule = wait_condition(
        kubectl, "proxyrule", "oci-blobs", ns, "Applied", "False", "ClusterNotFound"
    )
    assert rule["metadata"].get("finalizers") is None


def test_render_matches_what_the_operator_applies(
    kubectl: Kubectl, ns: str, tmp_path: Path
) -> None:
    """`damselfly render` output is what lands in the cluster (for GitOps reviews)."""
    import subprocess
    import sys

    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
    for doc in docs:
        doc["metadata"]["namespace"] = ns
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    files = ["-f", str(manifest)]
    result = subprocess.run(
        [sys.executable, "-m", "damselfly.cli", "render", *files],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rendered = {
        (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d
    }
    for kind in ("ConfigMap", "DaemonSet"):
        for (k, name), doc in rendered.items():
            if k != kind:
                continue
            live = kubectl.must_get(kind.lower(), name, ns)
            if kind == "ConfigMap":
                assert live["data"] == doc["data"], name
            else:
                template = live["spec"]["template"]["metadata"]["annotations"]
                assert template == doc["spec"]["template"]["metadata"]["annotations"]


def test_a_rule_for_a_missing_cluster_says_so(
    kubectl: Kubectl, namespace: str, operator: ManagedProcess
) -> None:
    for name, regex in [("lonely", "^https://a/"), ("lonely-bad", "^https://(unclosed/")]:
        rule = {
            "apiVersion": "damselfly.io/v1alpha1",
            "kind": "ProxyRule",
            "metadata": {"name": name},
            "spec": {"clusterRef": {"name": "nowhere"}, "regex": regex},
        }
        kubectl.apply(json.dumps(rule), namespace)
    lonely = wait_condition(
        kubectl, "proxyrule", "lonely", namespace, "Applied", "False", "ClusterNotFound"
    )
    assert condition(lonely, "Accepted")["status"] == "True"
    assert "'nowhere'" in condition(lonely, "Applied")["message"]
    bad = wait_condition(
        kubectl, "proxyrule", "lonely-bad", namespace, "Accepted", "False", "InvalidRegex"
    )
    assert condition(bad, "Applied")["reason"] == "NotAccepted"
