"""The client peers use to talk to the scheduler replicas.

Each task belongs to one scheduler, chosen by rendezvous hashing of the task
id over the configured addresses, so every peer of a task meets at the same
replica. When that replica does not answer (connection error, timeout, 5xx)
the next one on the task's ranking is tried; when none answers the call raises
``SchedulerUnavailable`` and the peer goes back to the origin: a download never
fails because the scheduler did.

Host announces go to every replica, because each needs the host's address to
offer it as a parent for the tasks it owns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from damselfly.api import hashring
from damselfly.api import scheduler as api
from damselfly.errors import ServiceError, describe_validation
from damselfly.sharedtoken import SharedToken, outgoing

R = TypeVar("R", bound=BaseModel)


class SchedulerError(ServiceError):
    """Base of the client's errors."""


class SchedulerUnavailable(SchedulerError):
    """No scheduler replica answered; fall back to the origin."""


class SchedulerRejected(SchedulerError):
    """A scheduler answered 4xx: the request itself is wrong (a bug, not an outage)."""

    def __init__(self, address: str, status: int, text: str) -> None:
        super().__init__(f"{address}: {status} {text.strip()}")
        self.address = address
        self.status = status


def normalize_address(address: str) -> str:
    """``host:port`` or ``http://host:port[/]`` -> ``http://host:port``.

    Peers must hash the same strings to agree on owners, so spelling
    differences are removed first.
    """
    text = address.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"scheduler address {address!r} is not host:port or http://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host.lower()}:{parts.port}"


class SchedulerClient:
    """Typed calls to the scheduler API with per-task replica choice and fail-over.

    ``timeout`` bounds each attempt; a call tries each replica at most once,
    so the worst case is ``len(addresses) * timeout``. With a shared ``token``
    every request carries it (the session also serves origins, so not as a
    session default).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        session: aiohttp.ClientSession,
        timeout: float,
        token: SharedToken | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("SchedulerClient needs at least one scheduler address")
        self.addresses = list(dict.fromkeys(normalize_address(a) for a in addresses))
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.token = token

    def order(self, task_id: str) -> list[str]:
        """Replicas for ``task_id``: its owner first, then the fail-over order."""
        return hashring.rank(task_id, self.addresses)

    async def _post_one(self, address: str, path: str, body: api.Model, reply: type[R]) -> R:
        async with self.session.post(
            address + path,
            data=body.to_json(),
            headers={"Content-Type": "application/json", **outgoing(self.token)},
            timeout=self.timeout,
        ) as resp:
            text = await resp.text()
            if resp.status >= 500:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=text[:200]
                )
            if resp.status >= 400:
                raise SchedulerRejected(address, resp.status, text[:500])
            try:
                return reply.model_validate_json(text)
            except ValidationError as exc:
                raise SchedulerRejected(
                    address, resp.status, f"bad reply: {describe_validation(exc)}"
                ) from None

    async def _post(self, task_id: str, path: str, body: api.Model, reply: type[R]) -> R:
        errors: list[str] = []
        for address in self.order(task_id):
            try:
                return await self._post_one(address, path, body, reply)
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{address}: {exc!r}")
        raise SchedulerUnavailable("no scheduler answered: " + "; ".join(errors))

    async def announce(self, host: api.AnnounceHost) -> api.AnnounceReply:
        """Announce to every replica at once; all failing raises.

        The reply is the first replica's, asking for a resync (a full announce
        next) when any replica asked for one or did not take this announce:
        a replica that missed a partial announce would miss its changes.
        """
        results = await asyncio.gather(
            *(
                self._post_one(a, api.ANNOUNCE_PATH, host, api.AnnounceReply)
                for a in self.addresses
            ),
            return_exceptions=True,
        )
        errors: list[str] = []
        replies: list[api.AnnounceReply] = []
        for address, result in zip(self.addresses, results, strict=True):
            if isinstance(result, api.AnnounceReply):
                replies.append(result)
                continue
            if isinstance(result, SchedulerRejected):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            errors.append(f"{address}: {result!r}")
        if not replies:
            raise SchedulerUnavailable("no scheduler took the announce: " + "; ".join(errors))
        resync = bool(errors) or any(reply.resync for reply in replies)
        return replies[0].model_copy(update={"resync": resync})

    async def register(self, req: api.RegisterTask) -> api.Schedule:
        return await self._post(req.task_id, api.REGISTER_PATH, req, api.Schedule)

    async def reschedule(self, req: api.Reschedule) -> api.Schedule:
        return await self._post(req.task_id, api.RESCHEDULE_PATH, req, api.Schedule)

    async def report_pieces(self, req: api.PieceReports) -> None:
        await self._post(req.task_id, api.PIECES_PATH, req, api.Ack)

    async def report_result(self, req: api.TaskResult) -> None:
        await self._post(req.task_id, api.RESULT_PATH, req, api.Ack)

    async def parent_failed(self, req: api.ParentFailed) -> None:
        await self._post(req.task_id, api.PARENT_FAILED_PATH, req, api.Ack)
