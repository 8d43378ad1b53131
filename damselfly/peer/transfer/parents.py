"""Reaching parent peers: the transport under ``Swarm``, behind one interface.

A parent's upload server offers two things (see p2p/upload.py): the task's
piece stream (NDJSON lines of ``damselfly.api.peerwire``: geometry, the pieces
held, a line per new piece) and one piece's bytes by Range. ``HttpParents`` asks for them over HTTP;
tests put an in-memory swarm behind the same interface.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp

from damselfly.api import peerwire
from damselfly.api import scheduler as api
from damselfly.errors import TransferError
from damselfly.peer.net.access import parent_refusal
from damselfly.peer.store.pieces import Piece
from damselfly.sharedtoken import SharedToken, outgoing

log = logging.getLogger(__name__)


class ParentBusy(TransferError):
    """The parent has no upload slot free right now: not a failure, ask again later."""


class ParentError(TransferError):
    """A parent failed to deliver a piece; ``reason`` is as the scheduler expects."""

    def __init__(self, host_id: str, reason: api.ParentFailureReason, message: str) -> None:
        super().__init__(message)
        self.host_id = host_id
        self.reason: api.ParentFailureReason = reason


class ParentTransport(Protocol):
    def piece_stream(self, parent: api.Parent, task_id: str) -> AsyncIterator[bytes]:
        """The parent's piece stream, line by line; ParentError if it will not send one."""

    def piece(self, parent: api.Parent, task_id: str, piece: Piece) -> AsyncIterator[bytes]:
        """One piece's bytes; ParentBusy (no upload slot) or ParentError (unusable)."""


def base_url(parent: api.Parent) -> str:
    host = f"[{parent.ip}]" if ":" in parent.ip else parent.ip  # IPv6 in brackets
    return f"http://{host}:{parent.upload_port}"


class HttpParents:
    """Parents' upload servers over HTTP (``piece_timeout`` bounds one piece).

    Every address is checked by the egress guard before it is dialled
    (``net.access.parent_refusal``); ``refused`` hears of each refusal (a metric).
    With a shared ``token`` every request carries it; a parent that answers 401
    holds another token (or none yet, mid-rollout) and counts as unreachable.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        piece_timeout: float,
        allow_link_local: bool = False,
        refused: Callable[[str], None] | None = None,
        token: SharedToken | None = None,
    ) -> None:
        self.session = session
        self.token = token
        self.piece_timeout = piece_timeout
        self.allow_link_local = allow_link_local
        self.refused = refused

    def _guard(self, parent: api.Parent) -> None:
        why = parent_refusal(parent.ip, self.allow_link_local)
        if why is None:
            return
        log.warning(
            "parent refused by the egress guard",
            extra={"parent": parent.host_id, "ip": parent.ip, "why": why},
        )
        if self.refused is not None:
            self.refused(parent.host_id)
        raise ParentError(
            parent.host_id, "unreachable", f"parent {parent.host_id} refused, not dialled: {why}"
        )

    async def piece_stream(self, parent: api.Parent, task_id: str) -> AsyncIterator[bytes]:
        self._guard(parent)
        url = base_url(parent) + peerwire.piece_stream_path(task_id)
        async with self.session.get(
            url,
            headers=outgoing(self.token),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None),
        ) as response:
            if response.status != 200:
                raise ParentError(parent.host_id, "unreachable", f"{url}: {response.status}")
            async for line in response.content:
                yield line

    async def piece(self, parent: api.Parent, task_id: str, piece: Piece) -> AsyncIterator[bytes]:
        self._guard(parent)
        host = parent.host_id
        try:
            response = await self.session.get(
                base_url(parent) + peerwire.piece_path(task_id),
                headers={"Range": f"bytes={piece.offset}-{piece.end - 1}", **outgoing(self.token)},
                timeout=aiohttp.ClientTimeout(total=self.piece_timeout, sock_connect=5),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ParentError(host, "unreachable", f"{host}: {exc}") from exc
        try:
            if response.status == 503:
                raise ParentBusy(host)
            if response.status != 206:
                raise ParentError(host, "unreachable", f"{host} answered {response.status}")
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise ParentError(host, "unreachable", f"{host}: {exc!r}") from exc
        finally:
            response.release()
