#!/usr/bin/env python3
"""Scheduler benchmark: 1,000 peers on one task.

    .venv/bin/python bench/scheduler.py [--peers 1000] [--pieces 256] [--http-reports 40000]

Two measurements, printed side by side:

  core  Resources + evaluator driven in this process (no HTTP, no JSON):
        every peer registers, then reports each piece singly (one call per piece,
        the most expensive way), with a reschedule of a random peer every 100
        reports so scheduling runs against a pool full of partial holders.
  http  a real ``damselfly scheduler`` subprocess on loopback driven with the
        real SchedulerClient: 1,000 sequential registrations (round-trip
        latency), piece reports from concurrent workers with 1 and with 16
        pieces per request, and sequential reschedules once the swarm holds
        pieces.

Goals (issue 4): >= 5,000 piece reports/s on one core and scheduling latency
p99 <= 5 ms. The scheduler is one process, so it uses one core; the HTTP client
runs in this process on the other. Figures only: nothing is asserted.

Bounded: loopback only; every loop has a fixed count; the subprocess is
stopped at exit (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from damselfly.api import scheduler as api  # noqa: E402
from damselfly.api.schedulerclient import SchedulerClient  # noqa: E402
from damselfly.scheduler.resources import Limits, Resources  # noqa: E402

TASK = "bench-" + "0" * 58
URL = "http://origin.invalid/object.bin"
PIECE = 4 << 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"  {name:<34} n={len(ms):<6} p50={percentile(ms, 50):7.3f} ms  "
        f"p99={percentile(ms, 99):7.3f} ms  max={max(ms):7.3f} ms"
    )


def announce(
    host_id: str, port: int, seed: bool = False, held: bool = False, pieces: int = 0
) -> api.AnnounceHost:
    tasks: list[api.HeldTask] = []
    if held:
        tasks.append(
            api.HeldTask(
                task_id=TASK,
                url=URL,
                size=pieces * PIECE,
                piece_length=PIECE,
                piece_digests={n: f"{n:064x}" for n in range(pieces)},
                complete=True,
            )
        )
    return api.AnnounceHost(
        host_id=host_id,
        ip="127.0.0.1",
        upload_port=port,
        seed=seed,
        upload_slots_total=32,
        upload_slots_free=32,
        upload_slots_per_task=2 if seed else 4,  # the peer's defaults
        disk_free_bytes=1 << 40,
        tasks=tasks,
    )


def peer_ids(n: int) -> list[str]:
    return [f"peer-{i:04d}" for i in range(n)]


def piece_plan(peers: list[str], pieces: int, rng: random.Random) -> Iterator[tuple[str, int]]:
    """Round by round, every peer finishes one more piece (order shuffled per round)."""
    for number in range(pieces):
        order = list(peers)
        rng.shuffle(order)
        for peer in order:
            yield peer, number


# -- in-process core ---------------------------------------------------------


def bench_core(n_peers: int, pieces: int) -> None:
    rng = random.Random(1)
    res = Resources(Limits(), rng=random.Random(2))
    res.announce(announce("seed-0", 65002, seed=True, held=True, pieces=pieces))
    peers = peer_ids(n_peers)
    for i, peer in enumerate(peers):
        res.announce(announce(peer, 30000 + i))
    register_lat: list[float] = []
    register_cpu: list[float] = []
    parents: dict[str, list[str]] = {}
    for peer in peers:
        req = api.RegisterTask(
            task_id=TASK, host_id=peer, url=URL, size=pieces * PIECE, piece_length=PIECE
        )
        t0, c0 = time.perf_counter(), time.thread_time()
        decision = res.register(req)
        register_lat.append(time.perf_counter() - t0)
        register_cpu.append(time.thread_time() - c0)
        parents[peer] = [p.host_id for p in decision.schedule.parents] or ["seed-0"]

    reschedule_lat: list[float] = []
    reschedule_cpu: list[float] = []
    reports = 0
    report_time = 0.0
    report_cpu = 0.0
    for peer, number in piece_plan(peers, pieces, rng):
        choice = parents[peer]
        parent = choice[number % len(choice)]
        req_pieces = api.PieceReports(
            task_id=TASK,
            host_id=peer,
            pieces=[
                api.PieceReport(
                    number=number,
                    digest=f"{number:064x}",
                    length=PIECE,
                    cost_ms=20.0 + rng.random() * 5,
                    parent_host_id=parent,
                )
            ],
        )
        t0, c0 = time.perf_counter(), time.thread_time()
        res.report_pieces(req_pieces)
        report_time += time.perf_counter() - t0
        report_cpu += time.thread_time() - c0
        reports += 1
        if reports % 100 == 0:
            who = peers[rng.randrange(n_peers)]
            t0, c0 = time.perf_counter(), time.thread_time()
            decision = res.reschedule(api.Reschedule(task_id=TASK, host_id=who, blocklist=[]))
            reschedule_lat.append(time.perf_counter() - t0)
            reschedule_cpu.append(time.thread_time() - c0)
            res.tasks[TASK].peers[who].reschedules = 0  # keep it schedulable, not back-to-source
            parents[who] = [p.host_id for p in decision.schedule.parents] or ["seed-0"]

    print(f"core (in process, {n_peers} peers, {pieces} pieces each):")
    print(
        f"  piece reports                      n={reports:<6} "
        f"{reports / report_time:,.0f} reports/s wall, {reports / report_cpu:,.0f} per CPU-s "
        "(one piece per call)"
    )
    print(latency_line("register, wall", register_lat))
    print(latency_line("register, CPU", register_cpu))
    print(latency_line("reschedule (swarm has pieces), wall", reschedule_lat))
    print(latency_line("reschedule (swarm has pieces), CPU", reschedule_cpu))


# -- over HTTP ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): contention-free cost figures."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def is_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def scheduler_process(port: int, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "damselfly.cli", "--log-level", "WARNING", "scheduler"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if is_ready(port):
                break
            if proc.poll() is not None:
                raise SystemExit("scheduler exited during start-up")
            time.sleep(0.05)
        else:
            raise SystemExit("scheduler did not become ready in 30 s")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def bench_http(n_peers: int, pieces: int, total_reports: int, workers: int) -> None:
    port, metrics_port = free_ports(2)
    rng = random.Random(3)
    with scheduler_process(port, metrics_port) as proc:
        connector = aiohttp.TCPConnector(limit=workers + 4)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = SchedulerClient([f"127.0.0.1:{port}"], session, timeout=10.0)
            await client.announce(announce("seed-0", 65002, seed=True, held=True, pieces=pieces))
            peers = peer_ids(n_peers)
            for i, peer in enumerate(peers):
                await client.announce(announce(peer, 30000 + i))
            register_lat: list[float] = []
            parents: dict[str, list[str]] = {}
            for peer in peers:
                req = api.RegisterTask(
                    task_id=TASK, host_id=peer, url=URL, size=pieces * PIECE, piece_length=PIECE
                )
                t0 = time.perf_counter()
                schedule = await client.register(req)
                register_lat.append(time.perf_counter() - t0)
                parents[peer] = [p.host_id for p in schedule.parents] or ["seed-0"]

            plan = list(piece_plan(peers, pieces, rng))
            results: dict[int, tuple[int, float, float]] = {}
            cursor = 0
            for batch in (1, 16):
                count = min(total_reports, len(plan) - cursor)
                chunk = plan[cursor : cursor + count]
                cursor += count
                # Group each worker's share into per-peer batches of ``batch`` pieces.
                by_peer: dict[str, list[int]] = {}
                for peer, number in chunk:
                    by_peer.setdefault(peer, []).append(number)
                bodies: list[api.PieceReports] = []
                for peer, numbers in by_peer.items():
                    for i in range(0, len(numbers), batch):
                        bodies.append(
                            api.PieceReports(
                                task_id=TASK,
                                host_id=peer,
                                pieces=[
                                    api.PieceReport(
                                        number=n,
                                        digest=f"{n:064x}",
                                        length=PIECE,
                                        cost_ms=20.0,
                                        parent_host_id=parents[peer][n % len(parents[peer])],
                                    )
                                    for n in numbers[i : i + batch]
                                ],
                            )
                        )
                queue = iter(bodies)

                async def worker(q: Iterator[api.PieceReports] = queue) -> None:
                    for body in q:
                        await client.report_pieces(body)

                t0, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
                await asyncio.gather(*(worker() for _ in range(workers)))
                elapsed = time.perf_counter() - t0
                results[batch] = (
                    sum(len(b.pieces) for b in bodies),
                    elapsed,
                    cpu_seconds(proc.pid) - cpu0,
                )

            reschedule_lat: list[float] = []
            for _ in range(500):
                who = peers[rng.randrange(n_peers)]
                t0 = time.perf_counter()
                await client.reschedule(api.Reschedule(task_id=TASK, host_id=who, blocklist=[]))
                reschedule_lat.append(time.perf_counter() - t0)
                # re-register resets the reschedule budget, like a peer starting over
                if len(reschedule_lat) % 4 == 0:
                    await client.register(api.RegisterTask(task_id=TASK, host_id=who, url=URL))

    print(f"http (real scheduler process on loopback, {workers} concurrent client workers):")
    for batch, (n, elapsed, cpu) in results.items():
        print(
            f"  piece reports, {batch:>2} per request         n={n:<6} "
            f"{n / elapsed:,.0f} reports/s wall ({n / batch / elapsed:,.0f} requests/s), "
            f"{n / cpu:,.0f} per scheduler CPU-s"
        )
    print(latency_line("register round trip (sequential)", register_lat))
    print(latency_line("reschedule round trip (sequential)", reschedule_lat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--pieces", type=int, default=256, help="pieces per peer (core)")
    parser.add_argument("--http-reports", type=int, default=40000, help="pieces per HTTP run")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; goals: >= 5,000 reports/s, schedule p99 <= 5 ms\n")
    bench_core(args.peers, args.pieces)
    print()
    if not args.skip_http:
        asyncio.run(bench_http(args.peers, args.pieces, args.http_reports, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
