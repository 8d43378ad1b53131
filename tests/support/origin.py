"""A real HTTP origin for tests (aiohttp), serving files from a directory.

    python -m tests.support.origin --host 127.0.0.1 --port N --dir D

Behaviours are chosen per request by query flags, or per path by a leading
``/@flag=value,flag/`` segment (for clients that must not add a query), e.g.
``/big.bin?norange=1`` or ``/@cut=1000/big.bin``:

- (default)    Range honoured: one range gives 206 + Content-Range, an
               unsatisfiable one 416 with ``Content-Range: bytes */size``;
               several ranges are ignored (200). ETag, Last-Modified,
               Accept-Ranges: bytes. HEAD works.
- ``norange``  Range ignored: always 200 and the full body, no Accept-Ranges.
- ``chunked``  no Content-Length, chunked transfer coding, Range ignored.
- ``cut=N``    headers promise the full length, the connection is closed after
               N body bytes.
- ``status=S`` answer S (e.g. 403, 404, 500) with a short text body. A missing
               file is a plain 404 anyway.
- ``rate=B``   send at most B bytes per second.
- ``delay=T``  wait T seconds before answering (for concurrent-request tests).
- ``echo``     any method: read the whole request body and answer JSON with its
               method, length, sha256 and the Content-Length/Transfer-Encoding
               and other headers it arrived with.
- ``gzip``     when the request's Accept-Encoding allows gzip: the whole body
               gzip-compressed, Content-Encoding: gzip, Range ignored. Always
               ``Vary: Accept-Encoding``.

``GET /__stats`` returns JSON: per path (without query or ``@`` segment) the
number of requests and each request's method, query, Range, Accept-Encoding,
Authorization, status and body bytes sent. ``POST /__stats/reset`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from tests.support.ports import free_port
from tests.support.procs import ManagedProcess, wait_until

CHUNK = 256 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range → (start, end inclusive); None if not usable; "416" if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "416"
            return (max(0, size - suffix), size - 1) if size else "416"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "416"
    if start < 0 or end < start:
        return None
    return start, min(end, size - 1)


def _flags(request: web.Request, path_flags: str) -> dict[str, str]:
    flags: dict[str, str] = {}
    for item in filter(None, path_flags.split(",")):
        key, _, value = item.partition("=")
        flags[key] = value or "1"
    for key, value in request.query.items():
        flags[key] = value or "1"
    return flags


class OriginApp:
    """The aiohttp application and its request statistics."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.stats: dict[str, dict[str, Any]] = {}

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/__stats", self.get_stats)
        app.router.add_post("/__stats/reset", self.reset_stats)
        app.router.add_route("*", "/{tail:.*}", self.serve)
        return app

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.clear()
        return web.json_response({})

    def _record(self, path: str, request: web.Request) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "query": request.rel_url.raw_query_string,  # as sent, not decoded
            "range": request.headers.get("Range"),
            "accept_encoding": request.headers.get("Accept-Encoding"),
            "authorization": request.headers.get("Authorization"),
            "status": None,
            "bytes_sent": 0,
            "time": time.time(),
        }
        slot = self.stats.setdefault(path, {"count": 0, "requests": []})
        slot["count"] += 1
        slot["requests"].append(entry)
        return entry

    async def serve(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        path_flags = ""
        if tail.startswith("@"):
            path_flags, _, tail = tail[1:].partition("/")
        path = "/" + tail
        flags = _flags(request, path_flags)
        entry = self._record(path, request)
        if "delay" in flags:
            await asyncio.sleep(float(flags["delay"]))

        target = (self.root / tail).resolve()
        if "status" in flags:
            status = int(flags["status"])
            entry["status"] = status
            body = f"origin says {status}\n"
            entry["bytes_sent"] = len(body)
            return web.Response(status=status, text=body)
        if "echo" in flags:
            digest, length = hashlib.sha256(), 0
            async for chunk in request.content.iter_chunked(CHUNK):
                digest.update(chunk)
                length += len(chunk)
            entry["status"] = 200
            return web.json_response(
                {
                    "method": request.method,
                    "length": length,
                    "sha256": digest.hexdigest(),
                    "contentLength": request.headers.get("Content-Length"),
                    "transferEncoding": request.headers.get("Transfer-Encoding"),
                    "headers": dict(request.headers),
                }
            )
        if request.method not in ("GET", "HEAD"):
            entry["status"] = 405
            return web.Response(status=405, text="only GET and HEAD\n")
        if not target.is_relative_to(self.root) or not target.is_file():
            entry["status"] = 404
            return web.Response(status=404, text="not found\n")

        size = target.stat().st_size
        stat = target.stat()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": '"'
            + hashlib.sha256(f"{tail}:{size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
            + '"',
            "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
            "Vary": "Accept-Encoding",
            # The name as UTF-8 bytes, as many servers send it (not RFC 5987)
            "Content-Disposition": f'attachment; filename="{target.name}"',
        }
        ignore_range = any(k in flags for k in ("norange", "chunked"))
        start, end, status = 0, size - 1, 200

        accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        if "gzip" in flags and accepts_gzip:
            data = gzip.compress(target.read_bytes())
            headers["Content-Encoding"] = "gzip"
            return await self._send_bytes(request, entry, flags, headers, data)

        if not ignore_range:
            headers["Accept-Ranges"] = "bytes"
            range_header = request.headers.get("Range")
            if range_header:
                parsed = parse_range(range_header, size)
                if parsed == "416":
                    entry["status"] = 416
                    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
                if isinstance(parsed, tuple):
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"

        resp = web.StreamResponse(status=status, headers=headers)
        length = end - start + 1
        if "chunked" in flags:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = length
        entry["status"] = status
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        with target.open("rb") as fh:
            fh.seek(start)
            complete = await self._stream(request, resp, entry, flags, length, fh.read)
        if complete:
            await resp.write_eof()
        return resp

    async def _send_bytes(
        self,
        request: web.Request,
        entry: dict[str, Any],
        flags: Mapping[str, str],
        headers: dict[str, str],
        data: bytes,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = len(data)
        entry["status"] = 200
        await resp.prepare(request)
        if request.method != "HEAD":
            offset = 0

            def read(n: int) -> bytes:
                nonlocal offset
                chunk = data[offset : offset + n]
                offset += len(chunk)
                return chunk

            if not await self._stream(request, resp, entry, flags, len(data), read):
                return resp
        await resp.write_eof()
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        entry: dict[str, Any],
        flags: Mapping[str, str],
        length: int,
        read: Callable[[int], bytes],
    ) -> bool:
        """Write ``length`` bytes from ``read``; False if the body was cut on purpose."""
        rate = float(flags["rate"]) if "rate" in flags else None
        cut = int(flags["cut"]) if "cut" in flags else None
        step = CHUNK if rate is None else max(1, min(CHUNK, int(rate / 10)))
        remaining = length
        loop = asyncio.get_running_loop()
        began, paced = loop.time(), 0
        while remaining > 0:
            n = min(step, remaining)
            if cut is not None:
                n = min(n, cut - entry["bytes_sent"])
                if n <= 0:
                    if request.transport is not None:
                        request.transport.close()  # flushes what was written, then FIN
                    return False
            chunk = read(n)
            if not chunk:
                raise RuntimeError(f"file shrank while serving {request.path}")
            if rate is not None:  # byte B leaves no earlier than B/rate after the start
                paced += len(chunk)
                await asyncio.sleep(max(0.0, began + paced / rate - loop.time()))
            await resp.write(chunk)
            entry["bytes_sent"] += len(chunk)
            remaining -= len(chunk)
        return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--tls-cert", type=Path, help="serve https with this certificate")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key")
    args = parser.parse_args(argv)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    print(f"origin: serving {args.dir} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    web.run_app(
        OriginApp(args.dir).build(),
        host=args.host,
        port=args.port,
        ssl_context=context,
        print=None,
        access_log=None,
    )


