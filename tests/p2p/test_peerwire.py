"""The peer-to-peer wire: peers of two versions understand each other's piece stream.

During a rolling update an upgraded child reads the piece stream of a parent
not yet upgraded, and the reverse. The v0 lines below are written out as the
bytes peers sent before ``api.peerwire`` existed; they must keep working.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.config.peer import StorageSection
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.p2p.upload import UploadServer
from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.pieces import Piece
from damselfly.peer.store.piecestore import PieceStore
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.parents import HttpParents
from damselfly.peer.transfer.rangefetch import RangeFetcher
from damselfly.peer.transfer.swarm import ParentLink, Swarm

TASK = "a1b2c3"
PIECE = 1024

# What a v0 parent streams for a task it is still downloading, line by line.
V0_STREAM = (
    b'{"size":2100,"pieceLength":1024,"headers":{"ETag":"\\"v1\\""},'
    b'"pieces":{"0":"blake3:00"},"complete":false}\n'
    b'{"alive":true}\n'
    b'{"piece":1,"digest":"blake3:11"}\n'
    b'{"piece":2,"digest":"blake3:22"}\n'
    b'{"complete":true,"size":2100}\n'
)

# A newer parent: fields and a kind of line this version does not know.
NEWER_STREAM = (
    b'{"size":2100,"pieceLength":1024,"headers":{},"pieces":{"0":"blake3:00"},'
    b'"complete":false,"protocol":2,"trailers":{"x":"y"}}\n'
    b'{"draining":true,"until":"2031-01-01T00:00:00Z"}\n'
    b'{"piece":1,"digest":"blake3:11","length":1024}\n'
    b'{"piece":2,"digest":"blake3:22"}\n'
    b'{"complete":true,"size":2100,"sha256":"ab"}\n'
)


# --- the lines on their own


def test_each_message_renders_as_v0_peers_wrote_it_and_parses_back() -> None:
    messages: list[peerwire.Message] = [
        peerwire.StreamStart(
            size=2100, piece_length=PIECE, headers={"ETag": '"v1"'}, pieces={0: "blake3:00"}
        ),
        peerwire.Alive(),
        peerwire.NewPiece(piece=1, digest="blake3:11"),
        peerwire.NewPiece(piece=2, digest="blake3:22"),
        peerwire.Complete(size=2100),
    ]
    assert b"".join(peerwire.render(m) for m in messages) == V0_STREAM
    assert [peerwire.parse_line(line) for line in V0_STREAM.splitlines()] == messages


def test_a_size_not_known_yet_is_null_on_the_wire() -> None:
    start = peerwire.StreamStart(size=None, piece_length=PIECE)
    line = peerwire.render(start)
    assert line == b'{"size":null,"pieceLength":1024,"headers":{},"pieces":{},"complete":false}\n'
    assert peerwire.parse_line(line) == start


def test_an_older_peers_first_line_without_headers_or_size() -> None:
    assert peerwire.parse_line(b'{"pieceLength":1024,"pieces":{"3":"d"}}') == (
        peerwire.StreamStart(size=None, piece_length=PIECE, headers={}, pieces={3: "d"})
    )
    # v0 readers took a null for nothing; so does this one
    start = peerwire.parse_line(b'{"size":5,"pieceLength":4,"headers":null,"pieces":null}')
    assert start == peerwire.StreamStart(size=5, piece_length=4)


def test_a_newer_peers_lines_lose_only_what_this_version_does_not_know() -> None:
    parsed = [peerwire.parse_line(line) for line in NEWER_STREAM.splitlines()]
    assert parsed == [
        peerwire.StreamStart(size=2100, piece_length=PIECE, pieces={0: "blake3:00"}),
        None,  # a kind of line this version does not know: skipped
        peerwire.NewPiece(piece=1, digest="blake3:11"),
        peerwire.NewPiece(piece=2, digest="blake3:22"),
        peerwire.Complete(size=2100),
    ]


@pytest.mark.parametrize(
    "line",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'"piece"', b'{"piece":1}', b'{"pieceLength":"big"}'],
)
def test_junk_is_a_clear_error(line: bytes) -> None:
    with pytest.raises(peerwire.BadLine, match=r"piece stream line|bad "):
        peerwire.parse_line(line)


def test_the_paths_are_those_v0_peers_serve() -> None:
    assert peerwire.piece_stream_path(TASK) == f"/v1/tasks/{TASK}/pieces"
    assert peerwire.piece_path(TASK) == f"/v1/tasks/{TASK}"


# --- over HTTP on loopback


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def recorded_parent(stream: bytes, data: bytes, ranges: list[str]) -> web.Application:
    """A parent that sends ``stream`` as it is, and pieces of ``data`` at the v0 paths."""

    async def piece_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in stream.splitlines(keepends=True):
            await response.write(line)
        return response

    async def piece_data(request: web.Request) -> web.Response:
        ranges.append(request.headers["Range"])
        start, end = (int(n) for n in request.headers["Range"].removeprefix("bytes=").split("-"))
        return web.Response(status=206, body=data[start : end + 1])

    app = web.Application()
    app.router.add_get(f"/v1/tasks/{TASK}/pieces", piece_stream)
    app.router.add_get(f"/v1/tasks/{TASK}", piece_data)
    return app


async def watched(port: int, session: aiohttp.ClientSession) -> tuple[Swarm, ParentLink]:
    """A new child's swarm with the parent on ``port``, once the parent's stream has ended."""
    swarm = Swarm(TASK, HttpParents(session, piece_timeout=5))
    swarm.add([api.Parent(host_id="parent", ip="127.0.0.1", upload_port=port)])
    link = swarm.links["parent"]
    assert link.watcher is not None
    await asyncio.wait_for(link.watcher, 5)
    return swarm, link


async def fetched(swarm: Swarm, link: ParentLink, piece: Piece) -> bytes:
    return b"".join([chunk async for chunk in swarm.fetch(link, piece)])


@pytest.mark.parametrize("stream", [V0_STREAM, NEWER_STREAM], ids=["v0 parent", "newer parent"])
async def test_a_child_follows_an_older_or_newer_parents_stream(stream: bytes) -> None:
    data = os.urandom(2100)
    ranges: list[str] = []
    async with serving(recorded_parent(stream, data, ranges)) as port, aiohttp.ClientSession() as s:
        swarm, link = await watched(port, s)
        assert link.info is not None
        assert (link.info.size, link.info.piece_length) == (2100, PIECE)
        assert link.pieces == {0: "blake3:00", 1: "blake3:11", 2: "blake3:22"}
        assert link.complete
        assert not link.dead
        assert await fetched(swarm, link, Piece(2, 2048, 52)) == data[2048:]
    assert ranges == ["bytes=2048-2099"]


async def test_a_junk_line_ends_the_parents_stream_as_before() -> None:
    stream = V0_STREAM.replace(b'{"alive":true}', b"<html>502 Bad Gateway</html>")
    async with serving(recorded_parent(stream, b"", [])) as port, aiohttp.ClientSession() as s:
        _, link = await watched(port, s)
    assert link.dead
    assert link.pieces == {0: "blake3:00"}  # what came before the junk still counts


def stored_task(root: Path, data: bytes, headers: dict[str, str]) -> PieceStore:
    """A store holding ``data`` whole as task TASK, in pieces of PIECE bytes."""
    store = PieceStore(root, quota=1 << 20)
    record = store.begin(TASK, "http://origin/x", len(data), PIECE, None, headers)
    fd = store.open_for_write(TASK)
    try:
        for number in range(record.total_pieces or 0):
            piece = record.piece(number)
            chunk = data[piece.offset : piece.end]
            store.write_at(fd, piece.offset, [chunk])
            hasher = PieceHasher()
            hasher.update(chunk)
            store.record_piece(record, number, piece.length, hasher.digest())
    finally:
        os.close(fd)
    store.mark_complete(TASK)
    return store


async def test_a_parent_of_this_version_streams_what_v0_children_read(tmp_path: Path) -> None:
    data = os.urandom(2100)
    headers = {"ETag": '"v1"', "Content-Type": "application/octet-stream"}
    store = stored_task(tmp_path / "store", data, headers)
    record = store.get(TASK)
    assert record is not None
    fetcher = RangeFetcher(ssl.create_default_context(), False, 5, 5)
    try:
        async with aiohttp.ClientSession() as session:
            cache = Cache(store, StorageSection(), session, fetcher, PeerMetrics())
            upload = UploadServer(cache, slots=2, on_seed=None)
            async with serving(upload.app()) as port:
                base = f"http://127.0.0.1:{port}/v1/tasks/{TASK}"  # the v0 paths, spelt out
                async with session.get(f"{base}/pieces") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"] == "application/x-ndjson"
                    body = await response.read()
                # byte for byte what a v0 parent sent for a task it held whole
                digests = ",".join(f'"{n}":"{d}"' for n, d in sorted(record.pieces.items()))
                assert body == (
                    b'{"size":2100,"pieceLength":1024,"headers":{"ETag":"\\"v1\\"",'
                    b'"Content-Type":"application/octet-stream"},'
                    b'"pieces":{' + digests.encode() + b'},"complete":true}\n'
                )
                headers_one = {"Range": "bytes=1024-2047"}
                async with session.get(base, headers=headers_one) as response:
                    assert response.status == 206
                    assert await response.read() == data[1024:2048]

                # and a child of this version follows it
                swarm, link = await watched(port, session)
                assert link.info is not None
                assert (link.info.size, link.info.headers) == (2100, headers)
                assert link.pieces == record.pieces
                assert link.complete
                assert not link.dead
                assert await fetched(swarm, link, record.piece(2)) == data[2048:]
    finally:
        fetcher.close()
        store.close()
