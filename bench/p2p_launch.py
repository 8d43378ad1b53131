#!/usr/bin/env python3
"""Bench-only launcher for bench/p2p_fanout.py: run ``damselfly`` with an experiment.

    python bench/p2p_launch.py [--patch NAME ...] -- ARGS

Tunables are config, not code: the fan-out bench sets them in the files it writes
(``--peer-set transfer.pieceWindow=32``, ``--scheduler-set seedAttempts=1``).
``--patch`` applies one of the monkeypatches below, in this process only, so a
proposed change of behaviour can be measured before anyone edits damselfly/.
(The swarm patches that lived here, rarest-first, peers before seeds, parent
refresh and 503-is-busy, are how the peer works now, and were removed.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn

    return register


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


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("usage: p2p_launch.py [--patch NAME] -- ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    args = parser.parse_args(argv[:split])
    for name in args.patch:
        PATCHES[name]()
    from damselfly.cli import main as damselfly_main

    return damselfly_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
