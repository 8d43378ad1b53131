"""Where a piece's bytes come from, behind one interface: the origin or a parent.

``Download`` asks a ``PieceSource`` to fill one piece into a ``PieceWriter``
(store/writer.py); the writer hashes and checks it, whatever the source. The
origin also answers the stat and, when it ignores Range, gives one whole body
that ``Download`` cuts into pieces itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

import aiohttp
from multidict import CIMultiDict

from damselfly.peer.store.pieces import Piece
from damselfly.peer.store.writer import PieceLengthWrong, PieceWriter
from damselfly.peer.transfer import origin
from damselfly.peer.transfer.parents import ParentError
from damselfly.peer.transfer.rangefetch import RangeFetcher
from damselfly.peer.transfer.swarm import ParentLink, Swarm

SourceName = Literal["origin", "parent"]


class PieceSource(Protocol):
    name: SourceName
    host_id: str | None  # the parent's; None for the origin

    async def fill(self, piece: Piece, size: int, writer: PieceWriter) -> str:
        """Hand piece ``piece`` of an object of ``size`` bytes to ``writer``; its digest.

        PieceMismatch: the bytes are not the ones expected. A source's own trouble
        is its error: origin.OriginError, or ParentError / ParentBusy."""


class OriginSource:
    """The object's URL at its origin, with the client's forwardable headers."""

    name: SourceName = "origin"
    host_id: str | None = None

    def __init__(
        self,
        session: aiohttp.ClientSession,
        fetcher: RangeFetcher,
        url: str,
        headers: CIMultiDict[str],
    ) -> None:
        self.session = session
        self.fetcher = fetcher
        self.url = url
        self.headers = origin.forwardable_request_headers(headers)
        # The version being downloaded, once known: every piece must be of it.
        self.validator = origin.ANY_VERSION

    async def stat(self) -> origin.StatResult:
        """The first byte (see origin.stat); the caller releases the response."""
        return await origin.stat(self.session, self.url, self.headers)

    async def fill(self, piece: Piece, size: int, writer: PieceWriter) -> str:
        """One ranged GET, received, hashed and written on a worker thread."""
        try:
            await self.fetcher.fetch(
                self.url,
                self.headers,
                piece.offset,
                piece.end - 1,
                size,
                writer.write,
                self.validator,
            )
            return writer.finish()
        except PieceLengthWrong as exc:
            raise origin.OriginError(str(exc)) from exc


class ParentSource:
    """One parent, for one piece it holds (chosen by ``Swarm.pick``)."""

    name: SourceName = "parent"

    def __init__(self, swarm: Swarm, link: ParentLink) -> None:
        self.swarm = swarm
        self.link = link
        self.host_id: str | None = link.parent.host_id

    async def fill(self, piece: Piece, size: int, writer: PieceWriter) -> str:
        try:
            await writer.consume(self.swarm.fetch(self.link, piece))
            return writer.finish()
        except PieceLengthWrong as exc:
            raise ParentError(self.link.parent.host_id, "unreachable", str(exc)) from exc


async def body_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_any():
        yield chunk
