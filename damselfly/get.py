"""``damselfly get URL -O FILE``: download one object through the swarm (like dfget).

It goes through a running peer's proxy (``--proxy``, ``$DAMSELFLY_PROXY``, or the
first peer of ``damselfly local up``), or else starts an ephemeral peer in this
process whose store persists in ~/.cache/damselfly/get. The peer runtime is
handed in by the command line (``EphemeralProxy``), so this module depends on
the config format only, not on ``damselfly.peer``. The file appears under
its name only when the download completed (and matched ``--digest``): a
failed download leaves nothing that looks finished.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TextIO

import aiohttp

from damselfly.config.peer import PeerConfig
from damselfly.errors import CommandError
from damselfly.local import LocalState, default_state_dir, pid_alive

# Starts a peer in this process from a config and yields its proxy URL while the
# block runs: damselfly.peer.app.ephemeral_proxy, wired in by damselfly.cli.
EphemeralProxy = Callable[[PeerConfig], AbstractAsyncContextManager[str]]

CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class GetError(CommandError):
    """The download failed; the message says why."""


def parse_digest(value: str | None) -> str | None:
    if value is None:
        return None
    match = _DIGEST.match(value.strip().lower())
    if not match:
        raise GetError(f"--digest {value!r} is not sha256:<64 hex digits>")
    return match.group(1)


def local_cluster_proxy() -> str | None:
    """The first peer of a running ``damselfly local up``, if there is one."""
    state = LocalState.load(default_state_dir() / "state.json")
    if state is None or not pid_alive(state.supervisor_pid):
        return None
    for member in state.members:
        if member.role == "peer":
            return f"http://127.0.0.1:{member.ports['proxy']}"
    return None


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._last > 0.2:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6) / 2**20
        got = self.done / 2**20
        if self.total:
            share = self.done / self.total
            bar = "#" * int(share * 30)
            line = f"[{bar:<30}] {share:6.1%} {got:8.1f}/{self.total / 2**20:.1f} MiB"
        else:
            line = f"{got:8.1f} MiB"
        self.stream.write(f"\r{line} {rate:7.1f} MiB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")


async def fetch(url: str, output: Path, proxy: str | None, digest: str | None) -> str:
    """Download ``url`` into ``output``; returns the cache state the peer reported."""
    partial = output.with_name(output.name + ".part")
    hasher = hashlib.sha256()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with (
        aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
        session.get(url, proxy=proxy, allow_redirects=True) as response,
    ):
        if response.status != 200:
            text = (await response.content.read(500)).decode(errors="replace").strip()
            raise GetError(f"{url}: the server answered {response.status}: {text}")
        progress = Progress(sys.stderr, response.content_length)
        try:
            with partial.open("wb") as handle:
                async for chunk in response.content.iter_chunked(CHUNK):
                    handle.write(chunk)
                    hasher.update(chunk)
                    progress.advance(len(chunk))
        except (aiohttp.ClientError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise GetError(f"{url}: download broke off: {exc!r}") from exc
        finally:
            progress.finish()
        state = response.headers.get("X-Damselfly-Cache", "not cached")
    if digest is not None and hasher.hexdigest() != digest:
        partial.unlink(missing_ok=True)
        raise GetError(f"{url}: sha256 is {hasher.hexdigest()}, expected {digest}; file removed")
    os.replace(partial, output)
    return state


async def fetch_with_ephemeral_peer(
    url: str, output: Path, digest: str | None, schedulers: list[str], ephemeral: EphemeralProxy
) -> str:
    """No peer running: start one here, with a rule for exactly this URL."""
    without_query = url.split("?", 1)[0]
    config = PeerConfig.model_validate(
        {
            "hostId": f"get-{os.getpid()}",
            "proxy": {"host": "127.0.0.1", "port": 0},
            "upload": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "storage": {"dir": str(Path.home() / ".cache" / "damselfly" / "get")},
            "rules": {"rules": [{"regex": "^" + re.escape(without_query) + "$"}]},
            "scheduler": {"addresses": schedulers},
        }
    )
    async with ephemeral(config) as proxy:
        return await fetch(url, output, proxy, digest)


def run(args: argparse.Namespace, ephemeral: EphemeralProxy | None = None) -> int:
    if args.log_level is None and not os.environ.get("DAMSELFLY_LOG_LEVEL"):
        logging.getLogger().setLevel(logging.WARNING)  # the progress bar is the output
    output = Path(args.output)
    try:
        digest = parse_digest(args.digest)
        proxy = args.proxy or os.environ.get("DAMSELFLY_PROXY") or local_cluster_proxy()
        if proxy:
            state = asyncio.run(fetch(args.url, output, proxy, digest))
        elif ephemeral is None:
            raise GetError("no peer's proxy given and no peer to start in this process")
        else:
            state = asyncio.run(
                fetch_with_ephemeral_peer(args.url, output, digest, args.scheduler or [], ephemeral)
            )
    except GetError as exc:
        print(f"damselfly get: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientError as exc:
        print(f"damselfly get: {args.url}: {exc}", file=sys.stderr)
        return 1
    verified = " (sha256 verified)" if digest else ""
    print(f"damselfly get: {output} written, cache {state}{verified}", file=sys.stderr)
    return 0
