"""Parts to drive the peer's data path in-process: a real origin, an in-memory swarm, a fake
scheduler session.

The origin is a real aiohttp server on loopback in the test's own event loop (Range,
ETag, Cache-Control, failures on demand). Parent peers are an in-memory
``ParentTransport`` — the upload servers of other peers are separate processes in the
process-level tests; here each parent is a byte string and a behaviour, so one test can
make a parent stall, fail, or lie. The scheduler session is a fake that hands out a
schedule and records what the download reported.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.peer.store.digest import PieceHasher
from damselfly.peer.store.pieces import Piece
from damselfly.peer.transfer.parents import ParentBusy, ParentError

_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


class Origin:
    """An HTTP origin for one object at ``/object``; change ``data`` to change the object."""

    def __init__(self, data: bytes, etag: str = '"v1"') -> None:
        self.data = data
        self.etag = etag
        self.ignore_range = False
        self.cache_control: str | None = None
        self.fail_next: dict[int, int] = {}  # range start -> 500s still to give
        self.ranges: list[tuple[int, int]] = []
        self.whole_bodies = 0
        self.if_match: set[str] = set()  # the If-Match values asked with (never honoured)
        self.slow: float = 0.0  # seconds to wait before each ranged body
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/object", self._get)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/object"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        headers = {"ETag": self.etag, "Content-Type": "application/octet-stream"}
        if self.cache_control:
            headers["Cache-Control"] = self.cache_control
        if "If-Match" in request.headers:
            self.if_match.add(request.headers["If-Match"])
        match = _RANGE.match(request.headers.get("Range", ""))
        if match is None or self.ignore_range:
            self.whole_bodies += 1
            return web.Response(body=self.data, headers=headers)
        start, end = int(match[1]), min(int(match[2]), len(self.data) - 1)
        if self.fail_next.get(start):
            self.fail_next[start] -= 1
            return web.Response(status=500, text="try again\n")
        if start > 0 or end > 0:
            self.ranges.append((start, end))
            if self.slow:
                await asyncio.sleep(self.slow)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(self.data)}"
        return web.Response(status=206, body=self.data[start : end + 1], headers=headers)


Behaviour = Literal["good", "corrupt", "unreachable", "stall", "busy"]


@dataclass
class MemoryParent:
    """One parent peer: the object's bytes, the pieces it holds, how it behaves."""

    host_id: str
    data: bytes
    piece_length: int
    held: set[int]
    behaviour: Behaviour = "good"
    seed: bool = False
    served: list[int] = field(default_factory=list)

    def digests(self) -> dict[int, str]:
        return {n: digest_of(self.piece_bytes(n)) for n in sorted(self.held)}

    def piece_bytes(self, number: int) -> bytes:
        return self.data[number * self.piece_length : (number + 1) * self.piece_length]

    def as_parent(self) -> api.Parent:
        return api.Parent(host_id=self.host_id, ip="127.0.0.1", upload_port=1, seed=self.seed)


def digest_of(data: bytes) -> str:
    hasher = PieceHasher()
    hasher.update(data)
    return hasher.digest()


class MemoryParents:
    """A ``ParentTransport`` over in-memory parents, speaking the upload server's stream."""

    def __init__(self, *parents: MemoryParent, piece_timeout: float = 0.5) -> None:
        self.parents = {parent.host_id: parent for parent in parents}
        self.piece_timeout = piece_timeout  # as HttpParents: a piece that never comes ends

    async def piece_stream(self, parent: api.Parent, task_id: str) -> AsyncIterator[bytes]:
        held = self.parents[parent.host_id]
        complete = len(held.held) * held.piece_length >= len(held.data)
        yield peerwire.render(
            peerwire.StreamStart(
                size=len(held.data),
                piece_length=held.piece_length,
                headers={"ETag": '"v1"'},
                pieces=held.digests(),
                complete=complete,
            )
        )
        if not complete:
            await asyncio.Event().wait()  # a parent still downloading: the stream stays open

    async def piece(self, parent: api.Parent, task_id: str, piece: Piece) -> AsyncIterator[bytes]:
        held = self.parents[parent.host_id]
        if held.behaviour == "busy":
            raise ParentBusy(parent.host_id)
        if held.behaviour == "stall":
            await asyncio.sleep(self.piece_timeout)
            raise ParentError(parent.host_id, "unreachable", "piece timed out")
        held.served.append(piece.number)
        data = held.piece_bytes(piece.number)
        if held.behaviour == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        half = len(data) // 2
        yield data[:half]
        if held.behaviour == "unreachable":
            raise ParentError(parent.host_id, "unreachable", "connection reset")
        yield data[half:]


@dataclass
class FakeSession:
    """A scheduler session that gives ``parents`` (and the swarm's digests) and records."""

    parents: list[api.Parent] = field(default_factory=list)
    digests: Mapping[int, str] = field(default_factory=dict)
    pieces: list[tuple[int, str | None]] = field(default_factory=list)  # number, parent
    failed_parents: list[tuple[str, str]] = field(default_factory=list)
    results: list[str | None] = field(default_factory=list)  # error, None for success
    changed: list[bool] = field(default_factory=list)  # failed as "the object changed"
    reschedules: int = 0

    async def register(
        self, url: str, headers: Mapping[str, str], sha256: str | None
    ) -> api.Schedule | None:
        return api.Schedule(parents=self.parents, piece_digests=dict(self.digests))

    async def reschedule(self, blocklist: list[str], refresh: bool) -> api.Schedule | None:
        self.reschedules += 1
        return api.Schedule(
            parents=[p for p in self.parents if p.host_id not in blocklist],
            piece_digests=dict(self.digests),
        )

    def parent_failed(self, host_id: str, reason: api.ParentFailureReason) -> None:
        self.failed_parents.append((host_id, reason))

    def piece_done(self, piece: Piece, digest: str, seconds: float, parent: str | None) -> None:
        self.pieces.append((piece.number, parent))

    def finished(
        self, size: int | None, piece_length: int | None, error: str | None, changed: bool
    ) -> None:
        self.results.append(error)
        self.changed.append(changed)
