"""Runs one server of the Git LFS test rig; executed by .venv-lfs's python.

    python tests/support/lfs_serve.py moto --host IP --port N
    python tests/support/lfs_serve.py giftless --host IP --port N --config FILE

This file runs in the rig's own virtualenv (scripts/lfs-rig-install), which has
giftless, moto and waitress but not the project, so it imports only those and
the standard library.

``moto`` is moto's S3 (all of moto's services) behind moto's own threaded
werkzeug server, wrapped in a recorder: every request that reaches the store is
noted (method, path, query, Range, status, body bytes sent) and the list is
served as JSON at ``GET /__rig/requests``. S3 bucket names cannot start with an
underscore, so the path never collides with a path-style bucket URL.

``giftless`` is the giftless Flask app under waitress, configured by the YAML
file named in GIFTLESS_CONFIG_FILE (the flag sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

RECORDER_PATH = "/__rig/requests"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _CountingBody:
    """A response iterable that adds the bytes it yields to the request's entry."""

    def __init__(self, inner: Iterable[bytes], entry: dict[str, Any], lock: threading.Lock):
        self._inner = inner
        self._entry = entry
        self._lock = lock

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            with self._lock:
                self._entry["bytes_sent"] += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        with self._lock:
            self._entry["done"] = True


class RequestRecorder:
    """WSGI middleware that records each request before the app sees it."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.entries: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == RECORDER_PATH:
            with self.lock:
                body = json.dumps(self.entries).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        entry: dict[str, Any] = {
            "seq": 0,
            "time": time.time(),
            "method": environ.get("REQUEST_METHOD", ""),
            "path": path,
            "query": environ.get("QUERY_STRING", ""),
            "range": environ.get("HTTP_RANGE"),
            "status": None,
            "bytes_sent": 0,
            "done": False,
        }
        with self.lock:
            entry["seq"] = len(self.entries)
            self.entries.append(entry)

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            with self.lock:
                entry["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        return _CountingBody(self.app(environ, recording_start_response), entry, self.lock)


def serve_moto(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    app = RequestRecorder(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def serve_giftless(host: str, port: int, config: str, threads: int) -> None:
    os.environ["GIFTLESS_CONFIG_FILE"] = config
    import waitress
    from giftless.app import init_app

    app = init_app()
    waitress.serve(app, host=host, port=port, threads=threads, ident="giftless")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["moto", "giftless"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", help="giftless YAML config file")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"lfs_serve: {args.server} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    if args.server == "moto":
        serve_moto(args.host, args.port)
    else:
        if not args.config:
            parser.error("giftless needs --config")
        serve_giftless(args.host, args.port, args.config, args.threads)


if __name__ == "__main__":
    main()
