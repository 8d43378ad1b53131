#!/usr/bin/env python3
"""Peer proxy benchmark: a large object on loopback, direct vs cold vs hot, and peer RSS.

    .venv/bin/python bench/proxy.py [--size 1GiB] [--runs 3]

Starts its own nginx (temp prefix, 127.0.0.1, sendfile on) serving an object from
the local disk, and its own ``damselfly peer`` with a rule for that nginx. Then,
alternating within every run and repeated ``--runs`` times (medians reported):

  (a) direct    curl <- nginx
  (a') store floor  one Python loop receiving from nginx into a reused buffer and
                writing a file on the store's filesystem, without and with the piece digest:
                the least a cache that keeps (and hashes) what it fetches must do on
                a miss here, before serving any client.
  (b) cold      curl <- peer <- nginx, with a fresh peer and an empty store each run
  (c) hot       curl <- peer (local store), same peer process as (b)
  (c') hot-restarted   the same after a peer restart (first read verifies each piece)
  (d) nginx     curl <- nginx again (same file; the hot path's yardstick)

for each of: store on disk + client writing to /dev/null, store on disk + client
writing to a file on the same disk, store on tmpfs + client writing to /dev/null.
Then the peer's peak RSS (VmHWM) under four concurrent cold downloads, of one
object and of four objects. Figures and ratios only: nothing here asserts a
timing. ``--profile DIR`` additionally profiles one cold and one hot download
(cProfile of the event loop thread, per-thread CPU, optionally ``perf``).

Everything is bounded: loopback only, a timeout on every process and request, an
overall deadline, temp dirs removed and every process stopped at exit, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = Path(__file__).resolve().parent / "peer_launch.py"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
_UNITS = {"": 1, "k": 10**3, "K": KiB, "KiB": KiB, "M": 10**6, "MiB": MiB, "Mi": MiB}
_UNITS |= {"G": 10**9, "GiB": GiB, "Gi": GiB, "Ki": KiB}


class BenchError(RuntimeError):
    """Something the bench needs did not work; the message says what."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP/overall deadline: unwind like Ctrl-C so cleanup runs."""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1GiB, 256MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """Our environment without proxy settings: curl must go exactly where we say."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }


# --- processes ------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime+stime of a process (all its threads, dead ones too) or of one thread."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmHWM, VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * KiB
    raise BenchError(f"no {key} in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


class Service:
    """A long-running subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, **kw: Any) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu(self) -> float:
        """CPU seconds of the process and its direct children (nginx workers)."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(c) for c in children(self.pid))

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, svc: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not svc.alive():
            raise BenchError(f"{svc.name} exited while waiting for {what}:\n{svc.tail()}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout}s waiting for {what}:\n{svc.tail()}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2) as r:
            return bool(r.status == 200)

    return check


# --- client ---------------------------------------------------------------------


@dataclass
class Fetch:
    seconds: float
    first_byte: float
    size: int
    cache: str
    client_cpu: float
    peer_cpu: float = 0.0
    peer_main_cpu: float = 0.0
    origin_cpu: float = 0.0


def store_floor(port: int, copy: Path, size: int, timeout: float, hashing: bool) -> Fetch:
    """The least work a cache does on a miss, with no proxy in the way: one loop that
    receives the object from nginx into a reused 1 MiB buffer and writes it to a file
    on the store's filesystem (and, with ``hashing``, hashes it as the peer hashes its
    pieces, see damselfly/peer/store/digest.py). No client is served.
    """
    from damselfly.peer.store.digest import PieceHasher

    buffer = memoryview(bytearray(MiB))
    digest = PieceHasher()
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                b"GET /object.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                more = sock.recv(4096)
                if not more:
                    raise BenchError("nginx closed before the headers ended")
                head += more
            _, _, body = head.partition(b"\r\n\r\n")
            os.write(fd, body)
            if hashing:
                digest.update(body)
            got = len(body)
            while n := sock.recv_into(buffer):
                if hashing:
                    digest.update(buffer[:n])
                os.write(fd, buffer[:n])
                got += n
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        copy.unlink(missing_ok=True)
    if got != size:
        raise BenchError(f"store floor received {got} bytes, expected {size}")
    return Fetch(seconds, 0.0, size, "", 0.0)


def curl(
    url: str,
    sink: str,
    timeout: float,
    proxy: str | None = None,
) -> tuple[float, float, int, str, int]:
    """One download with curl: (total s, first byte s, bytes, cache header, status)."""
    argv = [
        "curl",
        "-sS",
        "--max-time",
        str(int(timeout)),
        "--connect-timeout",
        "5",
        "-o",
        sink,
        "-w",
        "%{http_code} %{size_download} %{time_total} %{time_starttransfer} "
        "[%header{x-damselfly-cache}]",
    ]
    argv += ["--noproxy", "", "-x", proxy] if proxy else ["--noproxy", "*"]
    argv.append(url)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"curl {url} did not end within {timeout + 10}s") from None
    if proc.returncode != 0:
        raise BenchError(f"curl {url} failed ({proc.returncode}): {err.strip()}")
    status, size, total, first, cache = out.split(" ", 4)
    return float(total), float(first), int(size), cache.strip("[]"), int(status)


class Client:
    """curl with its CPU time taken from the rusage of reaped children."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def fetch(
        self,
        url: str,
        sink: str,
        proxy: str | None = None,
        expect_size: int | None = None,
        expect_cache: str | None = None,
        watch: Sequence[tuple[str, Service]] = (),
    ) -> Fetch:
        import resource

        before = {name: svc.cpu() for name, svc in watch}
        main_before = {name: cpu_seconds(svc.pid, svc.pid) for name, svc in watch}
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        total, first, size, cache, status = curl(url, sink, self.timeout, proxy)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if status != 200:
            raise BenchError(f"{url}: HTTP {status}")
        if expect_size is not None and size != expect_size:
            raise BenchError(f"{url}: got {size} bytes, expected {expect_size}")
        if expect_cache is not None and cache != expect_cache:
            raise BenchError(f"{url}: X-Damselfly-Cache {cache!r}, expected {expect_cache!r}")
        result = Fetch(
            total,
            first,
            size,
            cache,
            (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        )
        for name, svc in watch:
            used = svc.cpu() - before[name]
            if name == "peer":
                result.peer_cpu = used
                result.peer_main_cpu = cpu_seconds(svc.pid, svc.pid) - main_before[name]
            else:
                result.origin_cpu = used
        return result


# --- the rig --------------------------------------------------------------------


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user {user};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30s;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


@dataclass
class Rig:
    work: Path  # on the local disk
    shm: Path | None  # on tmpfs
    size: int
    timeout: float
    peer_patches: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    peer_count: int = 0

    def __post_init__(self) -> None:
        self.www = self.work / "www"
        self.logs = self.work / "logs"
        self.www.mkdir()
        self.logs.mkdir()

    def start_nginx(self) -> None:
        prefix = self.work / "nginx"
        prefix.mkdir()
        self.nginx_port = free_port()
        user = "root" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(prefix=prefix, port=self.nginx_port, root=self.www, user=user)
        if not user:
            conf = conf.replace("user ;\n", "")
        (prefix / "nginx.conf").write_text(conf)
        argv = ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e"]
        argv.append(str(prefix / "error.log"))
        svc = Service("nginx", argv, self.logs / "nginx.log")
        self.services.append(svc)
        self.nginx = svc
        probe = self.www / "probe"
        probe.write_text("ok")
        wait_until(http_ok(f"http://127.0.0.1:{self.nginx_port}/probe"), 10, "nginx", svc)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nginx_port}/{name}"

    def start_peer(self, store: Path, quota: int, profile_dir: Path | None = None) -> Service:
        self.peer_count += 1
        proxy_port, metrics_port, upload_port = (free_port() for _ in range(3))
        config = {
            "proxy": {"host": "127.0.0.1", "port": proxy_port},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "upload": {"host": "127.0.0.1", "port": upload_port},
            "storage": {"dir": str(store), "quota": quota},
            "rules": {"rules": [{"regex": rf"^http://127\.0\.0\.1:{self.nginx_port}/"}]},
        }
        path = self.work / f"peer-{self.peer_count}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable]
        if self.peer_patches or profile_dir:
            argv += [str(LAUNCHER)]
            for patch in self.peer_patches:
                argv += ["--patch", patch]
            if profile_dir:
                argv += ["--profile-dir", str(profile_dir)]
            argv += ["--"]
        else:
            argv += ["-m", "damselfly.cli"]
        argv += ["--log-level", "WARNING", "peer", "-c", str(path)]
        svc = Service("peer", argv, self.logs / f"peer-{self.peer_count}.log", cwd=REPO)
        self.services.append(svc)
        wait_until(http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 30, "peer ready", svc)
        self.proxy = f"http://127.0.0.1:{proxy_port}"
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()
        if svc in self.services:
            self.services.remove(svc)

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            with contextlib.suppress(Exception):
                svc.stop()
        self.services.clear()