def make_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (openssl), valid one day: (cert, key)."""
    cert, key = directory / "origin.crt", directory / "origin.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=damselfly-test-origin",
            "-addext",
            f"subjectAltName=IP:{host}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# ---- for tests: start one as a real subprocess and talk to it ----


class ProcessStarter(Protocol):
    """What tests/conftest.py's ``processes`` fixture offers."""

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess: ...


@dataclass
class Origin:
    """A running origin: URLs and its request statistics."""

    base_url: str
    directory: Path
    process: ManagedProcess
    ca_file: Path | None = None

    def _open(self, request: str | urllib.request.Request) -> Any:
        if self.ca_file is None:
            return _DIRECT.open(request, timeout=10)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        return opener.open(request, timeout=10)

    def url(self, path: str, **flags: str | int) -> str:
        """URL of ``path`` (relative to the directory) with behaviour ``flags`` as query."""
        query = urlencode({k: str(v) for k, v in flags.items()})
        return f"{self.base_url}/{path.lstrip('/')}" + (f"?{query}" if query else "")

    def stats(self) -> dict[str, Any]:
        with self._open(self.base_url + "/__stats") as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def hits(self, path: str) -> int:
        """How many requests reached the origin for ``path`` (any flags)."""
        slot = self.stats().get("/" + path.lstrip("/"))
        return int(slot["count"]) if slot else 0

    def requests(self, path: str) -> list[dict[str, Any]]:
        slot = self.stats().get("/" + path.lstrip("/"))
        return list(slot["requests"]) if slot else []

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request for ``path``, in order (None: no Range)."""
        return [r["range"] for r in self.requests(path)]

    def reset(self) -> None:
        req = urllib.request.Request(self.base_url + "/__stats/reset", data=b"", method="POST")
        with self._open(req):
            pass


def start_origin(
    processes: ProcessStarter,
    directory: Path,
    host: str = "127.0.0.1",
    name: str = "origin",
    timeout: float = 30.0,
    tls: tuple[Path, Path] | None = None,
) -> Origin:
    """Start ``python -m tests.support.origin`` under ``processes``; wait until it answers.

    ``tls``: (cert, key) to serve https; the Origin then trusts that cert itself.
    """
    port = free_port(host)
    argv = [
        sys.executable,
        "-m",
        "tests.support.origin",
        "--host",
        host,
        "--port",
        str(port),
        "--dir",
        str(directory),
    ]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = processes.start(name, argv, cwd=REPO_ROOT)
    scheme = "https" if tls else "http"
    origin = Origin(f"{scheme}://{host}:{port}", directory, proc, tls[0] if tls else None)

    def ready() -> bool:
        try:
            origin.stats()
            return True
        except OSError:
            return False

    wait_until(ready, timeout, f"origin on {host}:{port}", proc=proc)
    return origin


if __name__ == "__main__":
    main()
