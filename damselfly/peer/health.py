"""The peer's metrics port: ``/metrics``, ``/healthz``, ``/readyz`` and ``/status``.

Kept apart from the composition root so what the peer reports is read in one place,
and each endpoint's inputs are the constructor's arguments. ``/status`` is read by
people, tests and e2e: its keys are an interface, change them only on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from damselfly import __version__
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.rules.filesource import RulesSource
from damselfly.peer.store.piecestore import PieceStore
from damselfly.peer.store.space import free_bytes
from damselfly.peer.transfer.cache import Cache
from damselfly.web import healthz, readiness


@dataclass(frozen=True)
class About:
    """What ``/status`` says of the peer that does not change while it runs."""

    host_id: str
    seed: bool
    started_at: float
    proxy_port: int
    upload_port: int
    quota_bytes: int


class Health:
    """The handlers of the metrics port, over the parts of a running peer they read."""

    def __init__(
        self,
        about: About,
        metrics: PeerMetrics,
        cache: Cache,
        store: PieceStore,
        rules: RulesSource,
        listeners: Sequence[asyncio.Server],
    ) -> None:
        self.about = about
        self.metrics = metrics
        self.cache = cache
        self.store = store
        self.rules = rules
        self.listeners = listeners  # ready while all of these accept connections

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status)
        return app

    async def metrics_endpoint(self, _: web.Request) -> web.Response:
        self.cache.update_gauges()  # the store size gauges, fresh for this scrape
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(self, _: web.Request) -> web.Response:
        """Ready once every port serves. Store trouble (a full disk) does not make the
        peer unready — it still serves hits and forwards — but is said in the body."""
        listeners = self.listeners
        answer = readiness(bool(listeners) and all(server.is_serving() for server in listeners))
        trouble = self.cache.trouble.reason
        if trouble is not None and answer.status == 200:
            answer.text = f"ready, store degraded: {trouble}\n"
        return answer

    async def status(self, _: web.Request) -> web.Response:
        about = self.about
        rules = self.rules.status
        return web.json_response(
            {
                "version": __version__,
                "hostId": about.host_id,
                "seed": about.seed,
                "startedAt": about.started_at,
                "rules": {
                    "hash": rules.hash,
                    "count": rules.count,
                    "source": rules.source,
                    "loadedAt": rules.loaded_at,
                    "lastError": rules.last_error,
                    "lastErrorAt": rules.last_error_at,
                },
                "uploadPort": about.upload_port,
                "proxyPort": about.proxy_port,
                "store": {
                    "usedBytes": self.store.used_bytes(),
                    "quotaBytes": about.quota_bytes,
                    "tasks": self.store.task_count(),
                    "activeDownloads": len(self.cache.active),
                    "freeBytes": free_bytes(self.store.root),
                    "minFreeBytes": self.cache.min_free,
                    "trouble": self.cache.trouble.reason,
                    "troubleSince": self.cache.trouble.since,
                },
            }
        )
