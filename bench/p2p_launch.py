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

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn

    return register


@patch("rarest")
def rarest_first() -> None:
    """Swarm.pick: the wanted piece held by the fewest parents (ties at random), instead
    of the lowest-numbered one, so children of one parent fetch different pieces and
    can then trade them."""
    from damselfly.peer import swarm as swarm_module

    def pick(
        self: swarm_module.Swarm, wanted: list[int]
    ) -> tuple[int, swarm_module.ParentLink] | None:
        limit = swarm_module.MAX_REQUESTS_PER_PARENT
        usable = [link for link in self.links.values() if link.usable]
        best: tuple[int, float, int, list[swarm_module.ParentLink]] | None = None
        for number in wanted:
            holders = [link for link in usable if number in link.pieces]
            free = [link for link in holders if link.in_flight < limit]
            if not free:
                continue
            key = (len(holders), random.random())
            if best is None or key < (best[0], best[1]):
                best = (key[0], key[1], number, free)
        if best is None:
            return None
        chosen = min(best[3], key=lambda h: (h.in_flight, random.random()))
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
