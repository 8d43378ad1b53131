"""The scheduler's HTTP service: the api.py contract over aiohttp.

Handlers parse a body, apply it to ``Resources`` (synchronous, in memory) and
answer. The only I/O besides the request itself is triggering a seed peer,
which happens outside the state so concurrent requests keep being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from damselfly.api import scheduler as api
from damselfly.config.scheduler import SchedulerConfig
from damselfly.errors import describe_validation
from damselfly.scheduler.metrics import SchedulerMetrics
from damselfly.scheduler.resources import Decision, Resources
from damselfly.sharedtoken import SharedToken, outgoing, require_token
from damselfly.web import healthz, readiness

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Bodies are small JSON; an announce of a host with many tasks is the largest.
MAX_BODY = 32 << 20


class BadRequest(web.HTTPBadRequest):
    """A body that is not the contract's JSON; the text says which field."""


async def parse(request: web.Request, model: type[M]) -> M:
    body = await request.read()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(text=f"invalid {model.__name__}: {describe_validation(exc)}\n") from None


def reply(model: api.Model) -> web.Response:
    return web.Response(body=model.to_json(), content_type="application/json")


class SchedulerService:
    """Owns the state, the metrics and the client session used to trigger seeds.

    With a shared ``token`` the API answers only requests that carry it, and the
    seed triggers carry it to the seeds' upload servers (see sharedtoken.py).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        resources: Resources | None = None,
        token: SharedToken | None = None,
    ) -> None:
        self.config = config
        self.token = token
        self.limits = config.limits()
        self.resources = resources or Resources(self.limits)
        self.metrics = SchedulerMetrics()
        self.ready = False
        self._session: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.seed_trigger_timeout),
            trust_env=False,
        )
        self._sweeper = asyncio.create_task(self._sweep())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._session is not None:
            await self._session.close()

    async def _sweep(self) -> None:
        """Drop silent hosts; runs until cancelled at stop."""
        interval = min(self.limits.announce_interval, self.limits.host_ttl) / 2
        while True:
            await asyncio.sleep(interval)
            gone = self.resources.expire()
            if gone:
                self.metrics.hosts_expired.inc(len(gone))
                log.info("hosts expired", extra={"hosts": gone})

    # -- apps ----------------------------------------------------------------

    def api_app(self) -> web.Application:
        guard = require_token(self.token, refused=self.metrics.unauthorized.inc)
        app = web.Application(client_max_size=MAX_BODY, middlewares=guard)
        routes: list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            (api.ANNOUNCE_PATH, self.announce),
            (api.REGISTER_PATH, self.register),
            (api.RESCHEDULE_PATH, self.reschedule),
            (api.PIECES_PATH, self.pieces),
            (api.RESULT_PATH, self.result),
            (api.PARENT_FAILED_PATH, self.parent_failed),
        ]
        for path, handler in routes:
            app.router.add_post(path, handler)
        app.router.add_get("/v1/tasks/{task_id}", self.task_info)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/healthz", healthz)
        return app

    # -- handlers ------------------------------------------------------------

    async def announce(self, request: web.Request) -> web.Response:
        req = await parse(request, api.AnnounceHost)
        outcome = self.resources.announce(req)
        self.metrics.announces.inc()
        if outcome.conflicts:
            self.metrics.digest_conflicts.inc(outcome.conflicts)
        return reply(
            api.AnnounceReply(interval_seconds=self.limits.announce_interval, resync=outcome.resync)
        )

    async def register(self, request: web.Request) -> web.Response:
        req = await parse(request, api.RegisterTask)
        started = time.perf_counter()
        self.metrics.registrations.inc()
        schedule = await self._finish(self.resources.register(req), req.task_id, req.host_id)
        self._observe(schedule, started)
        return reply(schedule)

    async def reschedule(self, request: web.Request) -> web.Response:
        req = await parse(request, api.Reschedule)
        started = time.perf_counter()
        self.metrics.reschedules.inc()
        schedule = await self._finish(self.resources.reschedule(req), req.task_id, req.host_id)
        self._observe(schedule, started)
        return reply(schedule)

    async def pieces(self, request: web.Request) -> web.Response:
        req = await parse(request, api.PieceReports)
        outcome = self.resources.report_pieces(req)
        self.metrics.piece_reports.inc(len(req.pieces))
        if outcome.conflicts:
            self.metrics.digest_conflicts.inc(outcome.conflicts)
            log.warning(
                "conflicting piece digests ignored",
                extra={"task_id": req.task_id, "host_id": req.host_id, "n": outcome.conflicts},
            )
        if outcome.back_to_source_bytes:
            self.metrics.traffic_bytes.labels("back_to_source").inc(outcome.back_to_source_bytes)
        if outcome.remote_peer_bytes:
            self.metrics.traffic_bytes.labels("remote_peer").inc(outcome.remote_peer_bytes)
        return reply(api.Ack())

    async def result(self, request: web.Request) -> web.Response:
        req = await parse(request, api.TaskResult)
        self.resources.report_result(req)
        self.metrics.task_results.labels("success" if req.success else "failure").inc()
        if not req.success:
            log.info(
                "task failed on peer",
                extra={"task_id": req.task_id, "host_id": req.host_id, "error": req.error},
            )
        return reply(api.Ack())

    async def parent_failed(self, request: web.Request) -> web.Response:
        req = await parse(request, api.ParentFailed)
        self.resources.parent_failed(req)
        self.metrics.parent_failures.labels(req.reason).inc()
        return reply(api.Ack())

    async def task_info(self, request: web.Request) -> web.Response:
        """Who holds a task and its recorded digests: for operators and tests."""
        task = self.resources.tasks.get(request.match_info["task_id"])
        if task is None:
            raise web.HTTPNotFound(text="unknown task\n")
        peers = {
            host_id: {
                "finishedPieces": len(peer.finished),
                "complete": peer.complete,
                "failed": peer.failed,
                "parents": sorted(peer.parents),
            }
            for host_id, peer in task.peers.items()
        }
        return web.json_response(
            {
                "taskId": task.task_id,
                "url": task.url,
                "size": task.size,
                "pieceLength": task.piece_length,
                "pieceDigests": {str(k): v for k, v in sorted(task.piece_digests.items())},
                "peers": peers,
            }
        )

    async def readyz(self, _: web.Request) -> web.Response:
        return readiness(self.ready)

    async def metrics_endpoint(self, _: web.Request) -> web.Response:
        self.metrics.hosts.set(len(self.resources.hosts))
        self.metrics.seed_hosts.set(len(self.resources.alive_seeds()))
        self.metrics.tasks.set(len(self.resources.tasks))
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- scheduling helpers --------------------------------------------------

    def _observe(self, schedule: api.Schedule, started: float) -> None:
        self.metrics.schedule_latency.observe(time.perf_counter() - started)
        if schedule.seed_triggered:
            outcome = "seed"
        elif schedule.back_to_source:
            outcome = "back_to_source"
        else:
            outcome = "parents"
        self.metrics.schedules.labels(outcome).inc()

    async def _finish(self, decision: Decision, task_id: str, child_id: str) -> api.Schedule:
        """Trigger a seed when the decision asks for one; otherwise answer as decided."""
        if not decision.seeds_to_try:
            return decision.schedule
        for seed_id in decision.seeds_to_try[: self.config.seed_attempts]:
            host = self.resources.hosts.get(seed_id)
            if host is None:
                continue
            schedule = self.resources.begin_seed(task_id, seed_id, child_id)
            if await self._trigger_seed(task_id, seed_id, host.ip, host.upload_port):
                self.metrics.seed_triggers.labels("accepted").inc()
                return schedule
            self.metrics.seed_triggers.labels("failed").inc()
            self.resources.seed_failed(task_id, seed_id, child_id)
        return self.resources.back_to_source(task_id)

    async def _trigger_seed(self, task_id: str, seed_id: str, ip: str, port: int) -> bool:
        """POST the seed request to the seed's upload server; any 2xx means it took the task."""
        task = self.resources.tasks.get(task_id)
        if task is None or self._session is None:
            return False
        body = api.SeedRequest(
            task_id=task_id, url=task.url, headers=task.headers, sha256=task.sha256
        ).to_json()
        url = f"http://{_host_literal(ip)}:{port}{api.SEED_PATH}"
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json", **outgoing(self.token)}
            ) as resp:
                ok = 200 <= resp.status < 300
                if not ok:
                    log.warning(
                        "seed refused task",
                        extra={"task_id": task_id, "seed": seed_id, "status": resp.status},
                    )
                return ok
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "seed unreachable",
                extra={"task_id": task_id, "seed": seed_id, "error": repr(exc)},
            )
            return False


def _host_literal(ip: str) -> str:
    """IPv6 literals need brackets in a URL."""
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
