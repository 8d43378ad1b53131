"""``damselfly local up|down|status``: the whole system on localhost, no Kubernetes.

It reads the same P2PCluster and ProxyRule YAML a user applies to a cluster,
renders the peer configs with the operator's own functions, and runs a
scheduler, a seed peer and N peers as local processes on loopback, each peer's
proxy on its own port. Edits to the rule files reach the peers while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from damselfly.api.v1alpha1 import P2PCluster, ProxyRule
from damselfly.config import ports as default_ports
from damselfly.config.peer import PeerConfig
from damselfly.errors import CommandError
from damselfly.operator.render import peer_config, render_rules
from damselfly.operator.render_cli import RenderError, load_documents, parse_resources

REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STATE_FILE = "state.json"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class LocalError(CommandError):
    """Something that stops ``local`` from doing what was asked; the message says what."""


@dataclass
class Member:
    """One process of the local cluster."""

    name: str
    role: str  # scheduler | seed | peer
    pid: int
    ports: dict[str, int]
    log: str


@dataclass
class LocalState:
    supervisor_pid: int
    state_dir: str
    members: list[Member]
    files: list[str]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LocalState | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        members = [Member(**m) for m in data.pop("members")]
        return cls(members=members, **data)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "damselfly" / "local"


def resource_files(filenames: list[str] | None) -> list[str]:
    """The -f files, or examples/ beside the package (a source checkout)."""
    if filenames:
        return filenames
    found = sorted(str(p) for p in REPO_EXAMPLES.glob("*.yaml"))
    if not found:
        raise LocalError(f"no -f files given and no examples in {REPO_EXAMPLES}")
    return found


def load_cluster(files: list[str]) -> tuple[P2PCluster, list[ProxyRule]]:
    try:
        clusters, rules = parse_resources(load_documents(files))
    except RenderError as exc:
        raise LocalError(str(exc)) from None
    cluster = clusters[0]
    return cluster, [r for r in rules if r.namespace == cluster.namespace]


def port_plan(cluster: P2PCluster, peers: int) -> dict[str, dict[str, int]]:
    """Ports of every member: peer-1's proxy on the cluster's proxy port, +10 per peer.

    The scheduler's metrics port is its API port - 2 (8002 -> 8000, the defaults:
    ``damselfly.config.ports``).
    """
    base = cluster.spec.proxy.port
    api_port = cluster.spec.scheduler.port
    plan = {
        "scheduler": {"api": api_port, "metrics": api_port - 2},
        "seed-0": {"proxy": base + 90, "upload": base + 91, "metrics": base + 92},
    }
    for index in range(peers):
        first = base + 10 * index
        plan[f"peer-{index + 1}"] = {"proxy": first, "upload": first + 1, "metrics": first + 2}
    return plan


def local_peer_config(
    cluster: P2PCluster,
    name: str,
    seed: bool,
    ports: dict[str, int],
    state_dir: Path,
    scheduler_port: int,
) -> PeerConfig:
    """The operator's peer config for this cluster, with local addresses and paths."""
    config = peer_config(cluster, seed)
    return config.model_copy(
        update={
            "host_id": name,
            "advertise_ip": "127.0.0.1",
            "proxy": config.proxy.model_copy(update={"host": "127.0.0.1", "port": ports["proxy"]}),
            "upload": config.upload.model_copy(
                update={"host": "127.0.0.1", "port": ports["upload"]}
            ),
            "metrics": config.metrics.model_copy(
                update={"host": "127.0.0.1", "port": ports["metrics"]}
            ),
            "storage": config.storage.model_copy(update={"dir": str(state_dir / name / "cache")}),
            "rules": config.rules.model_copy(
                update={"file": str(state_dir / "rules.yaml"), "watch_interval": 0.5}
            ),
            "scheduler": config.scheduler.model_copy(
                update={"addresses": [f"127.0.0.1:{scheduler_port}"], "announce_interval": 2.0}
            ),
        }
    )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def write_rules(cluster: P2PCluster, rules: list[ProxyRule], state_dir: Path) -> list[str]:
    """Render the cluster's rules for the peers; returns warnings about rules left out."""
    rendered = render_rules(cluster.name, rules)
    target = state_dir / "rules.yaml"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(rendered.yaml())
    tmp.replace(target)
    return [
        f"ProxyRule {v.rule.name} left out ({v.reason}): {v.message}"
        for v in rendered.verdicts
        if not v.applied
    ]


