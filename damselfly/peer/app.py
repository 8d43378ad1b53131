"""``damselfly peer``: wire the proxy, cache, rules and health endpoints together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from damselfly.api.ruleset import RuleSet
from damselfly.api.schedulerclient import SchedulerClient
from damselfly.config.load import ConfigError
from damselfly.config.peer import ListenSection, PeerConfig, load_config
from damselfly.peer.frontdoor.proxy import Proxy
from damselfly.peer.health import About, Health
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.net.access import GuardedResolver
from damselfly.peer.p2p.announcer import Announcer
from damselfly.peer.p2p.seeding import Seeder
from damselfly.peer.p2p.upload import UploadServer
from damselfly.peer.rules.filesource import RulesSource
from damselfly.peer.rules.kubesource import KubeRules
from damselfly.peer.rules.match import CompiledRules, RulesHolder
from damselfly.peer.store.check import StoreUnusable, check_store_dir
from damselfly.peer.store.piecestore import PieceStore
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.fetch import P2P
from damselfly.peer.transfer.parents import HttpParents
from damselfly.peer.transfer.rangefetch import RangeFetcher
from damselfly.peer.transfer.session import Scheduled
from damselfly.sharedtoken import SharedToken, TokenFileError, require_token
from damselfly.web import serve_app

log = logging.getLogger(__name__)


class Peer:
    """One running peer; ``start`` binds its ports, ``stop`` releases everything.

    The composition root: it builds the parts and connects them, and does nothing
    itself. Parts that need the event loop or the store directory are None until
    ``start``; the ports are 0 until bound. With a shared ``token`` the upload
    port asks for it, and requests to parents and schedulers carry it.
    """

    def __init__(self, config: PeerConfig, token: SharedToken | None = None) -> None:
        self.config = config
        self.token = token
        self.host_id = config.host_id or socket.gethostname()
        self.metrics = PeerMetrics()
        self.started_at = time.time()
        defaults = tuple(config.proxy.default_filtered_query_params)
        self.rules = RulesHolder(CompiledRules(RuleSet(), defaults))
        # built by start, in this order
        self.store: PieceStore | None = None
        self.session: aiohttp.ClientSession | None = None
        self.fetcher: RangeFetcher | None = None
        self.scheduler: SchedulerClient | None = None  # stays None without scheduler addresses
        self.cache: Cache | None = None
        self.rules_source: RulesSource | None = None
        self.proxy: Proxy | None = None
        self.proxy_port = 0
        self.upload: UploadServer | None = None
        self.upload_port = 0
        self.health: Health | None = None
        self.metrics_port = 0
        self.kube_rules: KubeRules | None = None  # only with rules from the API
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        config = self.config
        storage = Path(config.storage.dir)
        check_store_dir(storage)  # creates it; StoreUnusable says what to fix
        self.store = PieceStore(storage, config.storage.quota)
        self.session = self._client_session()
        self.fetcher = RangeFetcher(
            self._upstream_tls(),
            config.proxy.allow_link_local,
            config.proxy.upstream_connect_timeout,
            config.proxy.upstream_read_timeout,
        )
        self.scheduler = self._scheduler_client()

        # The data path (P2P, Cache): the cache of downloads and, with a scheduler, the swarm.
        p2p = None
        if self.scheduler is not None:
            scheduler, host_id = self.scheduler, self.host_id
            p2p = P2P(
                sessions=lambda task_id: Scheduled(scheduler, task_id, host_id),
                parents=HttpParents(
                    self.session,
                    config.scheduler.piece_timeout,
                    config.proxy.allow_link_local,
                    refused=lambda _host: self.metrics.parents_refused.inc(),
                    token=self.token,
                ),
                stall_timeout=config.scheduler.stall_timeout,
            )
        self.cache = Cache(
            self.store,
            config.storage,
            self.session,
            self.fetcher,
            self.metrics,
            p2p,
            config.transfer,
        )

        self.rules_source = RulesSource(config, self.rules, self.metrics, storage)
        self.rules_source.load_initial()

        # The ports. The metrics port goes last, so /readyz answers only once all are bound.
        self.proxy = Proxy(config.proxy, self.rules, self.cache, self.session, self.metrics)
        proxy_server = await asyncio.start_server(
            self.proxy.handle_connection,
            config.proxy.host,
            config.proxy.port,
            reuse_address=True,
            limit=1 << 20,
        )
        self._servers.append(proxy_server)
        self.proxy_port = int(proxy_server.sockets[0].getsockname()[1])
        seeder = Seeder(self.cache, config.proxy.allow_link_local) if config.seed else None
        per_task = config.upload.task_slots(config.seed)
        self.upload = UploadServer(
            self.cache, config.upload.slots, seeder.seed if seeder else None, per_task
        )
        guard = require_token(self.token, refused=self.metrics.unauthorized.inc)
        upload_app = self.upload.app(guard)
        self.upload_port = await self._serve_app(upload_app, config.upload)
        about = About(
            host_id=self.host_id,
            seed=config.seed,
            started_at=self.started_at,
            proxy_port=self.proxy_port,
            upload_port=self.upload_port,
            quota_bytes=config.storage.quota,
        )
        self.health = Health(
            about, self.metrics, self.cache, self.store, self.rules_source, self._servers
        )
        self.metrics_port = await self._serve_app(self.health.app(), config.metrics)

        # Background work: announcing, following the rules, evicting.
        if self.scheduler is not None:
            announcer = Announcer(
                self.scheduler,
                self.cache,
                self.host_id,
                self.advertise_ip(),
                self.upload_port,
                config.seed,
                config.upload.slots,
                per_task,
                config.scheduler.announce_interval,
            )
            upload = self.upload
            self._tasks.append(asyncio.create_task(announcer.run(lambda: upload.slots_free)))
        if config.rules.source == "api" and config.rules.api is not None:
            # ProxyRules through the API; the file (the ConfigMap) only seeded the start
            self.kube_rules = KubeRules(config.rules.api, self.rules_source, self.host_id)
            self._tasks.append(asyncio.create_task(self.kube_rules.run()))
        else:
            self._tasks.append(asyncio.create_task(self.rules_source.watch()))
        self._tasks.append(asyncio.create_task(self.cache.run_gc(config.storage.gc_interval)))
        log.info(
            "peer started",
            extra={
                "proxy": f"{config.proxy.host}:{self.proxy_port}",
                "metrics": f"{config.metrics.host}:{self.metrics_port}",
                "upload": f"{config.upload.host}:{self.upload_port}",
                "schedulers": config.scheduler.addresses,
                "store": str(storage),
                "host_id": self.host_id,
                "seed": config.seed,
                "shared_token": self.token is not None,
            },
        )

    def _scheduler_client(self) -> SchedulerClient | None:
        if not self.config.scheduler.addresses:
            return None
        assert self.session is not None
        return SchedulerClient(
            self.config.scheduler.addresses,
            self.session,
            self.config.scheduler.timeout,
            self.token,
        )

    def advertise_ip(self) -> str:
        """The address other peers dial.

        In order: the config's advertiseIp, the pod IP the operator passes in
        DAMSELFLY_POD_IP (downward API), the upload bind address, the default route's.
        """
        if self.config.advertise_ip:
            return self.config.advertise_ip
        if os.environ.get("DAMSELFLY_POD_IP"):
            return os.environ["DAMSELFLY_POD_IP"]
        if self.config.upload.host not in ("0.0.0.0", "::", ""):
            return self.config.upload.host
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only routed, never sent
                return str(probe.getsockname()[0])
            except OSError:
                return "127.0.0.1"

    def _upstream_tls(self) -> ssl.SSLContext:
        """TLS toward origins: the system's CAs, or the configured CA file instead."""
        return ssl.create_default_context(cafile=self.config.proxy.upstream_ca_file)

    def _client_session(self) -> aiohttp.ClientSession:
        proxy = self.config.proxy
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=64,
            resolver=GuardedResolver(proxy.allow_link_local),
            ssl=self._upstream_tls(),
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=proxy.upstream_connect_timeout,
            sock_read=proxy.upstream_read_timeout,
        )
        return aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        )

    async def _serve_app(self, app: web.Application, listen: ListenSection) -> int:
        runner, port = await serve_app(app, listen.host, listen.port)
        self._runners.append(runner)
        return port

    async def stop(self) -> None:
        """Release what ``start`` made; also after a start that failed midway."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.kube_rules is not None:
            await self.kube_rules.close()
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.cache is not None:
            for download in list(self.cache.active.values()):
                await download.cancel()
        if self.session is not None:
            await self.session.close()
        if self.fetcher is not None:
            self.fetcher.close()
        if self.store is not None:
            self.store.close()
        log.info("peer stopped")


@contextlib.asynccontextmanager
async def ephemeral_proxy(config: PeerConfig) -> AsyncIterator[str]:
    """A peer in this process while the block runs; yields its proxy's URL
    (``damselfly get`` without a running peer)."""
    peer = Peer(config, SharedToken.from_env())
    await peer.start()
    try:
        yield f"http://127.0.0.1:{peer.proxy_port}"
    finally:
        await peer.stop()


async def run_until_signalled(config: PeerConfig, token: SharedToken | None) -> None:
    peer = Peer(config, token)
    await peer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await peer.stop()


# Where Kubernetes looks for a container's last words (terminationMessagePath): what
# is written there shows in the pod's status as the last termination message.
TERMINATION_LOG = "/dev/termination-log"


def fail(message: str) -> int:
    """A start-up failure the user must fix: one line on stderr (and to Kubernetes)."""
    print(f"damselfly peer: {message}", file=sys.stderr)
    path = os.environ.get("DAMSELFLY_TERMINATION_LOG", TERMINATION_LOG)
    if os.path.exists(path):
        with contextlib.suppress(OSError), open(path, "w") as log_file:
            log_file.write(message + "\n")
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        token = SharedToken.from_env()
    except (ConfigError, TokenFileError) as exc:
        return fail(str(exc))
    if args.seed:
        config = config.model_copy(update={"seed": True})
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_until_signalled(config, token))
    except StoreUnusable as exc:
        return fail(str(exc))
    return 0
