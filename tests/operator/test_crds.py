"""The CRDs are generated from the models and committed: they must be current."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from damselfly.api import crdgen

REPO = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    stale = crdgen.stale_files(REPO / "crds", crdgen.generate())
    assert not stale, f"crds/ is stale, run `damselfly crds -o crds`: {stale}"


def test_deploy_crds_are_the_generated_ones() -> None:
    kustomization = (REPO / "deploy" / "kustomization.yaml").read_text()
    assert "../crds" in kustomization


def test_check_mode_reports_a_stale_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(output_dir=str(tmp_path), check=False)
    assert crdgen.run(args) == 0
    assert crdgen.run(argparse.Namespace(output_dir=str(tmp_path), check=True)) == 0
    path = tmp_path / "damselfly.io_proxyrules.yaml"
    path.write_text(path.read_text().replace("priority", "prio"))
    assert crdgen.run(argparse.Namespace(output_dir=str(tmp_path), check=True)) == 1
    assert "damselfly.io_proxyrules.yaml is stale" in capsys.readouterr().err


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("crd", [crdgen.p2pcluster_crd(), crdgen.proxyrule_crd()])
def test_schemas_are_structural(crd: dict[str, Any]) -> None:
    """Every node typed, no refs, no null unions, no preserve-unknown-fields."""
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["damselfly"]


def test_p2pcluster_schema_has_defaults_bounds_enums_and_cel() -> None:
    spec = crdgen.p2pcluster_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    props = spec["properties"]["spec"]["properties"]
    assert props["proxy"]["properties"]["nodePort"] == {
        "description": "NodePort of the proxy on every node.",
        "type": "integer",
        "default": 30950,
        "maximum": 32767,
        "minimum": 30000,
    }
    assert props["ruleSource"]["enum"] == ["ConfigMap", "API"]
    assert props["peer"]["default"]["cache"]["quota"] == "50Gi"
    cache = props["peer"]["properties"]["cache"]
    rule = cache["x-kubernetes-validations"][0]["rule"]
    assert rule == "self.lowWatermarkPercent < self.highWatermarkPercent"
    assert spec["x-kubernetes-validations"][0]["rule"].startswith("self.metadata.name.matches(")
    conditions = spec["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
