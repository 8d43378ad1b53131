"""Requests that bypass the cache: forwarded unchanged, bodies streamed both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import yarl
from multidict import CIMultiDict

from damselfly.errors import describe_error
from damselfly.peer.frontdoor.http1 import ClientConnection, ClientGone
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.net.access import Refused, resolve_tunnel_target
from damselfly.peer.net.httputil import HOP_BY_HOP, connection_tokens

log = logging.getLogger(__name__)

PIPE_CHUNK = 256 * 1024


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones and those the Connection header names."""
    named = connection_tokens([value for name, value in headers if name.lower() == "connection"])
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]


def response_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    raw = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers
    ]
    return end_to_end(raw)


async def relay_response(
    conn: ClientConnection, response: aiohttp.ClientResponse, metrics: PeerMetrics
) -> None:
    """Send an upstream response to the client as it came; cut it off if upstream does."""
    await conn.respond(response.status, response_headers(response), response.reason or "")
    try:
        async for chunk in response.content.iter_chunked(PIPE_CHUNK):
            await conn.send(chunk)
            metrics.passthrough_bytes.inc(len(chunk))
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream body failed, aborting client", extra={"error": str(exc)})
        conn.abort()
        return
    await conn.end()


async def forward(
    conn: ClientConnection,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    session: aiohttp.ClientSession,
    metrics: PeerMetrics,
) -> None:
    """Forward one request upstream and its response back, nothing held whole."""
    dropped = {"host", "expect"}  # 100-continue is answered here
    if "Transfer-Encoding" in headers:
        # The body arrives de-chunked and is sent on with its own framing; a
        # Content-Length beside it would make the upstream cut or wait for it.
        dropped.add("content-length")
    upstream_headers: CIMultiDict[str] = CIMultiDict(
        (name, value)
        for name, value in end_to_end(list(headers.items()))
        if name.lower() not in dropped
    )
    has_body = conn.body_pending() and (
        "Content-Length" in headers or "Transfer-Encoding" in headers
    )
    if has_body:
        await conn.continue_if_expected()
    data = conn.body() if has_body else None
    if not has_body and conn.body_pending():
        async for _ in conn.body():  # an empty body still ends with EndOfMessage
            pass
    try:
        response = await session.request(
            method,
            yarl.URL(url, encoded=True),
            headers=upstream_headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
    except ClientGone:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await conn.simple(502, f"damselfly: upstream {url} failed: {describe_error(exc)}")
        return
    try:
        await relay_response(conn, response, metrics)
    finally:
        response.release()


async def tunnel(
    conn: ClientConnection,
    authority: str,
    allowed_ports: list[int],
    allow_link_local: bool,
    connect_timeout: float,
) -> None:
    """CONNECT: a blind TCP tunnel, to allowed ports and never to link-local addresses."""
    host, _, port_text = authority.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        await conn.simple(400, f"damselfly: CONNECT target {authority!r} is not host:port")
        return
    port = int(port_text)
    if port not in allowed_ports:
        raise Refused(403, "connect_port", f"CONNECT to port {port} is not allowed")
    loop = asyncio.get_running_loop()
    try:
        address = await resolve_tunnel_target(loop, host, port, allow_link_local)
    except OSError as exc:  # the name does not resolve
        await conn.simple(502, f"damselfly: cannot resolve {host}: {describe_error(exc)}")
        return
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port), connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        await conn.simple(502, f"damselfly: cannot connect to {authority}: {describe_error(exc)}")
        return
    await conn.respond(200, [], reason="Connection established")
    early = conn.switched()
    if early:
        writer.write(early)
    await asyncio.gather(
        _pipe(conn.reader, writer), _pipe(reader, conn.writer), return_exceptions=True
    )
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(PIPE_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
