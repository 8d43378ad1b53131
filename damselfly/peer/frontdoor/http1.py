"""The proxy's client side of HTTP/1.1, on h11's state machine.

h11 does the parsing and framing (keep-alive, chunked, CONNECT's protocol
switch); this class adds asyncio streams, back-pressure and abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import BinaryIO

import h11

from damselfly.errors import RequestError

READ_SIZE = 256 * 1024
MAX_HEADER_BYTES = 64 * 1024


class _FileSpan:
    """Stands in for file bytes in h11's framing: only its length matters."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class ClientGone(RequestError):
    """The client closed its connection or sent something h11 rejects."""


class ClientConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head_timeout: float | None = None,
    ) -> None:
        self.reader = reader
        self.head_timeout = head_timeout
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        peer = writer.get_extra_info("peername")
        self.client_ip: str = peer[0] if peer else ""
        self.method = b""  # of the request being answered

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientGone(f"bad request: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = await self.reader.read(READ_SIZE)
                except ConnectionError as exc:
                    raise ClientGone(str(exc)) from exc
                self.h11.receive_data(data)
                continue
            assert event is not h11.NEED_DATA
            return event  # type: ignore[return-value]

    async def next_request(self) -> h11.Request | None:
        """The next request on this connection, or None when the client is done
        (or sent no complete request head within ``head_timeout``)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        if self.h11.their_state is not h11.IDLE:
            return None
        try:
            async with asyncio.timeout(self.head_timeout):
                event = await self._next_event()
        except (ClientGone, TimeoutError):
            return None
        if isinstance(event, h11.Request):
            self.method = event.method
            return event
        return None

    async def body(self) -> AsyncIterator[bytes]:
        """The request body, as it arrives."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise ClientGone(f"unexpected {type(event).__name__} in request body")

    async def continue_if_expected(self) -> None:
        """Answer ``Expect: 100-continue`` so the client sends its body now.

        Without it curl and git-lfs wait a second before every upload. The proxy
        streams the body upstream itself, so it may say "continue" on its own.
        """
        if self.h11.they_are_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
            await self._drain()

    def body_pending(self) -> bool:
        return self.h11.their_state is h11.SEND_BODY

    async def respond(self, status: int, headers: list[tuple[str, str]], reason: str = "") -> None:
        """Send the status line and headers; the body follows with send()."""
        if not reason:
            with contextlib.suppress(ValueError):
                reason = HTTPStatus(status).phrase
        response = h11.Response(
            status_code=status,
            headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            reason=reason.encode("latin-1", "replace"),
        )
        self._write(self.h11.send(response))
        await self._drain()

    async def send(self, data: bytes) -> None:
        if data:
            for part in self.h11.send_with_data_passthrough(h11.Data(data=data)) or ():
                self.writer.write(part)
            await self._drain()

    async def send_file(self, file: BinaryIO, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` with sendfile(2): no copy via Python.

        h11 frames a placeholder of the right length (its documented pattern for
        sendfile); the bytes themselves go straight from the page cache.
        Returns the bytes sent, which is less than ``count`` only if the file is short.
        """
        span = _FileSpan(count)
        sent = 0
        data = h11.Data(data=span)  # type: ignore[arg-type]
        parts: list[object] = list(self.h11.send_with_data_passthrough(data) or ())
        for part in parts:
            if part is span:
                try:
                    loop = asyncio.get_running_loop()
                    sent = await loop.sendfile(self.writer.transport, file, offset, count)
                except (ConnectionError, OSError) as exc:
                    raise ClientGone(str(exc)) from exc
            else:
                assert isinstance(part, bytes)
                self.writer.write(part)
        await self._drain()
        return sent

    async def end(self) -> None:
        self._write(self.h11.send(h11.EndOfMessage()))
        await self._drain()

    async def simple(
        self, status: int, message: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        """A complete small text response (errors, refusals)."""
        body = (message.rstrip("\n") + "\n").encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        if extra:
            headers.extend(extra)
        if self.body_pending():
            headers.append(("Connection", "close"))  # we won't read the rest of their body
        await self.respond(status, headers)
        if self.method != b"HEAD":  # the length says what a GET would get
            await self.send(body)
        await self.end()

    def _write(self, data: bytes | None) -> None:
        if data:
            self.writer.write(data)

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE and self.h11.our_state is not h11.IDLE

    def keep_alive(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def switched(self) -> bytes:
        """After a 2xx to CONNECT: bytes the client already sent past the request."""
        data, _closed = self.h11.trailing_data
        return bytes(data)

    def abort(self) -> None:
        """Cut the connection without finishing the response: never fake a complete body.

        With SO_LINGER 0 the close is a reset, not a FIN: a client reading a
        body delimited by the close (HTTP/1.0, no length) sees an error, not an end.
        """
        sock = self.writer.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
