"""The image and the manifests only call commands the CLI really has.

No Docker engine runs on our machines, so instead of building the image this
reads the Dockerfile and every manifest in deploy/ (and the ones the operator
renders) and checks each damselfly invocation against the real parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def parse_ok(argv: list[str]) -> None:
    """Raises SystemExit != 0 if argparse rejects ``argv``."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"damselfly {' '.join(argv)!s} is not a valid command") from exc


def dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert found, f"Dockerfile has no exec-form {name}"
    value: list[str] = json.loads(found[-1])
    return value


def test_dockerfile_entrypoint_is_damselfly() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["damselfly"]
    parse_ok(dockerfile_instruction("CMD"))


def test_dockerfile_final_stage_has_no_compiler_and_runs_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER\s+\d+", final, flags=re.MULTILINE), "final stage runs as root"
    for tool in ("gcc", "build-essential", "cc ", "make "):
        assert tool not in final, f"final stage installs {tool.strip()}"
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        for base in re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    ]
    assert all(re.search(r":\d+\.\d+\.\d+-slim", base) for base in bases), bases


def containers(doc: Any) -> Iterator[dict[str, Any]]:
    """Every container spec anywhere in a manifest."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from containers(item)


def damselfly_argvs(docs: list[Any]) -> list[list[str]]:
    argvs = []
    for doc in docs:
        for container in containers(doc):
            command = [str(c) for c in container.get("command", [])]
            args = [str(a) for a in container.get("args", [])]
            if command and command[0] != "damselfly":
                continue
            argvs.append(command[1:] + args)
    return argvs


def deploy_docs() -> list[Any]:
    docs: list[Any] = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_deploy_manifests_call_real_subcommands() -> None:
    argvs = damselfly_argvs(deploy_docs())
    if not argvs:
        pytest.skip("deploy/ has no container that runs damselfly yet")
    for argv in argvs:
        parse_ok(argv)


def test_kind_config_maps_the_first_workers_peer_to_the_host() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") == 2
    mappings = [m for node in config["nodes"] for m in node.get("extraPortMappings", [])]
    # the peer's hostPort on the worker: always that worker's own peer (a NodePort may not be)
    assert {"containerPort": 65001, "hostPort": 65001, "protocol": "TCP"} in mappings


def test_operator_rendered_manifests_call_real_subcommands() -> None:
    """The scheduler, seed and peer containers the operator renders run real commands."""
    from damselfly.operator.render_cli import load_documents, render_documents

    files = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    objects, _ = render_documents(load_documents(files))
    argvs = damselfly_argvs(objects)
    assert len(argvs) >= 3, "expected scheduler, seed and peer containers"
    for argv in argvs:
        parse_ok(argv)
    joined = [" ".join(argv) for argv in argvs]
    assert any(a.startswith("scheduler") for a in joined)
    assert any(a.startswith("peer") and "--seed" in a for a in joined)
