"""The Argo CD Lua health checks, run by a real Lua interpreter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
LUA = shutil.which("lua5.4") or shutil.which("lua")
needs_lua = pytest.mark.skipif(LUA is None, reason="no lua interpreter (apt-get install lua5.4)")


def lua_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    assert LUA is not None
    code = (
        f"obj = {lua_literal(obj)}\n"
        f"local function check()\n{(ARGOCD / script).read_text()}\nend\n"
        "local hs = check()\nio.write(hs.status, '\\n', hs.message or '')\n"
    )
    result = subprocess.run([LUA, "-"], input=code, capture_output=True, text=True, check=True)
    status, _, message = result.stdout.partition("\n")
    return status, message


def cond(type_: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def cluster(status: dict[str, Any] | None, generation: int = 2, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"generation": generation}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


@needs_lua
@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (cluster(None), "Progressing"),
        (cluster({"observedGeneration": 1, "conditions": [cond("Ready", "True")]}), "Progressing"),
        (cluster({"observedGeneration": 2, "conditions": [cond("Ready", "True")]}), "Healthy"),
        (cluster({"observedGeneration": 2, "conditions": [cond("Ready", "False")]}), "Progressing"),
        (
            cluster(
                {
                    "observedGeneration": 2,
                    "conditions": [cond("Ready", "False"), cond("Stalled", "True", message="bad")],
                }
            ),
            "Degraded",
        ),
        (cluster({"observedGeneration": 2, "conditions": []}, suspend=True), "Suspended"),
    ],
)
def test_p2pcluster_health(obj: dict[str, Any], expected: str) -> None:
    assert health("p2pcluster-health.lua", obj)[0] == expected


@needs_lua
@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([cond("Accepted", "True"), cond("Applied", "True")], "Healthy"),
        (
            [cond("Accepted", "False", "InvalidRegex", "no RE2"), cond("Applied", "False")],
            "Degraded",
        ),
        ([cond("Accepted", "True"), cond("Applied", "False", "Disabled")], "Suspended"),
        ([cond("Accepted", "True"), cond("Applied", "False", "ClusterNotFound")], "Progressing"),
    ],
)
def test_proxyrule_health(conditions: list[dict[str, Any]], expected: str) -> None:
    obj = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": conditions},
    }
    assert health("proxyrule-health.lua", obj)[0] == expected


def test_argocd_cm_snippet_embeds_the_lua_files() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())["data"]
    assert (
        data["resource.customizations.health.damselfly.io_P2PCluster"]
        == (ARGOCD / "p2pcluster-health.lua").read_text()
    )
    assert (
        data["resource.customizations.health.damselfly.io_ProxyRule"]
        == (ARGOCD / "proxyrule-health.lua").read_text()
    )
