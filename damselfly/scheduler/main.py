"""``damselfly scheduler``: serve the scheduling API and metrics until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from damselfly import __version__
from damselfly.config.load import ConfigError
from damselfly.config.scheduler import SchedulerConfig, load_config
from damselfly.scheduler.service import SchedulerService
from damselfly.sharedtoken import SharedToken, TokenFileError
from damselfly.web import serve_app

log = logging.getLogger(__name__)


async def serve(
    config: SchedulerConfig,
    host: str,
    port: int,
    metrics_port: int,
    token: SharedToken | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, finish, and release the ports."""
    service = SchedulerService(config, token=token)
    await service.start()
    runners: list[web.AppRunner] = []
    try:
        api_runner, api_port = await serve_app(service.api_app(), host, port)
        runners.append(api_runner)
        metrics_runner, bound_metrics = await serve_app(service.metrics_app(), host, metrics_port)
        runners.append(metrics_runner)
        log.info(
            "scheduler started",
            extra={
                "version": __version__,
                "api": f"{host}:{api_port}",
                "metrics": f"{host}:{bound_metrics}",
                "candidate_parents": config.candidate_parents,
                "announce_interval": config.announce_interval,
                "shared_token": token is not None,
            },
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("scheduler stopping")
    finally:
        await service.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        log.info("scheduler stopped")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        token = SharedToken.from_env()
    except (ConfigError, TokenFileError) as exc:
        print(f"damselfly scheduler: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, args.host, args.port, args.metrics_port, token))
    except OSError as exc:
        print(f"damselfly scheduler: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
