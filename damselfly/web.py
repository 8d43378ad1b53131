"""Serving an aiohttp application: one way for every port the peer and the scheduler open.

A listen port of 0 means "any free one", so the caller needs the port it got; aiohttp
tells it through ``AppRunner.addresses``. The liveness and readiness answers are here too,
so every component's ``/healthz`` and ``/readyz`` read alike to probes and people.
"""

from __future__ import annotations

from aiohttp import web


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; the runner (for ``cleanup``) and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()  # the port is taken: release what setup made
        raise
    return runner, int(runner.addresses[0][1])


async def healthz(_: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.Response(text="ok\n")


def readiness(ready: bool) -> web.Response:
    """200 once the component serves, 503 before (probes read the status, people the text)."""
    return web.Response(text="ready\n" if ready else "starting\n", status=200 if ready else 503)
