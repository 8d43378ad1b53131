"""What the e2e tests know of a cluster, and kubectl as they use it.

A cluster comes from ``$KUBECONFIG``; how to run a command *on* a node (not in a pod)
and which address of the machine the pods can reach come from a small JSON file that
``e2e/cluster up`` writes (``$DAMSELFLY_E2E_CLUSTER``, default
``/var/tmp/damselfly-cluster/cluster.json``) and ``e2e/kind.sh`` writes for kind.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CLUSTER_FILE = Path("/var/tmp/damselfly-cluster/cluster.json")
T = TypeVar("T")


@dataclass(frozen=True)
class Node:
    name: str
    address: str  # the node's InternalIP
    exec_prefix: tuple[str, ...]  # argv prefix that runs a command on the node itself

    def run(self, argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.exec_prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@dataclass(frozen=True)
class ClusterInfo:
    kubectl: str
    kubeconfig: str
    host_address: str  # an address of this machine that pods and nodes reach
    nodes: tuple[Node, ...]

    @classmethod
    def load(cls) -> ClusterInfo | None:
        path = Path(os.environ.get("DAMSELFLY_E2E_CLUSTER", DEFAULT_CLUSTER_FILE))
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        nodes = tuple(Node(n["name"], n["address"], tuple(n["exec"])) for n in raw["nodes"])
        return cls(
            kubectl=raw.get("kubectl", "kubectl"),
            kubeconfig=os.environ.get("KUBECONFIG", raw["kubeconfig"]),
            host_address=raw["hostAddress"],
            nodes=nodes,
        )


class KubectlError(AssertionError):
    pass


class Kubectl:
    """kubectl against the cluster; every call bounded in time."""

    def __init__(self, info: ClusterInfo) -> None:
        self.info = info

    def run(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.info.kubectl, "--kubeconfig", self.info.kubeconfig, *args]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr.strip()}"
            )
        return done

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        return self.run(*args, stdin=stdin, timeout=timeout).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self("apply", *ns, "-f", "-", stdin=manifest)

    def exists(self, *args: str) -> bool:
        return self.run("get", *args, "-o", "name", check=False).returncode == 0

    def raw(self, path: str, timeout: float = 30) -> str:
        return self("get", "--raw", path, timeout=timeout)

    def exec(self, namespace: str, pod: str, argv: Sequence[str], timeout: float = 300) -> str:
        return self("exec", "-n", namespace, pod, "--", *argv, timeout=timeout)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 1.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (KubectlError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == type_:
            return dict(cond)
    return None


def parse_metrics(text: str, name: str) -> dict[str, float]:
    """Prometheus text: the samples of ``name`` by their label string ('' if none)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        rest = series[len(name) :]
        if rest and not rest.startswith("{"):
            continue  # another metric with this prefix
        out[rest.strip("{}")] = float(value)
    return out