def write_object(path: Path, size: int) -> None:
    """Random bytes (a 64 MiB random block, each copy salted), fsynced so no writeback lingers."""
    block = bytearray(os.urandom(min(size, 64 * MiB)))
    with path.open("wb") as handle:
        written, n = 0, 0
        while written < size:
            block[:8] = n.to_bytes(8, "little")
            chunk = memoryview(block)[: size - written]
            handle.write(chunk)
            written += len(chunk)
            n += 1
        handle.flush()
        os.fsync(handle.fileno())


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * KiB
    return 0


def sync(timeout: float = 120) -> None:
    """Flush dirty pages so one measurement's writeback does not slow the next."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["sync"], timeout=timeout, check=False)


def disk_write_speed(directory: Path, size: int) -> tuple[float, float]:
    """(MB/s of buffered write(), MB/s to durable with fsync) of ``size`` bytes."""
    sync()
    path = directory / "disk-speed.tmp"
    block = os.urandom(4 * MiB)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            written = 0
            while written < size:
                written += os.write(fd, block[: size - written])
            buffered = time.perf_counter() - start
            os.fsync(fd)
            durable = time.perf_counter() - start
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return mbps(size, buffered), mbps(size, durable)


# --- the measurements -------------------------------------------------------------


@dataclass
class Series:
    label: str
    fetches: list[Fetch] = field(default_factory=list)

    def median_seconds(self) -> float:
        return statistics.median(f.seconds for f in self.fetches)

    def row(self, size: int) -> str:
        secs = [f.seconds for f in self.fetches]
        med = statistics.median(secs)
        runs = " ".join(f"{mbps(size, s):.0f}" for s in secs)
        fb = statistics.median(f.first_byte for f in self.fetches) * 1000
        per_gib = GiB / size

        def cpu(get: Callable[[Fetch], float]) -> str:
            values = [get(f) for f in self.fetches]
            return f"{statistics.median(values) * per_gib:5.2f}"

        return (
            f"  {self.label:<16} {mbps(size, med):7.0f} MB/s  {med:6.2f} s  "
            f"first byte {fb:6.1f} ms  cpu s/GiB: curl {cpu(lambda f: f.client_cpu)} "
            f"peer {cpu(lambda f: f.peer_cpu)} (loop {cpu(lambda f: f.peer_main_cpu)}) "
            f"nginx {cpu(lambda f: f.origin_cpu)}   runs MB/s: {runs}"
        )


SETUPS = ("disk-null", "disk-file", "tmpfs-null")


@dataclass
class Setup:
    name: str
    store_root: Path
    sink: str  # "/dev/null" or a path on disk

    def sink_path(self) -> str:
        return self.sink


def measure_setup(rig: Rig, setup: Setup, runs: int, client: Client) -> dict[str, Series]:
    size = rig.size
    labels = ("direct", "store floor", "floor+digest", "cold", "hot", "hot-restarted", "nginx")
    series = {k: Series(k) for k in labels}
    url = rig.url("object.bin")
    on_disk_sink = setup.sink != "/dev/null"

    def fetch(label: str, **kw: Any) -> None:
        if on_disk_sink:
            Path(setup.sink).unlink(missing_ok=True)
            sync()
        result = client.fetch(url, setup.sink, expect_size=size, **kw)
        series[label].fetches.append(result)
        if on_disk_sink:
            Path(setup.sink).unlink(missing_ok=True)

    for run in range(runs):
        fetch("direct", watch=[("origin", rig.nginx)])
        setup.store_root.mkdir(parents=True, exist_ok=True)
        for label, hashing in (("store floor", False), ("floor+digest", True)):
            series[label].fetches.append(
                store_floor(
                    rig.nginx_port, setup.store_root / "floor.bin", size, client.timeout, hashing
                )
            )
        store = setup.store_root / f"store-{run}"
        peer = rig.start_peer(store, quota=6 * size + GiB)
        try:
            watch = [("peer", peer), ("origin", rig.nginx)]
            fetch("cold", proxy=rig.proxy, expect_cache="miss", watch=watch)
            fetch("hot", proxy=rig.proxy, expect_cache="hit", watch=watch)
        finally:
            rig.stop(peer)
        peer = rig.start_peer(store, quota=6 * size + GiB)
        try:
            watch = [("peer", peer), ("origin", rig.nginx)]
            fetch("hot-restarted", proxy=rig.proxy, expect_cache="hit", watch=watch)
        finally:
            rig.stop(peer)
            shutil.rmtree(store, ignore_errors=True)
        fetch("nginx", watch=[("origin", rig.nginx)])
        print(
            f"    run {run + 1}/{runs}: "
            + "  ".join(f"{k} {mbps(size, s.fetches[-1].seconds):.0f}" for k, s in series.items())
            + " MB/s",
            flush=True,
        )
    return series


def report_setup(setup: Setup, series: dict[str, Series], size: int) -> None:
    print(f"\n== {setup.name}")
    for s in series.values():
        print(s.row(size))
    direct = series["direct"].median_seconds()
    cold = series["cold"].median_seconds()
    nginx = series["nginx"].median_seconds()
    hot = series["hot"].median_seconds()
    hot_r = series["hot-restarted"].median_seconds()
    floor = series["store floor"].median_seconds()
    floor_hashed = series["floor+digest"].median_seconds()
    print(f"  cold/direct time             {cold / direct:5.2f}   (goal <= 1.10)")
    print(
        f"  store floor/direct           {floor / direct:5.2f}   "
        f"(+piece digest: {floor_hashed / direct:.2f}; no client served: below any cache's cold)"
    )
    print(f"  hot/nginx throughput         {nginx / hot:5.2f}   (goal >= 0.80)")
    print(f"  hot-restarted/nginx thrpt    {nginx / hot_r:5.2f}   (first read verifies pieces)")


def measure_rss(rig: Rig, store_root: Path, client_timeout: float) -> None:
    """Peer VmHWM with four concurrent cold 1 GiB downloads: one object, four objects."""
    size = rig.size
    names = [f"object-{i}.bin" for i in range(4)]
    for name in names:
        with contextlib.suppress(FileExistsError):
            os.link(rig.www / "object.bin", rig.www / name)  # same bytes, four URLs
    print(
        f"\n== peer peak RSS (VmHWM), 4 concurrent downloads of {human(size)}, client -> /dev/null"
    )
    print("   (the four objects are hard links of one file: four URLs, four tasks)")
    for label, targets, rounds in (
        ("one object x4, cold", [rig.url("object.bin")] * 4, ("miss",)),
        ("four objects, cold then hot", [rig.url(n) for n in names], ("miss", "hit")),
    ):
        store = store_root / "rss-store"
        peer = rig.start_peer(store, quota=6 * size + GiB)
        try:
            idle = proc_status(peer.pid, "VmHWM")
            for state in rounds:
                seconds, peak = concurrent_fetches(rig, peer, targets, client_timeout)
                hwm = proc_status(peer.pid, "VmHWM")
                print(
                    f"  {label:<30} [{state}] VmHWM {hwm / MiB:6.1f} MiB "
                    f"(idle {idle / MiB:.1f} MiB, sampled VmRSS max {peak / MiB:.1f} MiB)  "
                    f"{len(targets) * size / seconds / 1e6:.0f} MB/s aggregate  "
                    f"goal <= 150 MiB"
                )
        finally:
            rig.stop(peer)
            shutil.rmtree(store, ignore_errors=True)


def concurrent_fetches(
    rig: Rig, peer: Service, urls: list[str], timeout: float
) -> tuple[float, int]:
    argv_base = ["curl", "-sS", "--max-time", str(int(timeout)), "--connect-timeout", "5"]
    argv_base += ["-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--noproxy", ""]
    argv_base += ["-x", rig.proxy]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*argv_base, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()
        )
        for url in urls
    ]
    peak = 0
    try:
        deadline = time.monotonic() + timeout + 10
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise BenchError("concurrent downloads did not end in time")
            with contextlib.suppress(FileNotFoundError, BenchError):
                peak = max(peak, proc_status(peer.pid, "VmRSS"))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        for p in procs:
            out, err = p.communicate(timeout=5)
            status, got = out.decode().split()
            if p.returncode != 0 or status != "200" or int(got) != rig.size:
                raise BenchError(f"concurrent download failed: {out!r} {err!r}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    return seconds, peak


def file_sha256(path: Path, start: int = 0, stop: int | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        left = (stop if stop is not None else path.stat().st_size) - start
        while left > 0:
            data = handle.read(min(8 * MiB, left))
            if not data:
                break
            digest.update(data)
            left -= len(data)
    return digest.hexdigest()


def check_correct(rig: Rig, client: Client) -> None:
    """The bytes through the peer (cold, hot, after restart, a range) are the object's."""
    want = file_sha256(rig.www / "object.bin")
    sink = rig.work / "check.bin"
    store = rig.work / "check-store"
    start, stop = rig.size // 3 + 12345, min(rig.size, rig.size // 3 + 12345 + 9 * MiB + 7)
    want_range = file_sha256(rig.www / "object.bin", start, stop)

    def check(state: str) -> None:
        client.fetch(rig.url("object.bin"), str(sink), rig.proxy, rig.size, expect_cache=state)
        if file_sha256(sink) != want:
            raise BenchError(f"{state} download through the peer has wrong bytes")
        argv = ["curl", "-sS", "--max-time", "60", "--noproxy", "", "-x", rig.proxy]
        argv += ["-r", f"{start}-{stop - 1}", "-o", str(sink), rig.url("object.bin")]
        subprocess.run(argv, check=True, timeout=70, env=clean_env())
        if file_sha256(sink) != want_range:
            raise BenchError(f"a range through the peer ({state}) has wrong bytes")

    try:
        for states in (("miss", "hit"), ("hit",)):  # the second peer: a restart
            peer = rig.start_peer(store, quota=6 * rig.size + GiB)
            try:
                for state in states:
                    check(state)
            finally:
                rig.stop(peer)
        print("  correctness: cold, hot, hot after restart and a range: bytes match")
    finally:
        sink.unlink(missing_ok=True)
        shutil.rmtree(store, ignore_errors=True)


