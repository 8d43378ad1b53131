"""``damselfly render -f cluster.yaml [-f rules.yaml]``: the children, without a cluster.

For GitOps reviews: prints exactly what the operator would apply for each
P2PCluster in the files (with the ProxyRules found beside it), validated by
the same models. Rules the operator would leave out are reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from damselfly.api.v1alpha1 import API_VERSION, P2PCluster, ProxyRule
from damselfly.errors import InputError, describe_validation
from damselfly.operator.render import render_cluster


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMaps' YAML files) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


class RenderError(InputError):
    """A file or a resource in it that cannot be rendered."""


def load_documents(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
            loaded = list(yaml.safe_load_all(text))
        except OSError as exc:
            raise RenderError(f"{path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise RenderError(f"{path}: not valid YAML: {exc}") from None
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise RenderError(f"{path}: a document is not a mapping")
            docs.append((path, doc))
    return docs


def parse_resources(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[P2PCluster], list[ProxyRule]]:
    """The P2PClusters and ProxyRules in ``docs``, validated; other kinds are skipped."""
    clusters: list[P2PCluster] = []
    rules: list[ProxyRule] = []
    for path, doc in docs:
        if doc.get("apiVersion") != API_VERSION:
            continue
        name = doc.get("metadata", {}).get("name", "?")
        try:
            if doc.get("kind") == "P2PCluster":
                clusters.append(P2PCluster.model_validate(doc))
            elif doc.get("kind") == "ProxyRule":
                rules.append(ProxyRule.model_validate(doc))
        except ValidationError as exc:
            raise RenderError(
                f"{path}: {doc.get('kind')} {name}: {describe_validation(exc)}"
            ) from None
    if not clusters:
        raise RenderError(f"no {API_VERSION} P2PCluster in the files")
    return clusters, rules


def render_documents(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Child manifests of every P2PCluster in ``docs``, and warnings about rules."""
    clusters, rules = parse_resources(docs)
    objects: list[dict[str, Any]] = []
    warnings: list[str] = []
    for cluster in clusters:
        same_ns = [r for r in rules if r.namespace == cluster.namespace]
        rendered = render_cluster(cluster, same_ns)
        objects.extend(rendered.objects)
        for verdict in rendered.rules.verdicts:
            if not verdict.applied:
                warnings.append(
                    f"ProxyRule {verdict.rule.name} left out ({verdict.reason}): {verdict.message}"
                )
    return objects, warnings


def run(args: argparse.Namespace) -> int:
    try:
        objects, warnings = render_documents(load_documents(args.filename))
    except RenderError as exc:
        print(f"damselfly render: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"damselfly render: {warning}", file=sys.stderr)
    sys.stdout.write(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False))
    return 0
