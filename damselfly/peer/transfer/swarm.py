"""A child's view of its parents for one task: who holds which piece, and fetching it.

(The network side, ``ParentTransport``, is in parents.py.)

Each parent streams its piece list over one long-lived request (NDJSON lines,
``damselfly.api.peerwire``, from its upload server), so a child learns of new
pieces the moment the parent has them — no fixed-interval polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.config.peer import TransferSection
from damselfly.peer.store.pieces import Piece
from damselfly.peer.transfer.parents import ParentBusy, ParentTransport

log = logging.getLogger(__name__)

# The defaults of the tunables (config: transfer), for callers that pass none.
DEFAULTS = TransferSection()
MAX_REQUESTS_PER_PARENT = DEFAULTS.requests_per_parent
PIECE_WINDOW = DEFAULTS.piece_window


def choose_piece(
    wanted: list[int],
    links: list[ParentLink],
    rng: random.Random,
    reader_next: int | None = None,
    piece_window: int = PIECE_WINDOW,
) -> tuple[int, ParentLink] | None:
    """Pure piece selection over parents that can take a request now.

    ``reader_next`` is the lowest piece not stored yet: what a client reading
    in order waits for. When it is not in flight (it is ``wanted[0]``) and a
    peer (not only a seed) holds it, it goes first, so the reader keeps
    receiving bytes. Every other request takes the rarest piece among the next
    ``piece_window`` (config transfer.pieceWindow) wanted ones per parent (ties
    at random): with many parents, close to rarest-first over the object, so
    children hold different pieces and trade them; with a lone seed, the
    reader's next bytes are never far off. Fetching every piece in order
    instead makes all children chase the same pieces, held only by the peers
    furthest ahead, and leaves the rest of the swarm with nothing to upload.
    Putting the in-order piece first even when only the seed has it would send
    every child to the seed for the newest piece at once. A piece is taken from
    a non-seed holder when there is one, the least busy first.
    """
    holders: dict[int, list[ParentLink]] = {}
    for number in wanted:
        found = [link for link in links if number in link.pieces and link.has_room()]
        if found:
            holders[number] = found
    if not holders:
        return None
    reader_waits = reader_next is None or wanted[0] == reader_next
    if reader_waits and any(not link.parent.seed for link in holders.get(wanted[0], [])):
        number = wanted[0]
    else:
        ahead = piece_window * max(1, len(links))
        window = [n for n in wanted[:ahead] if n in holders] or list(holders)
        fewest = min(len(holders[n]) for n in window)
        number = rng.choice([n for n in window if len(holders[n]) == fewest])
    candidates = holders[number]
    rng.shuffle(candidates)
    best = min(candidates, key=lambda link: (link.parent.seed, link.in_flight))
    return number, best


@dataclass
class TaskInfo:
    """What a parent says about the object: enough to start a record."""

    size: int | None
    piece_length: int
    headers: dict[str, str]


@dataclass
class ParentLink:
    parent: api.Parent
    pieces: dict[int, str] = field(default_factory=dict)  # number -> digest it claims
    complete: bool = False
    info: TaskInfo | None = None
    dead: bool = False  # its piece stream ended in error
    blocked: bool = False  # served bytes that did not match: never again for this task
    in_flight: int = 0
    busy_until: float = 0.0  # answered 503 (no upload slot): try again after this
    watcher: asyncio.Task[None] | None = None
    # Requests in flight to this parent at most (transfer.requestsPerParent/-Seed).
    max_requests: int | None = None

    def __post_init__(self) -> None:
        if self.max_requests is None:
            self.max_requests = (
                DEFAULTS.requests_per_seed if self.parent.seed else DEFAULTS.requests_per_parent
            )

    def has_room(self) -> bool:
        assert self.max_requests is not None
        return self.in_flight < self.max_requests

    def ready(self, now: float) -> bool:
        return self.usable and now >= self.busy_until

    @property
    def usable(self) -> bool:
        return not self.dead and not self.blocked


class Swarm:
    def __init__(
        self,
        task_id: str,
        transport: ParentTransport,
        transfer: TransferSection = DEFAULTS,
    ) -> None:
        self.task_id = task_id
        self.transfer = transfer
        self.transport = transport
        self.links: dict[str, ParentLink] = {}
        self.last_news = time.monotonic()
        self._news = asyncio.Condition()
        self._rng = random.Random()

    def add(self, parents: list[api.Parent]) -> None:
        """Start watching new parents; known (or blocked) ones are left as they are."""
        for parent in parents:
            link = self.links.get(parent.host_id)
            if link is not None and not link.dead:
                continue
            if link is not None and link.blocked:
                continue
            link = ParentLink(parent, max_requests=self._max_requests(parent))
            self.links[parent.host_id] = link
            link.watcher = asyncio.create_task(self._watch(link))

    def _max_requests(self, parent: api.Parent) -> int:
        if parent.seed:
            return self.transfer.requests_per_seed
        return self.transfer.requests_per_parent

    def alive(self) -> bool:
        return any(link.usable for link in self.links.values())

    def info(self) -> TaskInfo | None:
        for link in self.links.values():
            if link.info is not None and link.usable:
                return link.info
        return None

    def pick(self, wanted: list[int], reader_next: int | None) -> tuple[int, ParentLink] | None:
        """The next piece to fetch and the parent to fetch it from (see choose_piece)."""
        now = time.monotonic()
        available = [link for link in self.links.values() if link.ready(now)]
        return choose_piece(wanted, available, self._rng, reader_next, self.transfer.piece_window)

    def block(self, host_id: str) -> None:
        if host_id in self.links:
            self.links[host_id].blocked = True

    def blocked_ids(self) -> list[str]:
        return [host for host, link in self.links.items() if link.blocked or link.dead]

    async def wait_news(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: wait_for runs Condition.wait in a task of its
        # own, and a second cancel (a download stopped while it waits) can leave that
        # task holding the lock for good, hanging every later waiter (Python 3.11).
        with contextlib.suppress(TimeoutError):
            async with self._news, asyncio.timeout(seconds):
                await self._news.wait()

    async def _announce_news(self) -> None:
        self.last_news = time.monotonic()
        async with self._news:
            self._news.notify_all()

    async def _watch(self, link: ParentLink) -> None:
        try:
            async for line in self.transport.piece_stream(link.parent, self.task_id):
                if line.strip():
                    self._apply(link, peerwire.parse_line(line))
                    await self._announce_news()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info(
                "parent piece stream ended",
                extra={"task": self.task_id, "parent": link.parent.host_id, "error": str(exc)},
            )
        if not link.complete:
            link.dead = True
        await self._announce_news()

    @staticmethod
    def _apply(link: ParentLink, message: peerwire.Message | None) -> None:
        """One line of the parent's piece stream; None (a kind from a newer peer) is skipped."""
        if isinstance(message, peerwire.StreamStart):
            link.info = TaskInfo(message.size, message.piece_length, message.headers)
            link.pieces.update(message.pieces)
        elif isinstance(message, peerwire.NewPiece):
            link.pieces[message.piece] = message.digest
        if isinstance(message, peerwire.StreamStart | peerwire.Complete) and message.complete:
            link.complete = True

    async def fetch(self, link: ParentLink, piece: Piece) -> AsyncIterator[bytes]:
        """The bytes of one piece from one parent; a busy parent is asked again later."""
        link.in_flight += 1
        try:
            async for chunk in self.transport.piece(link.parent, self.task_id, piece):
                yield chunk
        except ParentBusy:
            link.busy_until = time.monotonic() + self.transfer.busy_backoff
            raise
        finally:
            link.in_flight -= 1

    async def close(self) -> None:
        watchers = [link.watcher for link in self.links.values() if link.watcher is not None]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
