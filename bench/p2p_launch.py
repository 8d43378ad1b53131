#!/usr/bin/env python3
"""Bench-only launcher for bench/p2p_fanout.py: run ``damselfly`` with experiment knobs.

    python bench/p2p_launch.py [--set MODULE.NAME=VALUE ...] [--patch NAME ...] -- ARGS

Nothing in damselfly/ changes: ``--set`` overrides a module constant (for example
``damselfly.peer.swarm.MAX_REQUESTS_PER_PARENT=8``) and ``--patch`` applies one of
the monkeypatches below, in this process only, so a proposed change can be
measured in the fan-out bench before anyone edits the peer.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
from collections.abc import Callable
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn

    return register


# Requests one child keeps in flight to one seed parent under the "rarest" patch
# (None: MAX_REQUESTS_PER_PARENT, as for any parent). Set with --set __main__.SEED_REQUESTS=1.
SEED_REQUESTS = 0


@patch("rarest")
def rarest_first() -> None:
    """Swarm.pick: the wanted piece held by the fewest parents (ties at random), instead
    of the lowest-numbered one, so children of one parent fetch different pieces and
    can then trade them. Among its holders a peer before a seed, then the least busy;
    with SEED_REQUESTS > 0 a child keeps at most that many requests on a seed."""
    from damselfly.peer import swarm as swarm_module

    def pick(
        self: swarm_module.Swarm, wanted: list[int]
    ) -> tuple[int, swarm_module.ParentLink] | None:
        limit = swarm_module.MAX_REQUESTS_PER_PARENT
        seed_limit = SEED_REQUESTS or limit
        usable = [link for link in self.links.values() if link.usable]
        best: tuple[int, float, int, list[swarm_module.ParentLink]] | None = None
        for number in wanted:
            holders = [link for link in usable if number in link.pieces]
            free = [
                link
                for link in holders
                if link.in_flight < (seed_limit if link.parent.seed else limit)
            ]
            if not free:
                continue
            key = (len(holders), random.random())
            if best is None or key < (best[0], best[1]):
                best = (key[0], key[1], number, free)
        if best is None:
            return None
        chosen = min(best[3], key=lambda h: (h.parent.seed, h.in_flight, random.random()))
        return best[2], chosen

    swarm_module.Swarm.pick = pick  # type: ignore[method-assign]


@patch("spread")
def least_busy_random() -> None:
    """Swarm.pick: the lowest-numbered wanted piece as today, but among its holders the
    least busy with ties broken at random (today ties go to complete parents, then
    seeds: every child's first choice is the same parent)."""
    from damselfly.peer import swarm as swarm_module

    def pick(
        self: swarm_module.Swarm, wanted: list[int]
    ) -> tuple[int, swarm_module.ParentLink] | None:
        limit = swarm_module.MAX_REQUESTS_PER_PARENT
        for number in wanted:
            holders = [
                link
                for link in self.links.values()
                if link.usable and number in link.pieces and link.in_flight < limit
            ]
            if holders:
                return number, min(holders, key=lambda h: (h.in_flight, random.random()))
        return None

    swarm_module.Swarm.pick = pick  # type: ignore[method-assign]


@patch("peersfirst")
def peers_before_seeds() -> None:
    """Swarm.pick: the lowest-numbered wanted piece as today, but from a seed only when
    no other usable parent with a free request slot holds it; among the rest the least
    busy, ties at random. Today the tie-break prefers seeds, so the seed's upload
    carries most of the swarm."""
    from damselfly.peer import swarm as swarm_module

    def pick(
        self: swarm_module.Swarm, wanted: list[int]
    ) -> tuple[int, swarm_module.ParentLink] | None:
        limit = swarm_module.MAX_REQUESTS_PER_PARENT
        for number in wanted:
            holders = [
                link
                for link in self.links.values()
                if link.usable and number in link.pieces and link.in_flight < limit
            ]
            if holders:
                best = min(holders, key=lambda h: (h.parent.seed, h.in_flight, random.random()))
                return number, best
        return None

    swarm_module.Swarm.pick = pick  # type: ignore[method-assign]


@patch("cycles")
def allow_cycles() -> None:
    """Scheduler: a child may take a parent that (transitively) downloads from it.

    Pieces are exchanged one by one against each parent's announced list, so
    two peers feeding each other cannot deadlock: neither asks for what the
    other lacks. Today the cycle rule makes the parent graph a DAG in
    registration order, and the first peer to register can use only the seed."""
    from damselfly.scheduler import evaluator

    def would_cycle(child: str, candidate: str, *_args: object, **_kwargs: object) -> bool:
        return candidate == child

    evaluator.would_cycle = would_cycle


@patch("refresh")
def refresh_parents() -> None:
    """Peer: when no parent has a wanted piece, ask the scheduler for parents again
    (at most every REFRESH_SECONDS), so peers that registered first learn of
    those that registered later. Today a peer asks again only when every parent
    is dead."""
    import time

    from damselfly.peer import download

    refresh_seconds = 1.0
    original = download.Download._wait_for_parents

    async def wait_for_parents(self: download.Download, swarm: Any) -> None:
        now = time.monotonic()
        if swarm.alive() and now - getattr(self, "_bench_refreshed", 0.0) > refresh_seconds:
            self._bench_refreshed = now  # type: ignore[attr-defined]
            await self._reschedule(swarm)
            self._reschedules -= 1  # a refresh is not a failure
        await original(self, swarm)

    download.Download._wait_for_parents = wait_for_parents  # type: ignore[method-assign]


@patch("busy")
def busy_is_not_failure() -> None:
    """Peer: a parent answering 503 (all its upload slots taken) is busy, not failed:
    wait a moment and pick again instead of blocking it for the whole task. Today a
    503 blocks the parent, so a small ``upload.slots`` on a seed cannot be used to
    make it serve each piece a few times and let the peers spread it."""
    import asyncio

    from damselfly.peer import download

    original = download.Download._parent_failed

    async def parent_failed(self: download.Download, swarm: Any, exc: Any) -> None:
        if " answered 503" in str(exc):
            await asyncio.sleep(0.05)
            return
        await original(self, swarm, exc)

    download.Download._parent_failed = parent_failed  # type: ignore[method-assign]


def set_constant(assignment: str) -> None:
    target, _, text = assignment.partition("=")
    module_name, _, name = target.rpartition(".")
    if not module_name or not text:
        raise SystemExit(f"--set wants MODULE.NAME=VALUE, got {assignment!r}")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"{module_name} has no {name}")
    old = getattr(module, name)
    value: object = type(old)(text) if isinstance(old, int | float) else text
    setattr(module, name, value)


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("usage: p2p_launch.py [--set M.N=V] [--patch NAME] -- ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], dest="assignments")
    parser.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    args = parser.parse_args(argv[:split])
    for assignment in args.assignments:
        set_constant(assignment)
    for name in args.patch:
        PATCHES[name]()
    from damselfly.cli import main as damselfly_main

    return damselfly_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
