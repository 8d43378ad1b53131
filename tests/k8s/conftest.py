"""Session fixtures: one real control plane, the CRDs, and one running operator.

Binaries come from scripts/k8s-binaries ($KUBEBUILDER_ASSETS, the cache, or a
build with Go on first use). Where that is impossible the tests skip with one
loud line, except under CI=true, where a skipped control plane is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.controlplane import REPO, ControlPlane, Unavailable, binaries_dir, wait_for
from tests.support.ports import free_port
from tests.support.procs import ManagedProcess, http_ok, wait_until

BUILD_TIMEOUT = 3600  # the first build of kube-apiserver on 2 cores
NOT_READY_REQUEUE = 3.0  # seconds: pod and PVC changes are noticed this fast (not watched)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the first k8s test the time to build the binaries when they are not cached."""
    k8s_items = [item for item in items if item.get_closest_marker("k8s")]
    if not k8s_items:
        return
    try:
        binaries_dir(build=False)
    except Unavailable:
        k8s_items[0].add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


class Kubectl:
    """The real kubectl against the test API server."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def apply(self, manifest: str | Path, namespace: str) -> None:
        if isinstance(manifest, Path):
            self.run("apply", "--server-side", "-n", namespace, "-f", str(manifest))
        else:
            self.run("apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.run(
            "get", kind, name, "-n", namespace, "-o", "json", "--show-managed-fields", check=False
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        obj: dict[str, Any] = json.loads(result.stdout)
        return obj

    def must_get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        obj = self.get(kind, name, namespace)
        assert obj is not None, f"{kind}/{name} not found in {namespace}"
        return obj

    def wait_get(self, kind: str, name: str, namespace: str, timeout: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: self.get(kind, name, namespace), timeout, f"{kind}/{name} to exist"
        )
        return found

    def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        """Write a child's status as its (absent) controller would."""
        self.run(
            "patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        bin_dir = binaries_dir(build=True)
    except Unavailable as exc:
        message = f"NO KUBERNETES CONTROL PLANE: k8s tests cannot run here: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: this must not be skipped)", pytrace=False)
        print(f"\n*** {message} ***", file=sys.stderr)
        pytest.skip(message)
    plane = ControlPlane(bin_dir, tmp_path_factory.mktemp("k8s"))
    try:
        plane.start()
    except BaseException:
        print(plane.logs(), file=sys.stderr)
        plane.stop()
        raise
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane.bin_dir / "kubectl", control_plane.kubeconfig)


@pytest.fixture(scope="session")
def installed(kubectl: Kubectl) -> None:
    """deploy/ as a user installs it: CRDs, namespace, RBAC, operator Deployment."""
    kubectl.run("apply", "--server-side", "-k", str(REPO / "deploy"))
    for name in ("p2pclusters.damselfly.io", "proxyrules.damselfly.io"):
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")


def operator_kubeconfig(kubectl: Kubectl, control_plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig with the token of deploy/'s ServiceAccount: the operator runs with
    exactly the RBAC it ships with, so a missing permission fails these tests."""
    token = kubectl.run(
        "create", "token", "damselfly-operator", "-n", "damselfly-system", "--duration=2h"
    ).stdout.strip()
    config = json.loads(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane,
    kubectl: Kubectl,
    installed: None,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ManagedProcess]:
    """`damselfly operator` as a real process, as deploy/'s ServiceAccount."""
    logs = tmp_path_factory.mktemp("operator")
    kubeconfig = operator_kubeconfig(kubectl, control_plane, logs / "kubeconfig")
    port = free_port()
    proc = ManagedProcess(
        "operator",
        [sys.executable, "-m", "damselfly.cli", "--log-level", "DEBUG", "operator",
         "--health-port", str(port), "--not-ready-requeue", str(NOT_READY_REQUEUE)],
        logs,
        env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "operator liveness", proc=proc)
    yield proc
    proc.stop()
    if request.session.testsfailed:
        print(f"\n--- operator log (all of it: {proc.log_path})", file=sys.stderr)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    return name
