#!/usr/bin/env python3
"""Fan-out benchmark: N peers fetch one object at once, through the swarm and direct.

    .venv/bin/python bench/p2p_fanout.py [--peers 8] [--size 128MiB] [--origin-mbit 80]
                                         [--peer-mbit 200] [--peer-down-mbit M]

Topology (design §8). The bench makes its own network namespaces, all named
``dfb<run>-*``, and nothing outside them is ever addressed:

- ``sw``: the switch, a bridge ``br0`` with one veth port per host; no address.
- ``origin`` (10.77.0.2): ``python -m tests.support.origin`` serving the object.
- ``sched`` (10.77.0.3): the scheduler; its link is not shaped (control traffic only).
- ``seed`` (10.77.0.4): a seed peer (``seed: true``). It runs the peer code, fetches
  the whole object and uploads it, so it is a peer of the fluid model: its upload
  and download are shaped like every peer's and it counts in N and in sum(u).
  ``--no-seed`` leaves it out.
- ``p0``.. (10.77.0.10+i): peers, each with its proxy on its own 127.0.0.1.

Each host's egress is shaped with ``tc tbf`` on its own end of its veth (its
upload u), and its ingress on the switch's end (its download d). The origin's
download and the scheduler are not shaped.

The swarm run: every peer's curl (inside the peer's namespace) fetches the
object through that peer's proxy at once; completion time is curl's total time.
Peer 0 (``--verify`` peers) writes its copy to a file that is checked against
the object's sha256; the others write to /dev/null. Then the direct run: the same
curls without the proxy. Origin bytes come from the origin's ``/__stats``.

Fluid-model lower bound with N receivers (peers, plus the seed when there is
one): T_min = max(S/u_origin, S/min(d_i), N*S/(u_origin + sum(u_i))).

Without root or ``ip``/``tc``/``curl`` it says so and exits 2; it never prints a
figure it did not measure. Every process has a time limit, and the namespaces
and processes are removed at exit, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MiB = 1 << 20
SUBNET = "10.77.0"
ORIGIN_PORT = 8080
SCHED_PORT = 8002
SCHED_METRICS_PORT = 8003
PROXY_PORT = 65001
UPLOAD_PORT = 65002
METRICS_PORT = 65003
OBJECT_PATH = "files/fanout.bin"
CMD_TIMEOUT = 30.0  # any one short command (ip, tc, a curl to a local endpoint)
DOWNLOADED = 'damselfly_peer_downloaded_bytes_total{{source="{}"}}'


class Unavailable(RuntimeError):
    """This machine cannot run the bench (namespaces cannot be made)."""


def parse_size(text: str) -> int:
    """``128MiB``, ``128Mi``, ``1GiB``, ``500M``, ``4096`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKMGT]?)(i?)B?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 128MiB, 1GiB, 64M)")
    number, prefix, binary = match.groups()
    power = " KMGT".index(prefix.upper()) if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def mbit_to_bytes(mbit: float) -> float:
    return mbit * 1e6 / 8


def check_available() -> None:
    if os.geteuid() != 0:
        raise Unavailable("network namespaces and tc need root; run as root")
    for tool in ("ip", "tc", "curl"):
        if shutil.which(tool) is None:
            raise Unavailable(f"the {tool} command is missing")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    up_mbit: float | None  # egress shaping (None: unshaped)
    down_mbit: float | None  # ingress shaping on the switch port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[Any]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Lab:
    """The namespaces, links and processes of one run; ``close`` removes them all."""

    run_id: str
    log_dir: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    code_dir: Path = REPO  # where damselfly and tests.support are imported from

    @property
    def switch(self) -> str:
        return f"dfb{self.run_id}-sw"

    # -- building ----------------------------------------------------------
    def _new_ns(self, name: str) -> str:
        ns = f"dfb{self.run_id}-{name}"
        try:
            run(["ip", "netns", "add", ns])
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"cannot create a network namespace: {exc.stderr.strip()}") from exc
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def make_switch(self) -> None:
        self._new_ns("sw")
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])

    def add_host(self, name: str, ip: str, up_mbit: float | None, down_mbit: float | None) -> Host:
        ns = self._new_ns(name)
        port = f"v-{name}"[:15]
        run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port])
        # The peer end was created in the current namespace: move it to the switch at once.
        run(["ip", "link", "set", port, "netns", self.switch])
        run(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
        run(["ip", "-n", self.switch, "link", "set", port, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if up_mbit is not None:
            shape(ns, "eth0", up_mbit)
        if down_mbit is not None:
            shape(self.switch, port, down_mbit)
        host = Host(name, ns, ip, up_mbit, down_mbit)
        self.hosts[name] = host
        return host

    # -- processes -----------------------------------------------------------
    def start(self, name: str, host: Host, argv: Sequence[str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.code_dir,
                env={**os.environ, "PYTHONPATH": str(self.code_dir)},
                start_new_session=True,  # its own group: killed as one at teardown
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def exec(self, host: Host, argv: Sequence[str], timeout: float = CMD_TIMEOUT) -> str:
        """Run a short command in ``host``'s namespace; its stdout."""
        return run(["ip", "netns", "exec", host.ns, *argv], timeout=timeout).stdout

    def http_get(self, host: Host, url: str, timeout: float = 5.0) -> str:
        return self.exec(
            host, ["curl", "-sS", "-f", "--noproxy", "*", "--max-time", str(timeout), url]
        )

    def http_ok(self, host: Host, url: str) -> bool:
        try:
            self.http_get(host, url, timeout=1.0)
            return True
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    def wait_ready(self, proc: Proc, host: Host, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
            if self.http_ok(host, url):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.tail()}")

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=timeout)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for ns in reversed(self.namespaces):
            # Whatever still runs in our namespace was started by this run.
            listed = subprocess.run(
                ["ip", "netns", "pids", ns],
                capture_output=True,
                text=True,
                timeout=CMD_TIMEOUT,
                check=False,
            )
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(
                ["ip", "netns", "delete", ns], capture_output=True, timeout=CMD_TIMEOUT, check=False
            )
        self.namespaces.clear()


def run(argv: Sequence[str], timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True)


def shape(ns: str, dev: str, mbit: float) -> None:
    """A token bucket on ``dev``'s egress: ``mbit`` Mbit/s, a few ms of burst."""
    rate = mbit_to_bytes(mbit)
    burst = max(64 * 1024, int(rate * 0.004))
    run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            f"{int(mbit * 1000)}kbit",
            "burst",
            str(burst),
            "latency",
            "50ms",
        ]
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as printed)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[key] = float(value)
    return samples


# --- the run ------------------------------------------------------------------


@dataclass
class FetchResult:
    name: str
    seconds: float | None  # None: failed
    size: int
    error: str = ""


@dataclass
class Setup:
    lab: Lab
    origin: Host
    sched: Host | None
    seed: Host | None
    peers: list[Host]
    url: str
    digest: str
    size: int


def fluid_bound(
    size: int, origin_mbit: float, ups: list[float], downs: list[float]
) -> dict[str, float]:
    u_origin = mbit_to_bytes(origin_mbit)
    u = [mbit_to_bytes(x) for x in ups]
    d = [mbit_to_bytes(x) for x in downs]
    terms = {
        "origin": size / u_origin,
        "download": size / min(d),
        "aggregate": len(d) * size / (u_origin + sum(u)),
    }
    terms["bound"] = max(terms.values())
    return terms


def build(args: argparse.Namespace, lab: Lab, work: Path) -> Setup:
    lab.make_switch()
    origin = lab.add_host("origin", f"{SUBNET}.2", args.origin_mbit, None)
    peers = [
        lab.add_host(f"p{i}", f"{SUBNET}.{10 + i}", args.peer_mbit, args.peer_down_mbit)
        for i in range(args.peers)
    ]
    sched = seed = None
    if not args.direct_only:
        sched = lab.add_host("sched", f"{SUBNET}.3", None, None)
        if args.seed:
            seed = lab.add_host("seed", f"{SUBNET}.4", args.peer_mbit, args.peer_down_mbit)

    www = work / "www"
    (www / "files").mkdir(parents=True)
    digest = hashlib.sha256()
    with (www / OBJECT_PATH).open("wb") as out:
        left = args.size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    proc = lab.start(
        "origin",
        origin,
        [
            PYTHON,
            "-m",
            "tests.support.origin",
            "--host",
            origin.ip,
            "--port",
            str(ORIGIN_PORT),
            "--dir",
            str(www),
        ],
    )
    lab.wait_ready(proc, origin, f"http://{origin.ip}:{ORIGIN_PORT}/__stats")
    url = f"http://{origin.ip}:{ORIGIN_PORT}/{OBJECT_PATH}"
    setup = Setup(lab, origin, sched, seed, peers, url, digest.hexdigest(), args.size)
    if sched is not None:
        start_swarm(args, setup, work)
    return setup


def start_swarm(args: argparse.Namespace, setup: Setup, work: Path) -> None:
    lab, sched = setup.lab, setup.sched
    assert sched is not None
    config_path = work / "scheduler.yaml"
    sched_config: dict[str, Any] = {"announceInterval": args.announce_interval}
    sched_config.update(dict(parse_assignment(a) for a in args.scheduler_set))
    config_path.write_text(yaml.safe_dump(sched_config))
    launch = [PYTHON, str(REPO / "bench" / "p2p_launch.py")]
    for name in args.scheduler_patch:
        launch += ["--patch", name]
    proc = lab.start(
        "scheduler",
        sched,
        [
            *launch,
            "--",
            "--log-level",
            args.log_level,
            "scheduler",
            "--host",
            sched.ip,
            "--port",
            str(SCHED_PORT),
            "--metrics-port",
            str(SCHED_METRICS_PORT),
            "-c",
            str(config_path),
        ],
    )
    lab.wait_ready(proc, sched, f"http://{sched.ip}:{SCHED_PORT}/readyz")
    members = ([setup.seed] if setup.seed else []) + setup.peers
    started = []
    for host in members:
        config: dict[str, Any] = {
            "hostId": host.name,
            "advertiseIp": host.ip,
            "seed": host is setup.seed,
            "proxy": {"host": "127.0.0.1", "port": PROXY_PORT},
            "upload": {"host": host.ip, "port": UPLOAD_PORT},
            "metrics": {"host": "127.0.0.1", "port": METRICS_PORT},
            "storage": {"dir": str(work / f"store-{host.name}"), "quota": "64Gi"},
            "scheduler": {
                "addresses": [f"{sched.ip}:{SCHED_PORT}"],
                "announceInterval": args.announce_interval,
                "stallTimeout": args.stall_timeout,
                "pieceTimeout": args.piece_timeout,
            },
            "rules": {"rules": [{"regex": "/files/"}]},
        }
        for assignment in args.peer_set + (args.seed_set if host is setup.seed else []):
            dotted, value = parse_assignment(assignment)
            *sections, leaf = dotted.split(".")
            node = config
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        path = work / f"{host.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        launch = [PYTHON, str(REPO / "bench" / "p2p_launch.py")]
        for name in args.patch:
            launch += ["--patch", name]
        argv = [*launch, "--", "--log-level", args.log_level, "peer", "-c", str(path)]
        started.append((lab.start(host.name, host, argv), host))
    for proc, host in started:
        lab.wait_ready(proc, host, f"http://127.0.0.1:{METRICS_PORT}/readyz")
    deadline = time.monotonic() + 30
    while scheduler_metrics(setup).get("damselfly_scheduler_hosts", 0) < len(members):
        if time.monotonic() > deadline:
            raise RuntimeError("peers did not all announce to the scheduler within 30 s")
        time.sleep(0.3)


def parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def scheduler_metrics(setup: Setup) -> dict[str, float]:
    assert setup.sched is not None
    url = f"http://{setup.sched.ip}:{SCHED_METRICS_PORT}/metrics"
    return parse_metrics(setup.lab.http_get(setup.sched, url))


def peer_metrics(setup: Setup, host: Host) -> dict[str, float]:
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    return parse_metrics(setup.lab.http_get(host, url))


def origin_bytes(setup: Setup) -> int:
    url = f"http://{setup.origin.ip}:{ORIGIN_PORT}/__stats"
    stats = json.loads(setup.lab.http_get(setup.origin, url))
    return sum(
        int(r.get("bytes_sent", 0))
        for path, slot in stats.items()
        if path.endswith(OBJECT_PATH)
        for r in slot["requests"]
    )


def task_info(setup: Setup) -> dict[str, Any] | None:
    """The scheduler's view of the task (who holds it, their parents), best effort."""
    from damselfly.api.ruleset import DEFAULT_FILTERED_QUERY_PARAMS
    from damselfly.peer.rules.taskid import task_key

    assert setup.sched is not None
    task_id = task_key(setup.url, tuple(DEFAULT_FILTERED_QUERY_PARAMS)).task_id
    url = f"http://{setup.sched.ip}:{SCHED_PORT}/v1/tasks/{task_id}"
    try:
        info: dict[str, Any] = json.loads(setup.lab.http_get(setup.sched, url, timeout=2.0))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
        return None
    return info


class ParentSampler(threading.Thread):
    """Polls the scheduler during a run: every parent each peer was given."""

    def __init__(self, setup: Setup, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.setup = setup
        self.interval = interval
        self.seen: dict[str, set[str]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            info = task_info(self.setup)
            for host, peer in (info or {}).get("peers", {}).items():
                self.seen.setdefault(host, set()).update(peer["parents"])
            self.halt.wait(self.interval)

    def stop(self) -> str:
        self.halt.set()
        self.join(timeout=10)
        return " ".join(
            f"{host}<-{','.join(sorted(parents)) or '-'}"
            for host, parents in sorted(self.seen.items())
        )


def reset_origin(setup: Setup) -> None:
    url = f"http://{setup.origin.ip}:{ORIGIN_PORT}/__stats/reset"
    setup.lab.exec(setup.origin, ["curl", "-sS", "-f", "--max-time", "5", "-X", "POST", url])


def fan_out(
    setup: Setup, via_proxy: bool, timeout: float, verify: int, work: Path
) -> list[FetchResult]:
    """Every peer's curl at once, each timed by curl itself."""
    lab = setup.lab
    jobs: list[tuple[Host, subprocess.Popen[str], Path | None]] = []
    for index, host in enumerate(setup.peers):
        copy = work / f"copy-{host.name}.bin" if index < verify else None
        argv = [
            "curl",
            "-sS",
            "--max-time",
            str(int(timeout)),
            "-o",
            str(copy or "/dev/null"),
            "-w",
            "%{http_code} %{size_download} %{time_total}",
        ]
        argv += ["-x", f"http://127.0.0.1:{PROXY_PORT}"] if via_proxy else ["--noproxy", "*"]
        popen = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv, setup.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lab.procs.append(Proc(f"curl-{host.name}", popen, Path(os.devnull)))
        jobs.append((host, popen, copy))
    results: list[FetchResult] = []
    for host, popen, copy in jobs:
        try:
            out, err = popen.communicate(timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            lab.stop(Proc(host.name, popen, Path(os.devnull)))
            results.append(FetchResult(host.name, None, 0, "timed out"))
            continue
        parts = out.split()
        if popen.returncode != 0 or len(parts) != 3 or parts[0] != "200":
            results.append(FetchResult(host.name, None, 0, f"curl {popen.returncode} {out} {err}"))
            continue
        size, seconds = int(parts[1]), float(parts[2])
        error = "" if size == setup.size else f"got {size} bytes"
        if copy is not None:
            actual = sha256_file(copy)
            copy.unlink()
            if actual != setup.digest:
                error = f"sha256 {actual[:16]}... is not the object's {setup.digest[:16]}..."
        results.append(FetchResult(host.name, None if error else seconds, size, error))
    return results


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def summary(results: list[FetchResult]) -> tuple[float, float] | None:
    times = [r.seconds for r in results if r.seconds is not None]
    if len(times) != len(results):
        return None
    return statistics.median(times), max(times)


# --- main ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size", type=parse_size, default=parse_size("128MiB"))
    parser.add_argument("--origin-mbit", type=float, default=80.0)
    parser.add_argument("--peer-mbit", type=float, default=200.0, help="peer upload u_i")
    parser.add_argument("--peer-down-mbit", type=float, default=None, help="d_i (default u_i)")
    parser.add_argument("--seed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--direct-only", action="store_true", help="only the direct run")
    parser.add_argument("--verify", type=int, default=1, help="peers whose copy is hashed")
    parser.add_argument("--timeout", type=float, default=None, help="per run (s)")
    parser.add_argument("--announce-interval", type=float, default=1.0)
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--piece-timeout", type=float, default=30.0)
    parser.add_argument(
        "--peer-set",
        action="append",
        default=[],
        help="peer config, e.g. upload.slots=64 or transfer.pieceWindow=32",
    )
    parser.add_argument(
        "--seed-set", action="append", default=[], help="seed-only config, e.g. upload.slots=2"
    )
    parser.add_argument(
        "--scheduler-set", action="append", default=[], help="e.g. candidateParents=8"
    )
    parser.add_argument(
        "--patch", action="append", default=[], help="peer patch, see bench/p2p_launch.py"
    )
    parser.add_argument(
        "--scheduler-patch", action="append", default=[], help="see bench/p2p_launch.py"
    )
    parser.add_argument(
        "--code",
        default=None,
        metavar="REV",
        help="run damselfly and the origin from this git revision (e.g. HEAD) instead of "
        "the working tree, so edits in progress do not change the figures",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.peer_down_mbit is None:
        args.peer_down_mbit = args.peer_mbit
    if args.peers < 1 or args.peers > 200:
        parser.error("--peers must be 1..200")
    if args.direct_only:
        args.seed = False
    if args.timeout is None:
        direct = args.peers * args.size / mbit_to_bytes(args.origin_mbit)
        args.timeout = max(120.0, 3 * direct)
    return args


def snapshot(revision: str, into: Path) -> Path:
    """damselfly/ and tests/ as of ``revision``, unpacked into ``into``."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "damselfly", "tests"],
        capture_output=True,
        timeout=CMD_TIMEOUT,
        check=True,
    )
    subprocess.run(
        ["tar", "-x", "-C", str(into)], input=archive.stdout, timeout=CMD_TIMEOUT, check=True
    )
    return into


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(143)


@contextlib.contextmanager
def lab_of(run_id: str, log_dir: Path) -> Iterator[Lab]:
    lab = Lab(run_id, log_dir)
    try:
        yield lab
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not
        try:  # leave namespaces behind
            lab.close()
        finally:
            signal.signal(signal.SIGINT, previous)


def fmt_run(name: str, results: list[FetchResult], bound: float) -> str:
    stats = summary(results)
    if stats is None:
        failed = [f"{r.name}: {r.error}" for r in results if r.seconds is None]
        return f"{name:8} FAILED ({len(failed)} of {len(results)}): " + "; ".join(failed[:4])
    median, worst = stats
    return (
        f"{name:8} median {median:7.2f} s   max {worst:7.2f} s   "
        f"median/T_min {median / bound:5.2f}   max/T_min {worst / bound:5.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_available()
    except Unavailable as exc:
        print(f"p2p_fanout: cannot run here: {exc}. No figures.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    run_id = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix=f"dfb{run_id}-"))
    log_dir = work / "logs"
    log_dir.mkdir()
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        with lab_of(run_id, log_dir) as lab:
            if args.code is not None:
                lab.code_dir = snapshot(args.code, work / "code")
                report["code"] = args.code
            return bench(args, lab, work, report)
    except Unavailable as exc:
        print(f"p2p_fanout: cannot run here: {exc}. No figures.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p2p_fanout: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in log_dir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2))
        shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, lab: Lab, work: Path, report: dict[str, Any]) -> int:
    size = args.size
    setup = build(args, lab, work)
    receivers = args.peers + (1 if setup.seed else 0)
    terms = fluid_bound(
        size, args.origin_mbit, [args.peer_mbit] * receivers, [args.peer_down_mbit] * receivers
    )
    bound = terms["bound"]
    report["bound"] = terms
    seed_note = "+ 1 seed peer (counted in N)" if setup.seed else "no seed"
    print(
        f"p2p_fanout: {args.peers} peers {seed_note}, S = {size / MiB:g} MiB, "
        f"origin up {args.origin_mbit:g} Mbit/s, peers up {args.peer_mbit:g} / "
        f"down {args.peer_down_mbit:g} Mbit/s"
    )
    print(
        f"fluid bound: S/u_origin {terms['origin']:.2f} s, S/d_min {terms['download']:.2f} s, "
        f"N*S/(u_origin+sum u) {terms['aggregate']:.2f} s  ->  T_min {bound:.2f} s"
    )
    ok = True
    if setup.sched is not None:
        reset_origin(setup)
        sampler = ParentSampler(setup)
        sampler.start()
        began, cpu_before = time.monotonic(), cpu_busy()
        try:
            results = fan_out(setup, True, args.timeout, args.verify, work)
        finally:
            graph = sampler.stop()
        wall, cpu_after = time.monotonic() - began, cpu_busy()
        cpu = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
        time.sleep(args.announce_interval + 0.5)  # last piece reports reach the scheduler
        sent = origin_bytes(setup)
        members = ([setup.seed] if setup.seed else []) + setup.peers
        per_peer = {host.name: peer_metrics(setup, host) for host in members}
        sched = scheduler_metrics(setup)
        report["swarm"] = {
            "results": [vars(r) for r in results],
            "wall": wall,
            "cpu_busy": cpu,
            "origin_bytes": sent,
            "peers": per_peer,
            "scheduler": {k: v for k, v in sched.items() if "traffic" in k or "schedules" in k},
        }
        print(fmt_run("swarm", results, bound) + f"   (wall {wall:.2f} s)")
        print(f"         machine CPU busy {cpu:.0%} of {os.cpu_count()} cores during the run")
        print(f"         origin bytes / S = {sent / size:.3f}")
        print("         peer   time(s)  from origin  from parents  uploaded  (MiB)")
        times = {r.name: r.seconds for r in results}
        for name, samples in per_peer.items():
            seconds = times.get(name)
            if seconds is not None:
                shown = f"{seconds:8.2f}"
            else:
                shown = "    seed" if name == "seed" else "  FAILED"
            from_origin = samples.get(DOWNLOADED.format("origin"), 0) / MiB
            from_parents = samples.get(DOWNLOADED.format("parent"), 0) / MiB
            uploaded = samples.get("damselfly_peer_uploaded_bytes_total", 0) / MiB
            print(
                f"         {name:5} {shown}  {from_origin:11.1f}  {from_parents:12.1f}  "
                f"{uploaded:8.1f}"
            )
        bts = sched.get('damselfly_scheduler_traffic_bytes_total{type="back_to_source"}', 0)
        remote = sched.get('damselfly_scheduler_traffic_bytes_total{type="remote_peer"}', 0)
        if graph:
            print("         parents given during the run: " + graph)
        if bts + remote:
            print(
                f"         scheduler: back_to_source {bts / MiB:.1f} MiB, "
                f"remote_peer {remote / MiB:.1f} MiB ({bts / (bts + remote):.1%} back to source)"
            )
        stats = summary(results)
        ok = stats is not None
        goal_bytes = sent <= 1.05 * size
        goal_time = stats is not None and stats[1] <= 1.3 * bound
        print(
            f"goals: origin bytes <= 1.05 S: {'met' if goal_bytes else 'NOT met'} "
            f"({sent / size:.3f});  completion (max) <= 1.3 T_min: "
            f"{'met' if goal_time else 'NOT met'}" + (f" ({stats[1] / bound:.2f})" if stats else "")
        )
    if args.baseline or args.direct_only:
        reset_origin(setup)
        began = time.monotonic()
        direct = fan_out(setup, False, args.timeout, args.verify, work)
        wall = time.monotonic() - began
        sent = origin_bytes(setup)
        report["direct"] = {
            "results": [vars(r) for r in direct],
            "wall": wall,
            "origin_bytes": sent,
        }
        print(fmt_run("direct", direct, bound) + f"   (wall {wall:.2f} s)")
        expected = args.peers * size / mbit_to_bytes(args.origin_mbit)
        print(
            f"         origin bytes / S = {sent / size:.3f}  "
            f"(max should be about N*S/u_origin = {expected:.2f} s)"
        )
        ok = ok and summary(direct) is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
