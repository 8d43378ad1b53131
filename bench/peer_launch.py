#!/usr/bin/env python3
"""Bench-only launcher: run ``damselfly`` with experimental patches and on-demand cProfile.

    python bench/peer_launch.py [--patch NAME ...] [--profile-dir DIR] -- <damselfly args>

Nothing here changes damselfly/peer/: the patches are monkeypatches applied in
this process only, so a proposed change can be measured before anyone edits the
peer. With ``--profile-dir``, SIGUSR1 starts cProfile on the event-loop thread and
SIGUSR2 stops it and writes ``DIR/profile-<n>.pstats``.
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


@patch("sendfile")
def sendfile_serving() -> None:
    """serve._send_piece_part: verify only unverified pieces, then loop.sendfile the span.

    h11's data passthrough frames a placeholder whose len() is the span; the bytes
    go from the page cache to the socket without entering Python.
    """
    import asyncio
    import os

    import h11

    from damselfly.peer import serve
    from damselfly.peer.http1 import ClientConnection, ClientGone

    class FileSpan:
        def __init__(self, count: int) -> None:
            self.count = count

        def __len__(self) -> int:
            return self.count

    async def send_piece_part(
        conn: ClientConnection,
        cache: Any,
        record: Any,
        fd: int,
        number: int,
        start: int,
        stop: int,
    ) -> None:
        if (record.task_id, number) not in cache.store._verified:
            await asyncio.to_thread(cache.store.verify_piece, fd, record, number)
        count = stop - start
        if count <= 0:
            return
        loop = asyncio.get_running_loop()
        try:
            for part in conn.h11.send_with_data_passthrough(h11.Data(data=FileSpan(count))) or ():
                if isinstance(part, FileSpan):
                    await conn.writer.drain()
                    with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
                        sent = await loop.sendfile(conn.writer.transport, handle, start, count)
                    if sent != count:
                        raise serve.PieceCorrupt(f"data file is shorter than piece {number}")
                else:
                    conn.writer.write(part)
            await conn.writer.drain()
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc

    serve._send_piece_part = send_piece_part  # type: ignore[assignment]


@patch("nocopy")
def no_copy_writes() -> None:
    """download._write_stream: keep the received chunks, hash them and pwritev them.

    Today every byte is copied twice on the event loop (bytearray +=, bytes()).
    """
    import asyncio
    import hashlib
    import os
    from collections.abc import AsyncIterator

    from damselfly.peer import download, origin

    def hash_and_writev(digest: Any, fd: int, offset: int, parts: list[bytes]) -> None:
        for part in parts:
            digest.update(part)
        views = [memoryview(part) for part in parts]
        while views:
            written = os.pwritev(fd, views[:1024], offset)
            offset += written
            while written:
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0] = views[0][written:]
                    written = 0

    async def write_stream(
        self: Any, fd: int, offset: int, length: int, chunks: AsyncIterator[bytes]
    ) -> str:
        digest = hashlib.sha256()
        parts: list[bytes] = []
        pending = 0
        written = 0

        async def flush() -> None:
            nonlocal parts, pending, written
            if written + pending > length:
                raise origin.OriginError("origin sent more bytes than the range holds")
            batch, size = parts, pending
            parts, pending = [], 0
            await asyncio.to_thread(hash_and_writev, digest, fd, offset + written, batch)
            written += size

        async for chunk in chunks:
            parts.append(chunk)
            pending += len(chunk)
            if pending >= download.WRITE_BUFFER:
                await flush()
        if parts:
            await flush()
        if written != length:
            raise origin.OriginError(f"body ended after {written} of {length} bytes")
        return digest.hexdigest()

    download.Download._write_stream = write_stream  # type: ignore[method-assign]


@patch("readbuf")
def bigger_read_buffer() -> None:
    """aiohttp's response buffer 64 KiB -> 1 MiB: fewer pause/resume_reading cycles."""
    from damselfly.peer import main

    original = main.Peer._client_session

    def client_session(self: Any) -> Any:
        session = original(self)
        session._read_bufsize = 1 << 20
        return session

    main.Peer._client_session = client_session  # type: ignore[method-assign]


@patch("bigchunks")
def bigger_chunks() -> None:
    """WRITE_BUFFER and serve's READ_CHUNK 1 MiB -> 4 MiB: a quarter of the thread hops."""
    from damselfly.peer import download, serve

    download.WRITE_BUFFER = 4 << 20
    serve.READ_CHUNK = 4 << 20


@patch("verifyahead")
def verify_ahead() -> None:
    """Hot after a restart: hash piece n+1 in a thread while piece n is being sent.

    Apply after ``sendfile`` to combine them. A failed look-ahead is ignored: the
    piece is then verified again, in order, and fails the response as today.
    """
    import asyncio
    import contextlib
    import os

    from damselfly.peer import serve

    inner = serve._send_piece_part
    ahead: dict[tuple[str, int], asyncio.Future[None]] = {}

    async def verify_dup(store: Any, dup: int, record: Any, number: int) -> None:
        try:
            await asyncio.to_thread(store.verify_piece, dup, record, number)
        finally:
            os.close(dup)

    async def send_piece_part(
        conn: Any, cache: Any, record: Any, fd: int, number: int, start: int, stop: int
    ) -> None:
        pending = ahead.pop((record.task_id, number), None)
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        following = (record.task_id, number + 1)
        if (
            record.complete
            and number + 1 in record.pieces
            and following not in cache.store._verified
            and following not in ahead
        ):
            task = asyncio.ensure_future(verify_dup(cache.store, os.dup(fd), record, number + 1))
            ahead[following] = task
            task.add_done_callback(lambda _t: None)
        await inner(conn, cache, record, fd, number, start, stop)

    serve._send_piece_part = send_piece_part  # type: ignore[assignment]


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
