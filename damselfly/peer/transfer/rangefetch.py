"""Ranged piece GETs to the origin on worker threads, off the event loop.

A cold download is bound by how fast the peer receives, hashes and writes.
Through aiohttp the event loop receives every 256 KiB into a fresh buffer,
parses and queues it before a thread hashes and writes it; the loop then
becomes the bottleneck of a fast origin. Here a worker thread receives
straight into a reused buffer, hashes and writes it (all three release the
GIL), and the loop only hears of whole pieces, so the work spreads over cores.

The rules of the aiohttp client hold here too: the same link-local guard
(checked on the resolved address), the same CA file for https, no redirects,
no decompression, connect and read timeouts. Only the piece requests of
ranged origins come here; the stat, pass-through and everything else stay on
aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDict

from damselfly.peer.net.access import is_link_local
from damselfly.peer.transfer.origin import (
    ANY_VERSION,
    ObjectChanged,
    OriginError,
    RangeIgnored,
    Validator,
    parse_content_range,
)

BUFFER = 256 << 10  # received, hashed and written while still in the CPU's cache
MAX_IDLE_PER_ORIGIN = 16

Sink = Callable[[memoryview], None]
OriginKey = tuple[str, str, int]  # scheme, host, port


def connect_guarded(
    host: str, port: int, allow_link_local: bool, connect_timeout: float
) -> socket.socket:
    """A TCP connection to ``host``, never to a link-local address unless allowed.

    The resolved addresses are checked, not the name, so a DNS name pointing
    at 169.254.169.254 is refused like the literal.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    allowed = [i for i in infos if allow_link_local or not is_link_local(str(i[4][0]))]
    if not allowed:
        raise OSError(f"{host} resolves only to link-local addresses, which are refused")
    last: OSError | None = None
    for family, kind, proto, _, address in allowed:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None
    raise last


class _OriginConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection that dials through ``connect_guarded`` (and TLS for https)."""

    def __init__(
        self,
        key: OriginKey,
        tls: ssl.SSLContext | None,
        allow_link_local: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        super().__init__(key[1], key[2], timeout=read_timeout)
        self.default_port = 443 if key[0] == "https" else 80  # Host: omits it, as clients do
        self.key = key
        self._tls = tls
        self._allow_link_local = allow_link_local
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def connect(self) -> None:
        sock = connect_guarded(self.host, self.port, self._allow_link_local, self._connect_timeout)
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self._read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class _Request:
    """One piece request in flight; the loop aborts it by shutting its socket."""

    connection: _OriginConnection | None = None
    aborted: bool = False


class RangeFetcher:
    def __init__(
        self,
        tls: ssl.SSLContext,
        allow_link_local: bool,
        connect_timeout: float,
        read_timeout: float,
        threads: int = 8,
    ) -> None:
        self._tls = tls
        self._allow_link_local = allow_link_local
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="origin-piece")
        self._idle: dict[OriginKey, list[_OriginConnection]] = {}
        self._lock = threading.Lock()

    async def fetch(
        self,
        url: str,
        headers: CIMultiDict[str],
        start: int,
        end: int,
        size: int,
        sink: Sink,
        validator: Validator = ANY_VERSION,
    ) -> None:
        """GET bytes [start, end] of ``url`` (of ``size`` in all), each chunk to ``sink``;
        ObjectChanged if the origin now has another version than ``validator`` names.

        ``sink`` runs on the worker thread. On cancellation the request is cut
        and this returns only once the thread has stopped calling ``sink``, so
        the caller may close what ``sink`` writes to.
        """
        request = _Request()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            self._executor, self._fetch, request, url, headers, start, end, size, sink, validator
        )
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            self._abort(request)
            with contextlib.suppress(Exception):
                await work
            raise

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- on the worker thread ----------------------------------------------
    def _fetch(
        self,
        request: _Request,
        url: str,
        headers: CIMultiDict[str],
        start: int,
        end: int,
        size: int,
        sink: Sink,
        validator: Validator,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise OriginError(f"cannot fetch pieces of {url!r}")
        key: OriginKey = (scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        wanted = [(name, value) for name, value in headers.items()]
        wanted.append(("Range", f"bytes={start}-{end}"))
        wanted += validator.request_headers()
        # A reused connection the origin has meanwhile closed fails before any
        # answer: that one retry on a new connection is not the origin's fault.
        for reused in (True, False):
            connection = self._take(key) if reused else None
            if reused and connection is None:
                continue
            connection = connection or self._new(key)
            request.connection = connection
            if request.aborted:
                connection.close()
                raise OriginError("piece request cancelled")
            try:
                response = self._send(connection, target, wanted)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if reused:
                    continue
                raise
            except http.client.HTTPException as exc:
                connection.close()
                raise OriginError(f"origin broke HTTP: {exc!r}") from exc
            except BaseException:
                connection.close()
                raise
            try:
                self._receive(response, start, end, size, sink, validator)
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._give_back(connection)
            return

    @staticmethod
    def _send(
        connection: _OriginConnection, target: str, headers: list[tuple[str, str]]
    ) -> http.client.HTTPResponse:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse()

    @staticmethod
    def _receive(
        response: http.client.HTTPResponse,
        start: int,
        end: int,
        size: int,
        sink: Sink,
        validator: Validator,
    ) -> None:
        if response.status == 412 or validator.changed(
            response.getheader("ETag"), response.getheader("Last-Modified")
        ):
            raise ObjectChanged(
                f"origin answered {response.status} with ETag {response.getheader('ETag')!r}, "
                f"Last-Modified {response.getheader('Last-Modified')!r} for a download of "
                f"ETag {validator.etag!r}, Last-Modified {validator.last_modified!r}"
            )
        whole = start == 0 and end == size - 1 and response.length == size
        if response.status == 200 and not whole:
            raise RangeIgnored("origin answered 200 to a range request: it ignores Range")
        if response.status not in (200, 206):
            raise OriginError(f"origin answered {response.status} to a range request")
        content_range = response.getheader("Content-Range")
        if response.status == 206 and parse_content_range(content_range) != (start, end, size):
            raise OriginError(
                f"origin answered Content-Range {content_range!r}, "
                f"expected bytes {start}-{end}/{size} (object changed?)"
            )
        buffer = memoryview(bytearray(BUFFER))
        left = end - start + 1
        try:
            while left:
                got = response.readinto(buffer[: min(left, BUFFER)])
                if not got:
                    raise OriginError(
                        f"body ended after {end - start + 1 - left} of {end - start + 1} bytes"
                    )
                sink(buffer[:got])
                left -= got
            if response.read(1):
                raise OriginError("origin sent more bytes than the range holds")
        except http.client.IncompleteRead as exc:
            raise OriginError(
                f"body ended after {end - start + 1 - left + len(exc.partial)} of "
                f"{end - start + 1} bytes"
            ) from exc
        except http.client.HTTPException as exc:
            raise OriginError(f"origin broke HTTP: {exc!r}") from exc

    def _new(self, key: OriginKey) -> _OriginConnection:
        tls = self._tls if key[0] == "https" else None
        return _OriginConnection(
            key, tls, self._allow_link_local, self._connect_timeout, self._read_timeout
        )

    def _take(self, key: OriginKey) -> _OriginConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _give_back(self, connection: _OriginConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(connection.key, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(connection)
                return
        connection.close()

    # --- on the event loop -------------------------------------------------
    @staticmethod
    def _abort(request: _Request) -> None:
        request.aborted = True
        connection = request.connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