class Supervisor:
    """Starts the members, watches the rule files, stops everything on a signal."""

    def __init__(self, files: list[str], peers: int, state_dir: Path) -> None:
        self.files = files
        self.peers = peers
        self.state_dir = state_dir
        self.procs: list[tuple[Member, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def start(self) -> LocalState:
        cluster, rules = load_cluster(self.files)
        plan = port_plan(cluster, self.peers)
        busy = [
            f"{name} {kind} {port}"
            for name, ports in plan.items()
            for kind, port in ports.items()
            if port_in_use(port)
        ]
        if busy:
            raise LocalError("ports already in use: " + ", ".join(busy))
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for warning in write_rules(cluster, rules, self.state_dir):
            print(f"damselfly local: {warning}", file=sys.stderr)
        scheduler_ports = plan["scheduler"]
        self._spawn(
            "scheduler",
            "scheduler",
            scheduler_ports,
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(scheduler_ports["api"]),
                "--metrics-port",
                str(scheduler_ports["metrics"]),
            ],
            f"http://127.0.0.1:{scheduler_ports['api']}/readyz",
        )
        for name, ports in plan.items():
            if name == "scheduler":
                continue
            seed = name.startswith("seed")
            config = local_peer_config(
                cluster, name, seed, ports, self.state_dir, scheduler_ports["api"]
            )
            path = self.state_dir / f"{name}.yaml"
            path.write_text(
                yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True))
            )
            argv = ["peer", "-c", str(path)] + (["--seed"] if seed else [])
            self._spawn(
                name,
                "seed" if seed else "peer",
                ports,
                argv,
                f"http://127.0.0.1:{ports['metrics']}/readyz",
            )
        state = LocalState(
            supervisor_pid=os.getpid(),
            state_dir=str(self.state_dir),
            members=[member for member, _ in self.procs],
            files=self.files,
        )
        state.save(self.state_dir / STATE_FILE)
        return state

    def _spawn(
        self, name: str, role: str, ports: dict[str, int], argv: list[str], ready_url: str
    ) -> None:
        log_path = self.state_dir / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "damselfly.cli", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
            )
        member = Member(name, role, proc.pid, ports, str(log_path))
        self.procs.append((member, proc))
        deadline = time.monotonic() + READY_TIMEOUT
        while not http_ready(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                self.stop()
                raise LocalError(f"{name} did not start; its log ends:\n" + "\n".join(tail))
            time.sleep(0.1)

    def watch(self) -> None:
        """Until a signal: re-render rules when the files change, report deaths."""
        mtimes = self._mtimes()
        reported: set[str] = set()
        while not self.stopping:
            time.sleep(0.5)
            current = self._mtimes()
            if current != mtimes:
                mtimes = current
                try:
                    cluster, rules = load_cluster(self.files)
                    for warning in write_rules(cluster, rules, self.state_dir):
                        print(f"damselfly local: {warning}", file=sys.stderr)
                    print("damselfly local: rules re-rendered from the changed files")
                except LocalError as exc:
                    print(f"damselfly local: keeping the old rules: {exc}", file=sys.stderr)
            for member, proc in self.procs:
                if proc.poll() is not None and member.name not in reported:
                    reported.add(member.name)
                    print(
                        f"damselfly local: {member.name} exited with {proc.returncode}; "
                        f"see {member.log}",
                        file=sys.stderr,
                    )

    def _mtimes(self) -> dict[str, float]:
        times = {}
        for name in self.files:
            with contextlib.suppress(OSError):
                times[name] = Path(name).stat().st_mtime
        return times

    def stop(self) -> None:
        self.stopping = True
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()


def describe(state: LocalState) -> str:
    peers = [m for m in state.members if m.role == "peer"]
    first = peers[0].ports["proxy"] if peers else default_ports.PROXY
    lines = ["Damselfly is running on localhost:"]
    for member in state.members:
        ports = ", ".join(f"{kind} {port}" for kind, port in member.ports.items())
        lines.append(f"  {member.name:<10} pid {member.pid:<7} {ports}")
    lines += [
        "",
        "Point clients at a peer's proxy (each peer is one 'node'):",
        f"  curl -x http://127.0.0.1:{first} -O http://<host>/<object matching a ProxyRule>",
        f"  git config --global http.proxy http://127.0.0.1:{first}",
        "  git config --global lfs.transfer.enablehrefrewrite true",
        "  git config --global url.http://<storage-host>/.insteadOf https://<storage-host>/",
        f"  damselfly get --proxy http://127.0.0.1:{first} URL -O FILE",
        "",
        f"Rules: {state.state_dir}/rules.yaml (re-rendered when these change: "
        f"{', '.join(state.files)})",
        f"Logs:  {state.state_dir}/logs/",
        "Stop:  Ctrl-C here, or `damselfly local down`",
    ]
    return "\n".join(lines)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(args: argparse.Namespace, state_dir: Path) -> int:
    existing = LocalState.load(state_dir / STATE_FILE)
    if existing is not None and pid_alive(existing.supervisor_pid):
        raise LocalError(
            f"already running (pid {existing.supervisor_pid}); `damselfly local down` first"
        )
    if args.peers < 1:
        raise LocalError("--peers must be at least 1")
    supervisor = Supervisor(resource_files(args.filename), args.peers, state_dir)
    stop_requested = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stop_requested
        stop_requested = True
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    state = supervisor.start()
    print(describe(state), flush=True)
    try:
        if not stop_requested:
            supervisor.watch()
    finally:
        print("damselfly local: stopping", flush=True)
        supervisor.stop()
    return 0


def down(state_dir: Path) -> int:
    state = LocalState.load(state_dir / STATE_FILE)
    if state is None:
        print("damselfly local: nothing is running")
        return 0
    if pid_alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT + 5
        while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    for member in state.members:  # a supervisor that died unexpectedly leaves these
        if pid_alive(member.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGTERM)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    print("damselfly local: stopped")
    return 0


def status(state_dir: Path) -> int:
    state = LocalState.load(state_dir / STATE_FILE)
    if state is None or not pid_alive(state.supervisor_pid):
        print("damselfly local: not running")
        return 1
    healthy = True
    for member in state.members:
        port = member.ports.get("metrics") if member.role != "scheduler" else member.ports["api"]
        ready = pid_alive(member.pid) and http_ready(f"http://127.0.0.1:{port}/readyz")
        healthy = healthy and ready
        print(f"{member.name:<10} {'ready' if ready else 'NOT READY':<10} pid {member.pid}")
    return 0 if healthy else 1


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()
    try:
        if args.local_command == "up":
            return up(args, state_dir)
        if args.local_command == "down":
            return down(state_dir)
        return status(state_dir)
    except LocalError as exc:
        print(f"damselfly local {args.local_command}: {exc}", file=sys.stderr)
        return 1