def check_client(rig: Rig, client: Client) -> None:
    """Is curl the bottleneck? Compare it with a trivial recv_into() reader."""
    curl_fetch = client.fetch(rig.url("object.bin"), "/dev/null", expect_size=rig.size)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", rig.nginx_port), timeout=rig.timeout) as sock:
        sock.sendall(b"GET /object.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        buffer = memoryview(bytearray(4 * MiB))
        total = 0
        while n := sock.recv_into(buffer):
            total += n
    raw = time.perf_counter() - start
    print(
        f"  client check: curl -> /dev/null {mbps(rig.size, curl_fetch.seconds):.0f} MB/s "
        f"(curl CPU {curl_fetch.client_cpu / curl_fetch.seconds * 100:.0f}% of one core); "
        f"python recv_into(4 MiB) {mbps(total, raw):.0f} MB/s"
    )


# --- profiling --------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread kind: the event loop (main thread) and the others by name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        with contextlib.suppress(FileNotFoundError):
            comm = (task / "comm").read_text().strip()
            name = "event loop (main thread)" if tid == pid else f"thread {comm}"
            out[name] = out.get(name, 0.0) + cpu_seconds(pid, tid)
    out["(process total, incl. exited threads)"] = cpu_seconds(pid)
    return out


def profile_paths(rig: Rig, out: Path, client: Client, use_perf: bool) -> None:
    """cProfile of the event loop, per-thread CPU and optionally perf, for cold and hot."""
    import pstats

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = rig.work / "profile-store"
    peer = rig.start_peer(store, quota=6 * rig.size + GiB, profile_dir=out)
    print(f"\n== profile (store on disk, client -> /dev/null), files in {out}")
    try:
        for n, (label, expect) in enumerate((("cold", "miss"), ("hot", "hit")), start=1):
            perf: subprocess.Popen[bytes] | None = None
            if use_perf and shutil.which("perf"):
                perf = subprocess.Popen(
                    [
                        *("perf", "record", "-F", "499", "-g", "-p", str(peer.pid)),
                        *("-o", str(out / f"perf-{label}.data")),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                time.sleep(0.5)
            before = thread_cpu(peer.pid)
            os.kill(peer.pid, signal.SIGUSR1)
            time.sleep(0.2)
            fetch = client.fetch(
                rig.url("object.bin"),
                "/dev/null",
                proxy=rig.proxy,
                expect_size=rig.size,
                expect_cache=expect,
                watch=[("peer", peer), ("origin", rig.nginx)],
            )
            os.kill(peer.pid, signal.SIGUSR2)
            done = out / f"profile-{n}.done"
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            after = thread_cpu(peer.pid)
            if perf is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(perf.pid, signal.SIGINT)
                try:
                    perf.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(perf.pid, signal.SIGKILL)
                    perf.wait(timeout=5)
            print(
                f"\n-- {label}: {mbps(rig.size, fetch.seconds):.0f} MB/s, "
                f"{fetch.seconds:.2f} s wall; CPU seconds by thread of the peer:"
            )
            for name in sorted(after, key=lambda k: -(after[k] - before.get(k, 0.0))):
                used = after[name] - before.get(name, 0.0)
                if used >= 0.01:
                    print(f"    {used:6.2f} s  {name}")
            print(f"    {fetch.client_cpu:6.2f} s  curl;  {fetch.origin_cpu:.2f} s nginx")
            stats_file = out / f"profile-{n}.pstats"
            if stats_file.exists():
                text = out / f"cprofile-{label}.txt"
                with text.open("w") as handle:
                    stats = pstats.Stats(str(stats_file), stream=handle)
                    stats.sort_stats("tottime").print_stats(40)
                    stats.sort_stats("cumulative").print_stats(40)
                stats_file.rename(out / f"cprofile-{label}.pstats")
                summary = pstats.Stats(str(out / f"cprofile-{label}.pstats"))
                rows = sorted(
                    summary.stats.items(),  # type: ignore[attr-defined]
                    key=lambda kv: -kv[1][2],
                )[:12]
                print("    event loop, top by own time (cProfile; threads not included):")
                for (filename, line, func), (_cc, calls, own, _cum, _callers) in rows:
                    where = f"{Path(filename).name}:{line}" if line else filename
                    print(f"      {own:6.3f} s  {calls:8d} calls  {func}  ({where})")
            if perf is not None and (out / f"perf-{label}.data").exists():
                report = subprocess.run(
                    [
                        *("perf", "report", "--stdio", "--no-children", "--sort", "comm,dso,sym"),
                        *("-i", str(out / f"perf-{label}.data"), "--percent-limit", "1"),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                (out / f"perf-{label}.txt").write_text(report.stdout)
                flat = subprocess.run(
                    [
                        *("perf", "report", "--stdio", "--no-children", "-g", "none"),
                        *("--sort", "comm,dso,sym", "-i", str(out / f"perf-{label}.data")),
                        *("--percent-limit", "1.5"),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                (out / f"perf-flat-{label}.txt").write_text(flat.stdout)
                by_dso = subprocess.run(
                    [
                        *("perf", "report", "--stdio", "--no-children", "-g", "none"),
                        *("--sort", "dso", "-i", str(out / f"perf-{label}.data")),
                        *("--percent-limit", "0.5"),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                print("    perf, the peer process by library (all threads, kernel included):")
                lines = [x for x in by_dso.stdout.splitlines() if x.strip() and x[0] != "#"]
                print("      " + ";  ".join(" ".join(line.split()) for line in lines[:8]))
                print(
                    "    perf, top symbols (libcrypto = sha256; kernel copies = socket/page cache):"
                )
                lines = [x for x in flat.stdout.splitlines() if x.strip() and x[0] != "#"]
                for line in lines[:10]:
                    print(f"      {' '.join(line.split())}")
    finally:
        rig.stop(peer)
        shutil.rmtree(store, ignore_errors=True)


# --- main -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=GiB, help="object size (1GiB)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions, medians shown (3)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="temp dir on the disk under test (/tmp)"
    )
    parser.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help=f"comma-separated subset of {','.join(SETUPS)} (all; empty: none)",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS measurement")
    parser.add_argument(
        "--patch",
        action="append",
        default=[],
        help="run the peer with a bench-only experimental patch (see bench/peer_launch.py)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="also profile, into DIR")
    parser.add_argument("--perf", action="store_true", help="with --profile: perf record too")
    parser.add_argument(
        "--profile-only", action="store_true", help="with --profile: skip the measurements"
    )
    parser.add_argument(
        "--deadline", type=float, default=1800, help="overall time limit in seconds (1800)"
    )
    args = parser.parse_args(argv)
    args.setups = {name for name in args.setups.split(",") if name}
    if args.setups - set(SETUPS):
        parser.error(f"--setups: unknown {sorted(args.setups - set(SETUPS))}; known: {SETUPS}")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            print(
                f"bench: {tool} is not installed (scripts/bootstrap installs it)", file=sys.stderr
            )
            return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, interrupted)
    signal.alarm(int(args.deadline))

    # 5 s/GiB at worst (200 MB/s) plus slack: no single request may hang the bench.
    request_timeout = max(60.0, 20 * args.size / GiB + 30)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="damselfly-bench-", dir=args.workdir))
        stack.callback(shutil.rmtree, work, True)
        shm: Path | None = None
        if "tmpfs-null" in args.setups and Path("/dev/shm").is_dir():
            free = shutil.disk_usage("/dev/shm").free
            if free > 3 * args.size:
                shm = Path(tempfile.mkdtemp(prefix="damselfly-bench-", dir="/dev/shm"))
                stack.callback(shutil.rmtree, shm, True)
            else:
                print(f"bench: /dev/shm has only {human(free)} free: tmpfs setup skipped")
        rig = Rig(work, shm, args.size, request_timeout, list(args.patch))
        stack.callback(rig.stop_all)
        try:
            return run(rig, args, request_timeout)
        except Interrupted as exc:
            print(f"\nbench: interrupted ({exc}); cleaning up", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print("\nbench: interrupted; cleaning up", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
    return 0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def describe_fs(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=source,fstype", str(path)], capture_output=True, text=True, timeout=10
    )
    lines = out.stdout.split("\n")
    return " ".join(lines[1].split()) if len(lines) > 1 else "?"


def run(rig: Rig, args: argparse.Namespace, request_timeout: float) -> int:
    size = args.size
    client = Client(request_timeout)
    print(f"damselfly bench/proxy.py: object {human(size)}, {args.runs} runs (medians)")
    print(
        f"  host: {os.cpu_count()} CPUs, {human(meminfo('MemTotal'))} RAM, "
        f"python {sys.version.split()[0]}, load average {loadavg()} (other work skews figures)"
    )
    print(f"  workdir {rig.work} on {describe_fs(rig.work)}; tmpfs {rig.shm or '(skipped)'}")
    if args.patch:
        print(f"  peer patches (bench-only experiments): {', '.join(args.patch)}")
    write_object(rig.www / "object.bin", size)
    buffered, durable = disk_write_speed(rig.work, size)
    print(
        f"  disk write speed ({human(size)}): {buffered:.0f} MB/s buffered write(), "
        f"{durable:.0f} MB/s incl. fsync   [Dirty now {human(meminfo('Dirty'))}]"
    )
    rig.start_nginx()
    client.fetch(rig.url("object.bin"), "/dev/null", expect_size=size)  # into page cache
    check_client(rig, client)
    check_correct(rig, client)

    setups = []
    if "disk-null" in args.setups:
        setups.append(Setup("store on disk, client -> /dev/null", rig.work, "/dev/null"))
    if "disk-file" in args.setups:
        sink = str(rig.work / "client-sink.bin")
        setups.append(Setup("store on disk, client -> file on the same disk", rig.work, sink))
    if "tmpfs-null" in args.setups and rig.shm is not None:
        setups.append(Setup("store on tmpfs (/dev/shm), client -> /dev/null", rig.shm, "/dev/null"))

    if args.profile_only:
        setups = []
    results = []
    for setup in setups:
        print(f"\n-- measuring: {setup.name}", flush=True)
        results.append((setup, measure_setup(rig, setup, args.runs, client)))
    print(f"\n===== results ({human(size)}, median of {args.runs}; CPU is per GiB moved)")
    for setup, series in results:
        report_setup(setup, series, size)
    if not args.no_rss and not args.profile_only:
        measure_rss(rig, rig.work, request_timeout)
    if args.profile is not None:
        profile_paths(rig, args.profile, client, args.perf)
    after_buffered, after_durable = disk_write_speed(rig.work, size)
    print(
        f"\n  disk write speed at the end: {after_buffered:.0f} MB/s buffered, "
        f"{after_durable:.0f} MB/s incl. fsync; load average {loadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
