"""Talking to origins: the stat request, and what origin answers mean (ranges, caching).

Presigned URLs are signed per method, so the stat is a ``GET`` with
``Range: bytes=0-0`` rather than a ``HEAD``. We always ask for the identity
encoding, so the bytes we cache are the object itself and never a gzip of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import yarl
from multidict import CIMultiDict

from damselfly.errors import TransferError
from damselfly.peer.net.httputil import HOP_BY_HOP, connection_tokens

# Response headers worth storing and replaying on hits.
STORED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Content-Disposition",
    "Accept-Ranges",
)
# Client headers never forwarded on cache fetches: we frame and encode ourselves.
_NOT_FORWARDED = frozenset(
    {"host", "range", "accept-encoding", "if-range", "if-none-match", "if-modified-since"}
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class OriginError(TransferError):
    """The origin misbehaved during a piece fetch (wrong status, range, length)."""


class RangeIgnored(OriginError):
    """The origin answered a range request with the whole object (200)."""


class ObjectChanged(OriginError):
    """The origin now serves another version of the object than the download began with."""


def _opaque(etag: str) -> str:
    return etag.removeprefix("W/")


@dataclass(frozen=True)
class Validator:
    """What tells one version of an object at its origin from the next (RFC 9110 §8.8).

    Every ranged GET of a download carries it (``If-Match`` for a strong ETag,
    else ``If-Unmodified-Since``), and every answer is compared with it, so a
    download never stitches pieces of two versions together, also where no
    other copy's digests exist yet to compare with (the first producer).
    """

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validator:
        return cls(headers.get("ETag") or None, headers.get("Last-Modified") or None)

    def request_headers(self) -> list[tuple[str, str]]:
        if self.etag is not None and not self.etag.startswith("W/"):
            return [("If-Match", self.etag)]
        if self.last_modified is not None:
            return [("If-Unmodified-Since", self.last_modified)]
        return []

    def changed(self, etag: str | None, last_modified: str | None) -> bool:
        """Whether an answer carrying these says it is another version."""
        if self.etag is not None and etag is not None:
            return _opaque(etag) != _opaque(self.etag)
        if self.last_modified is not None and last_modified is not None:
            return last_modified != self.last_modified
        return False


ANY_VERSION = Validator()  # before the first answer: nothing to compare with


@dataclass
class StatResult:
    """What the first request told us about the object."""

    response: aiohttp.ClientResponse  # still open: its body may be the object itself
    size: int | None
    honours_range: bool

    @property
    def ok(self) -> bool:
        """A 2xx, or the 416 an origin gives the stat of an empty object (bytes */0)."""
        return 200 <= self.response.status < 300 or (self.response.status == 416 and self.size == 0)


def forwardable_request_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """Client headers to send upstream on cache fetches (auth headers included)."""
    out: CIMultiDict[str] = CIMultiDict()
    connection_named = connection_tokens(headers.getall("Connection", []))
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in connection_named or lowered in _NOT_FORWARDED:
            continue
        if lowered.startswith("x-damselfly-"):
            continue
        out.add(name, value)
    out["Accept-Encoding"] = "identity"
    return out


_NOT_CACHEABLE = ("no-store", "no-cache", "private")


def not_cacheable(cache_control: str | None) -> str | None:
    """The directive that forbids keeping a response, if Cache-Control has one.

    Only for objects keyed by URL: a content-addressed object is immutable
    whatever its headers say. (git's smart-HTTP ref listing, for instance, is
    'no-cache' and goes stale the moment someone pushes.)
    """
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in _NOT_CACHEABLE or (name in ("max-age", "s-maxage") and value.strip() == "0"):
            return directive.strip()
    return None


def stored_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The headers replayed on hits, as latin-1 text of their raw bytes.

    aiohttp decodes header values as UTF-8; sent back as latin-1 a non-ASCII
    filename in Content-Disposition would change its bytes or fail to encode.
    """
    wanted = {name.lower(): name for name in STORED_RESPONSE_HEADERS}
    stored: dict[str, str] = {}
    for raw_name, raw_value in response.raw_headers:
        name = wanted.get(raw_name.decode("latin-1").lower())
        if name is not None and name not in stored:
            stored[name] = raw_value.decode("latin-1")
    return stored


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if not value:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


async def stat(session: aiohttp.ClientSession, url: str, headers: CIMultiDict[str]) -> StatResult:
    """GET the first byte. The caller owns (and must release) the response."""
    request_headers = CIMultiDict(headers)
    request_headers["Range"] = "bytes=0-0"
    response = await session.get(
        yarl.URL(url, encoded=True),  # as the client wrote it: signatures hash its bytes
        headers=request_headers,
        allow_redirects=False,
        auto_decompress=False,
    )
    if response.status == 206:
        parsed = parse_content_range(response.headers.get("Content-Range"))
        if parsed is None or parsed[0] != 0 or parsed[2] is None:
            response.release()
            raise OriginError(
                f"origin answered 206 with Content-Range {response.headers.get('Content-Range')!r}"
            )
        return StatResult(response, parsed[2], honours_range=True)
    if response.status == 416:
        parsed = parse_content_range(
            response.headers.get("Content-Range", "").replace("*/", "0-0/")
        )
        if parsed is not None and parsed[2] == 0:  # "bytes */0": an empty object
            return StatResult(response, 0, honours_range=True)
    if response.status == 200:
        return StatResult(response, response.content_length, honours_range=False)
    return StatResult(response, None, honours_range=False)
