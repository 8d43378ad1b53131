"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ GC), no Docker.

What controller-runtime's envtest does, in Python: etcd on loopback with a temp
data dir, kube-apiserver with its own serving certificate, service-account keys,
a static admin token and RBAC authorization, and a kubeconfig for kubectl and
the operator. kube-controller-manager runs only the garbage collector, so
ownerReferences really delete children; no other controller touches status.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_ports
from tests.support.procs import ManagedProcess, wait_until

REPO = Path(__file__).resolve().parents[2]
BINARIES_SCRIPT = REPO / "scripts" / "k8s-binaries"
ADMIN_TOKEN = "damselfly-test-admin-token"


class Unavailable(Exception):
    """No binaries and no way to build them: the k8s tests cannot run here."""


def binaries_dir(build: bool = True) -> Path:
    """The directory with kube-apiserver, kubectl, etcd (built on first use)."""
    env = dict(os.environ)
    if not build:
        env["DAMSELFLY_K8S_NO_BUILD"] = "1"
    result = subprocess.run(
        [str(BINARIES_SCRIPT)], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise Unavailable(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "?")
    return Path(result.stdout.strip())


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(directory: Path) -> None:
    """A CA, a serving cert for 127.0.0.1/localhost, and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_subject = "/CN=damselfly-test-ca"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", ca_subject,
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)  # fmt: skip
    (directory / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", "server.key", "-out", "server.csr", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt",
             cwd=directory)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


@dataclass
class ControlPlane:
    bin_dir: Path
    work: Path
    procs: list[ManagedProcess] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = Path()

    def start(self) -> None:
        certs = self.work / "certs"
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        make_certs(certs)
        etcd_client, etcd_peer, api_port, kcm_port = free_ports(4)
        etcd = ManagedProcess(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--data-dir",
                str(self.work / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{etcd_peer}",
                "--quota-backend-bytes",
                str(2 * 2**30),
            ],
            logs,
        )
        self.procs.append(etcd)
        wait_until(_http_ok(f"http://127.0.0.1:{etcd_client}/health"), 30, "etcd health", proc=etcd)
        (certs / "tokens.csv").write_text(f"{ADMIN_TOKEN},admin,admin-uid,system:masters\n")
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # as envtest: no kubernetes Endpoints
                f"--secure-port={api_port}",
                f"--tls-cert-file={certs / 'server.crt'}",
                f"--tls-private-key-file={certs / 'server.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--token-auth-file={certs / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--disable-admission-plugins=ServiceAccount",
                f"--cert-dir={certs}",
            ],
            logs,
        )
        self.procs.append(apiserver)
        self.server = f"https://127.0.0.1:{api_port}"
        wait_until(self.ready, 90, "kube-apiserver /readyz", interval=0.25, proc=apiserver)
        self.kubeconfig = self.work / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self.server,
                                "certificate-authority": str(certs / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                    "current-context": "test",
                }
            )
        )
        if not self.has_gc:  # envtest's assets ($KUBEBUILDER_ASSETS) ship no controller-manager
            return
        kcm = ManagedProcess(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--controllers=garbagecollector",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--concurrent-gc-syncs=5",
            ],
            logs,
        )
        self.procs.append(kcm)
        self._ca = str(certs / "ca.crt")

    @property
    def has_gc(self) -> bool:
        """Whether the garbage collector runs (kube-controller-manager is available)."""
        return (self.bin_dir / "kube-controller-manager").exists()

    def ready(self) -> bool:
        try:
            return self.get("/readyz") is not None
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path: str) -> Any:
        """GET as admin; None on 404. For assertions, not for the code under test."""
        context = ssl.create_default_context(cafile=str(self.work / "certs" / "ca.crt"))
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body.decode()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in self.procs)


def _http_ok(url: str) -> Any:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
