#!/usr/bin/env python3
"""Bench-only launcher: run ``damselfly`` with experimental patches and on-demand cProfile.

    python bench/peer_launch.py [--patch NAME ...] [--profile-dir DIR] -- <damselfly args>

Nothing here changes damselfly/peer/: the patches are monkeypatches applied in
this process only, so a proposed change can be measured before anyone edits the
peer. (The sendfile, no-copy and verify-ahead experiments measured here have
since landed in the peer and were removed.) With ``--profile-dir``, SIGUSR1
starts cProfile on the event-loop thread and SIGUSR2 stops it and writes
``DIR/profile-<n>.pstats``.
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn

    return register


@patch("readbuf")
def bigger_read_buffer() -> None:
    """aiohttp's response buffer 64 KiB -> 1 MiB: fewer pause/resume_reading cycles."""
    from damselfly.peer import app

    original = app.Peer._client_session

    def client_session(self: Any) -> Any:
        session = original(self)
        session._read_bufsize = 1 << 20
        return session

    app.Peer._client_session = client_session  # type: ignore[method-assign]


@patch("bigchunks")
def bigger_chunks() -> None:
    """WRITE_BUFFER 1 MiB -> 4 MiB: a quarter of the thread hops on the cold path."""
    from damselfly.peer.store import writer

    writer.WRITE_BUFFER = 4 << 20


def install_profiler(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, object] = {"n": 0, "profiler": None}

    def start(_sig: int, _frame: object) -> None:
        profiler = cProfile.Profile()
        state["profiler"] = profiler
        profiler.enable()

    def stop(_sig: int, _frame: object) -> None:
        profiler = state["profiler"]
        if isinstance(profiler, cProfile.Profile):
            profiler.disable()
            n = int(str(state["n"])) + 1
            state["n"] = n
            profiler.dump_stats(str(directory / f"profile-{n}.pstats"))
            (directory / f"profile-{n}.done").touch()
            state["profiler"] = None

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("usage: peer_launch.py [--patch NAME] [--profile-dir DIR] -- ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    parser.add_argument("--profile-dir", type=Path, default=None)
    args = parser.parse_args(argv[:split])
    for name in args.patch:
        PATCHES[name]()
    if args.profile_dir is not None:
        install_profiler(args.profile_dir)
    from damselfly.cli import main as damselfly_main

    return damselfly_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
