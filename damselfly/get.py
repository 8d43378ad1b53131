"""``damselfly get URL -O FILE``: download one object through the swarm (like dfget).

It goes through a running peer's proxy (``--proxy``, ``$DAMSELFLY_PROXY``, or the
first peer of ``damselfly local up``), or else starts an ephemeral peer in this
process whose store persists in ~/.cache/damselfly/get. The peer runtime is
handed in by the command line (``EphemeralProxy``), so this module depends on
the config format only, not on ``damselfly.peer``. The file appears under
its name only when the download completed (and matched ``--digest``): a
failed download leaves nothing that looks finished. An interrupted one leaves
``FILE.part``, which the next run continues from its length (see ``Partial``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from damselfly.config.peer import PeerConfig
from damselfly.errors import CommandError
from damselfly.local import LocalState, default_state_dir, pid_alive

# Starts a peer in this process from a config and yields its proxy URL while the
# block runs: damselfly.peer.app.ephemeral_proxy, wired in by damselfly.cli.
EphemeralProxy = Callable[[PeerConfig], AbstractAsyncContextManager[str]]

CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(?:\d+|\*)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")


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


@dataclass
class Partial:
    """``FILE.part`` and what is known of it: where an interrupted download resumes.

    Beside it, ``FILE.part.json`` keeps the URL and the validator (ETag, else
    Last-Modified) of the response it came from, so a resume asks for the rest
    only of that same object (``If-Range``); a changed object starts again.
    """

    path: Path
    meta: Path

    @classmethod
    def of(cls, output: Path) -> Partial:
        return cls(
            output.with_name(output.name + ".part"), output.with_name(output.name + ".part.json")
        )

    def resumable(self, url: str) -> tuple[int, str] | None:
        """Bytes held and the validator to resume with, or None: start from zero."""
        try:
            meta = json.loads(self.meta.read_text())
            held = self.path.stat().st_size
        except (OSError, ValueError):
            return None
        validator = meta.get("validator") if isinstance(meta, dict) else None
        if meta.get("url") != url or not isinstance(validator, str) or not validator or not held:
            return None
        return held, validator

    def begin(self, url: str, response: aiohttp.ClientResponse) -> None:
        etag = response.headers.get("ETag", "")
        strong = etag if etag and not etag.startswith("W/") else ""
        validator = strong or response.headers.get("Last-Modified", "")
        self.meta.write_text(json.dumps({"url": url, "validator": validator}))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def finish(self, output: Path) -> None:
        os.replace(self.path, output)
        self.meta.unlink(missing_ok=True)


def continues_at(response: aiohttp.ClientResponse, resume: tuple[int, str] | None) -> int | None:
    """Where the reply's body goes in the file: 0 for a whole 200 (a first try, or the
    object changed), the part's length for a 206 continuing it or a 416 saying it is
    whole already; None for a reply to give up on."""
    if response.status == 200:
        return 0
    if resume is None:
        return None
    held = resume[0]
    content_range = response.headers.get("Content-Range", "")
    pattern = {206: _CONTENT_RANGE, 416: _UNSATISFIED}.get(response.status)
    match = pattern.match(content_range) if pattern is not None else None
    return held if match is not None and int(match.group(1)) == held else None


def hash_file(path: Path, hasher: Any, length: int) -> None:
    with path.open("rb") as handle:
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                raise GetError(f"{path} shrank while it was read")
            hasher.update(chunk)
            remaining -= len(chunk)


async def fetch(
    url: str, output: Path, proxy: str | None, digest: str | None, keep_partial: bool = False
) -> str:
    """Download ``url`` into ``output``; returns the cache state the peer reported.

    An earlier ``FILE.part`` of the same object is continued from its length; a
    download that fails removes it unless ``keep_partial`` (an interrupted one,
    Ctrl-C or a kill, leaves it for the next run).
    """
    partial = Partial.of(output)
    resume = partial.resumable(url)
    headers = {"Range": f"bytes={resume[0]}-", "If-Range": resume[1]} if resume else {}
    hasher = hashlib.sha256()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with (
        aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
        session.get(url, proxy=proxy, allow_redirects=True, headers=headers) as response,
    ):
        start = continues_at(response, resume)
        if start is None:
            text = (await response.content.read(500)).decode(errors="replace").strip()
            if resume is None:
                raise GetError(f"{url}: the server answered {response.status}: {text}")
            partial.remove()  # not a continuation to trust: the next run starts afresh
            raise GetError(
                f"{url}: resuming {partial.path.name} got {response.status}: {text}; "
                "the partial file was removed, run again"
            )
        if start:
            hash_file(partial.path, hasher, start)
        else:
            partial.begin(url, response)
        body = response.status != 416  # a 416 here: the part was whole already
        length = response.content_length if body else 0
        progress = Progress(sys.stderr, None if length is None else start + length)
        progress.advance(start)
        try:
            with partial.path.open("r+b" if start else "wb") as handle:
                handle.truncate(start)
                handle.seek(start)
                while body and (chunk := await response.content.read(CHUNK)):
                    handle.write(chunk)
                    hasher.update(chunk)
                    progress.advance(len(chunk))
        except (aiohttp.ClientError, OSError) as exc:
            if not keep_partial:
                partial.remove()
            kept = f"; {partial.path.name} kept, the next run resumes it" if keep_partial else ""
            raise GetError(f"{url}: download broke off: {exc!r}{kept}") from exc
        finally:
            progress.finish()
        state = response.headers.get("X-Damselfly-Cache", "not cached")
    if digest is not None and hasher.hexdigest() != digest:
        partial.remove()
        raise GetError(f"{url}: sha256 is {hasher.hexdigest()}, expected {digest}; file removed")
    partial.finish(output)
    return f"{state}, resumed at byte {start}" if start else state


async def fetch_with_ephemeral_peer(
    url: str,
    output: Path,
    digest: str | None,
    schedulers: list[str],
    ephemeral: EphemeralProxy,
    keep_partial: bool = False,
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
        return await fetch(url, output, proxy, digest, keep_partial)


def run(args: argparse.Namespace, ephemeral: EphemeralProxy | None = None) -> int:
    if args.log_level is None and not os.environ.get("DAMSELFLY_LOG_LEVEL"):
        logging.getLogger().setLevel(logging.WARNING)  # the progress bar is the output
    output = Path(args.output)
    try:
        digest = parse_digest(args.digest)
        proxy = args.proxy or os.environ.get("DAMSELFLY_PROXY") or local_cluster_proxy()
        if proxy:
            state = asyncio.run(fetch(args.url, output, proxy, digest, args.keep_partial))
        elif ephemeral is None:
            raise GetError("no peer's proxy given and no peer to start in this process")
        else:
            state = asyncio.run(
                fetch_with_ephemeral_peer(
                    args.url, output, digest, args.scheduler or [], ephemeral, args.keep_partial
                )
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
