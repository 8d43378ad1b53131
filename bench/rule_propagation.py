#!/usr/bin/env python3
"""Rule propagation benchmark: 8 peers in API-watch mode, 50 ProxyRule changes.

    .venv/bin/python bench/rule_propagation.py [--peers 8] [--changes 50]
        [--kubeconfig admin.kubeconfig --kubectl /path/to/kubectl]

Without --kubeconfig it starts its own control plane (etcd + kube-apiserver from
scripts/k8s-binaries, as tests/k8s does) in a temp dir. It installs the CRDs,
renders the peer ServiceAccount/Role/RoleBinding the operator would
(damselfly.operator.render.peer_rbac), and starts N ``damselfly peer`` processes
on loopback with a token of that ServiceAccount (so they run with the shipped
RBAC, Lease reports included). No operator runs: the figure is API write -> peers.

Each change rewrites one ProxyRule's filteredQueryParams (a new rule hash every
time). Time runs from just before the write request is sent to the moment the
LAST peer's ``/status`` shows the new hash (the hash is published right after the
compiled rules are swapped in, so the peer serves with them from then on). Peers
are polled every 10 ms each, so figures carry up to ~10 ms of polling delay.
Goal (issue 6): p99 <= 2 s.

Bounded: loopback only; every wait has a deadline; every process is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from damselfly.api.rules import ruleset_from_objects  # noqa: E402
from damselfly.api.v1alpha1 import P2PCluster  # noqa: E402
from damselfly.kube import Kube, load_credentials, resource_path  # noqa: E402
from damselfly.operator.render import peer_rbac  # noqa: E402
from tests.k8s.controlplane import ControlPlane, binaries_dir  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402
from tests.support.procs import ManagedProcess, http_ok, wait_until  # noqa: E402

CLUSTER = "bench"
NAMESPACE = "rule-bench"
RULE = "bench-rule"
POLL = 0.01
DEADLINE = 15.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def kubectl(binary: str, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [binary, f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def control_plane(args: argparse.Namespace, work: Path) -> Iterator[tuple[Path, str]]:
    """(admin kubeconfig, kubectl binary): given, or a fresh control plane of our own."""
    if args.kubeconfig:
        yield Path(args.kubeconfig), args.kubectl
        return
    bins = binaries_dir(build=False)
    plane = ControlPlane(bins, work / "k8s")
    try:
        plane.start()
        yield plane.kubeconfig, str(bins / "kubectl")
    finally:
        plane.stop()


def install(kubeconfig: Path, kubectl_bin: str, work: Path) -> Path:
    """CRDs, namespace, the peers' RBAC; a kubeconfig with the peer ServiceAccount token."""
    run = lambda *a, stdin=None: kubectl(kubectl_bin, kubeconfig, *a, stdin=stdin)  # noqa: E731
    run("apply", "--server-side", "-k", str(ROOT / "crds"))
    for name in ("p2pclusters.damselfly.io", "proxyrules.damselfly.io"):
        run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
    run("create", "namespace", NAMESPACE)
    cluster = P2PCluster.model_validate(
        {
            "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
            "spec": {"image": "damselfly:dev", "ruleSource": "API"},
        }
    )
    run("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(peer_rbac(cluster)))
    token = run("create", "token", f"{CLUSTER}-peer", "-n", NAMESPACE, "--duration=2h").strip()
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"] = [{"name": config["users"][0]["name"], "user": {"token": token}}]
    path = work / "peer.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def start_peers(count: int, kubeconfig: Path, work: Path) -> list[tuple[ManagedProcess, int]]:
    peers = []
    for i in range(count):
        proxy, metrics, upload = free_ports(3)
        config = {
            "hostId": f"bench-node-{i}",
            "proxy": {"host": "127.0.0.1", "port": proxy},
            "metrics": {"host": "127.0.0.1", "port": metrics},
            "upload": {"host": "127.0.0.1", "port": upload},
            "storage": {"dir": str(work / f"store{i}"), "quota": "1Gi"},
            "rules": {
                "source": "api",
                "api": {
                    "clusterName": CLUSTER,
                    "namespace": NAMESPACE,
                    "kubeconfig": str(kubeconfig),
                },
            },
        }
        path = work / f"peer{i}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "damselfly.cli", "peer", "-c", str(path)]
        proc = ManagedProcess(f"peer{i}", argv, work / "logs", cwd=ROOT)
        peers.append((proc, metrics))
    for proc, metrics in peers:
        wait_until(http_ok(f"http://127.0.0.1:{metrics}/readyz"), 30, proc.name, proc=proc)
    return peers


def rule(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "ProxyRule",
        "metadata": {"name": RULE, "namespace": NAMESPACE},
        "spec": {
            "clusterRef": {"name": CLUSTER},
            "regex": r"^https?://[^/]+/blobs/",
            "filteredQueryParams": [f"change-{i}"],
        },
    }


async def peer_hash(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/status") as resp:
        body: dict[str, Any] = await resp.json()
        return str(body["rules"]["hash"])


async def wait_hash(
    session: aiohttp.ClientSession, port: int, expected: asyncio.Future[str], started: float
) -> float:
    """Seconds from ``started`` until this peer runs ``expected`` (polled)."""
    deadline = started + DEADLINE
    want = await expected
    while time.monotonic() < deadline:
        if await peer_hash(session, port) == want:
            return time.monotonic() - started
        await asyncio.sleep(POLL)
    raise TimeoutError(f"peer on metrics port {port} did not run {want} within {DEADLINE}s")


async def measure(admin: Path, ports: list[int], changes: int) -> list[tuple[float, float]]:
    """(first peer, last peer) seconds for each change."""
    kube = Kube(load_credentials(str(admin)))
    path = resource_path("damselfly.io/v1alpha1", "ProxyRule", NAMESPACE, RULE)
    results = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            # warm-up: the rule exists and every peer runs it
            written = await kube.apply(rule(-1), "bench")
            first = ruleset_from_objects(CLUSTER, [written]).digest
            loop = asyncio.get_running_loop()
            done: asyncio.Future[str] = loop.create_future()
            done.set_result(first)
            await asyncio.gather(*(wait_hash(session, p, done, time.monotonic()) for p in ports))
            for i in range(changes):
                expected: asyncio.Future[str] = loop.create_future()
                started = time.monotonic()
                waits = [
                    asyncio.create_task(wait_hash(session, p, expected, started)) for p in ports
                ]
                written = await kube.request(
                    "PATCH",
                    path,
                    params={"fieldManager": "bench", "force": "true"},
                    body=rule(i),
                    content_type="application/apply-patch+yaml",
                )
                expected.set_result(ruleset_from_objects(CLUSTER, [written]).digest)
                times = await asyncio.gather(*waits)
                results.append((min(times), max(times)))
                await asyncio.sleep(0.05)  # changes apart, as people and CD tools make them
    finally:
        await kube.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--kubeconfig", help="an admin kubeconfig (default: own control plane)")
    parser.add_argument("--kubectl", default="kubectl", help="with --kubeconfig")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rule-bench-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        with control_plane(args, work) as (admin, kubectl_bin):
            peer_config = install(admin, kubectl_bin, work)
            peers = start_peers(args.peers, peer_config, work)
            try:
                results = asyncio.run(measure(admin, [m for _, m in peers], args.changes))
            finally:
                for proc, _ in peers:
                    proc.stop()
    last = [r[1] * 1000 for r in results]
    first = [r[0] * 1000 for r in results]
    print(f"rule propagation: {args.peers} peers (API watch), {len(results)} changes")
    print(
        f"  API write -> LAST peer serving new rules: p50 {percentile(last, 50):.0f} ms, "
        f"p99 {percentile(last, 99):.0f} ms, max {max(last):.0f} ms"
    )
    print(
        f"  API write -> first peer:                  p50 {percentile(first, 50):.0f} ms, "
        f"p99 {percentile(first, 99):.0f} ms"
    )
    ok = percentile(last, 99) <= 2000
    print(f"  goal p99 <= 2000 ms: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
