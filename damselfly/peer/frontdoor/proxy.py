"""The proxy's front door (port 65001): route each request by rule.

GET/HEAD requests that a rule matches go through the cache; everything else is
forwarded unchanged, and CONNECT becomes a blind tunnel, so a node-wide
``http.proxy`` keeps every other remote working.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import h11
from multidict import CIMultiDict

from damselfly.config.peer import ProxySection
from damselfly.errors import describe_error
from damselfly.peer.frontdoor.http1 import ClientConnection, ClientGone
from damselfly.peer.frontdoor.passthrough import forward, relay_response, response_headers, tunnel
from damselfly.peer.frontdoor.respond import CACHE_HEADER, TASK_ID_HEADER, serve
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.net.access import Refused, check_basic_auth, check_upstream, client_allowed
from damselfly.peer.rules.match import RuleMatch, RulesHolder
from damselfly.peer.rules.taskid import APPLICATION_HEADER, TAG_HEADER, task_key
from damselfly.peer.transfer import origin
from damselfly.peer.transfer.cache import Cache
from damselfly.peer.transfer.download import DownloadFailed, OriginAnswer, PassThrough

log = logging.getLogger(__name__)


class Proxy:
    def __init__(
        self,
        config: ProxySection,
        rules: RulesHolder,
        cache: Cache,
        session: aiohttp.ClientSession,
        metrics: PeerMetrics,
    ) -> None:
        self.config = config
        self.rules = rules
        self.cache = cache
        self.session = session
        self.metrics = metrics
        self._password = config.basic_auth.resolved_password() if config.basic_auth else None

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = ClientConnection(reader, writer, self.config.request_head_timeout)
        try:
            while True:
                request = await conn.next_request()
                if request is None:
                    break
                await self._handle(conn, request)
                if not conn.keep_alive():
                    break
        except ClientGone as exc:
            # Routine (a client stopped reading, timed out, or sent what h11 rejects):
            # a line, never a traceback.
            log.info("client went away", extra={"client": conn.client_ip, "error": str(exc)})
        except Exception:
            log.exception("proxy request failed")
            if not conn.response_started:
                try:
                    await conn.simple(500, "damselfly: internal error")
                except Exception:
                    conn.abort()
            else:
                conn.abort()
        finally:
            await conn.close()

    async def _handle(self, conn: ClientConnection, request: h11.Request) -> None:
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), _header_text(value)) for name, value in request.headers
        )
        try:
            self._check_access(conn, headers)
            if method == "CONNECT":
                await _drain(conn)
                self.metrics.requests.labels(route="tunnel").inc()
                await tunnel(
                    conn,
                    target,
                    self.config.connect_ports,
                    self.config.allow_link_local,
                    self.config.upstream_connect_timeout,
                )
                return
        except Refused as refused:
            await self._refuse(conn, refused)
            return
        if not target.startswith(("http://", "https://")):
            await _drain(conn)
            await conn.simple(
                400,
                "damselfly: this is an HTTP proxy; send absolute-form requests "
                "(e.g. curl -x http://this-node:65001 http://host/path)",
            )
            return
        problem = _url_problem(target)
        if problem is not None:
            await _drain(conn)
            await conn.simple(400, f"damselfly: {target!r} is not a usable URL: {problem}")
            return
        match = self.rules.current.match(target) if method in ("GET", "HEAD") else None
        try:
            check_upstream(match.upstream_url if match else target, self.config.allow_link_local)
        except Refused as refused:
            await _drain(conn)
            await self._refuse(conn, refused)
            return
        if match is None:
            self.metrics.requests.labels(route="passthrough").inc()
            await forward(conn, method, target, headers, self.session, self.metrics)
            return
        self.metrics.requests.labels(route="cache").inc()
        await _drain(conn)
        await self._cached(conn, method, target, headers, match)

    async def _refuse(self, conn: ClientConnection, refused: Refused) -> None:
        self.metrics.requests.labels(route="refused").inc()
        self.metrics.refusals.labels(reason=refused.reason).inc()
        extra = (
            [("Proxy-Authenticate", 'Basic realm="damselfly"')] if refused.status == 407 else None
        )
        await conn.simple(refused.status, f"damselfly: {refused}", extra)

    def _check_access(self, conn: ClientConnection, headers: CIMultiDict[str]) -> None:
        if not client_allowed(conn.client_ip, self.config.allowed_client_cidrs):
            raise Refused(403, "client_cidr", f"client {conn.client_ip} is not allowed")
        auth = self.config.basic_auth
        if (
            auth is not None
            and self._password is not None
            and not check_basic_auth(
                headers.get("Proxy-Authorization"), auth.username, self._password
            )
        ):
            raise Refused(407, "auth", "proxy authentication required")

    async def _cached(
        self,
        conn: ClientConnection,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        match: RuleMatch,
    ) -> None:
        key = task_key(
            target,
            match.filtered_query_params,
            headers.get(TAG_HEADER, ""),
            headers.get(APPLICATION_HEADER, ""),
            match.rule.content_addressed,
        )
        head = method == "HEAD"
        range_header, if_range = headers.get("Range"), headers.get("If-Range")
        record = self.cache.complete_record(key.task_id)
        if record is not None and record.sha256 != key.sha256:
            record = None  # never serve a URL-keyed entry for a digest, or the reverse
        if record is not None:
            self.metrics.cache_lookups.labels(result="hit").inc()
            await serve(conn, self.cache, record, None, head, range_header, if_range, "hit")
            return
        self.metrics.cache_lookups.labels(result="miss").inc()
        if head and key.task_id not in self.cache.active:
            await self._head_miss(conn, match.upstream_url, headers, key.task_id)
            return
        download, created = self.cache.download(key, match.upstream_url, headers)
        try:
            start = await download.wait_started()
        except DownloadFailed as exc:
            await conn.simple(502, f"damselfly: fetching {match.upstream_url} failed: {exc}")
            return
        if isinstance(start, PassThrough):
            log.info("not caching", extra={"task": key.task_id, "reason": start.reason})
            await forward(conn, method, match.upstream_url, headers, self.session, self.metrics)
            return
        if isinstance(start, OriginAnswer):
            if created:
                try:
                    await relay_response(conn, start.response, self.metrics)
                finally:
                    start.response.release()
            else:  # only the creator can read that answer's body: ask again ourselves
                await forward(conn, method, match.upstream_url, headers, self.session, self.metrics)
            return
        try:
            await serve(conn, self.cache, start, download, head, range_header, if_range, "miss")
        except DownloadFailed as exc:  # failed before the response began (else: aborted)
            await conn.simple(502, f"damselfly: fetching {match.upstream_url} failed: {exc}")

    async def _head_miss(
        self, conn: ClientConnection, url: str, headers: CIMultiDict[str], task_id: str
    ) -> None:
        """HEAD of an object not cached: stat it (a GET of one byte), download nothing."""
        try:
            result = await origin.stat(
                self.session, url, origin.forwardable_request_headers(headers)
            )
        except (aiohttp.ClientError, OSError, TimeoutError, origin.OriginError) as exc:
            await conn.simple(502, f"damselfly: fetching {url} failed: {describe_error(exc)}")
            return
        try:
            if not result.ok:
                await conn.respond(result.response.status, response_headers(result.response))
                await conn.end()
                return
            out = list(origin.stored_headers(result.response).items())
            out += [("Accept-Ranges", "bytes"), (TASK_ID_HEADER, task_id), (CACHE_HEADER, "miss")]
            if result.size is not None:
                out.append(("Content-Length", str(result.size)))
            await conn.respond(200, out)
            await conn.end()
        finally:
            result.response.release()


async def _drain(conn: ClientConnection) -> None:
    """Read (and drop) a request body we do not forward, so the connection can go on."""
    async for _ in conn.body():
        pass


def _header_text(value: bytes) -> str:
    """A request header value as text that aiohttp (which writes UTF-8) sends back as it came."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched (no host, a broken IPv6 literal or port), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        return str(exc)
    return None if parts.hostname else "it names no host"
