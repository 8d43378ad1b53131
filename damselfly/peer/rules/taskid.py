"""Task ids: what makes two requests the same cache entry.

A task is keyed by the URL with volatile query keys removed (order kept), plus
optional tag/application headers. When the path names the object's sha256 —
OCI blobs, Git LFS oids, Hugging Face CDN objects — the digest alone is the
identity: the same bytes from two hosts or two signed URLs are one entry, and
the object is verified against it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit, urlunsplit

TAG_HEADER = "X-Damselfly-Tag"
APPLICATION_HEADER = "X-Damselfly-Application"

# The last path segment is a bare 64-hex digest (Git LFS oid, HF CDN object),
# or an OCI digest "sha256:<hex>" (registry blob URLs).
_DIGEST_SEGMENT = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


@dataclass(frozen=True)
class TaskKey:
    task_id: str
    cache_url: str  # the URL the id was computed from, query filtered
    sha256: str | None  # known content digest, hex, or None


def _key_is_filtered(key: str, patterns: tuple[str, ...]) -> bool:
    lowered = key.lower()
    return any(fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def filter_query(url: str, filtered: tuple[str, ...]) -> str:
    """``url`` without the filtered query keys; the rest keep their order and bytes."""
    parts = urlsplit(url)
    if not parts.query:
        return urlunsplit(parts._replace(fragment=""))
    kept = [
        item
        for item in parts.query.split("&")
        if item and not _key_is_filtered(item.split("=", 1)[0], filtered)
    ]
    return urlunsplit(parts._replace(query="&".join(kept), fragment=""))


def content_digest(url: str) -> str | None:
    """The sha256 (hex) the URL's path names as its content, if it names one."""
    path = urlsplit(url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    match = _DIGEST_SEGMENT.match(last)
    return match.group(1) if match else None


def task_key(
    url: str,
    filtered: tuple[str, ...],
    tag: str = "",
    application: str = "",
    content_addressed: bool = True,
) -> TaskKey:
    """The cache identity of a request for ``url``."""
    cache_url = filter_query(url, filtered)
    digest = content_digest(url) if content_addressed else None
    if digest is not None:
        return TaskKey(task_id=digest, cache_url=cache_url, sha256=digest)
    material = "\n".join((cache_url, tag, application))
    return TaskKey(task_id=url_task_id(material), cache_url=cache_url, sha256=None)


def url_task_id(material: str) -> str:
    """The id of a URL-keyed task: BLAKE2b-256, personalised, never a plain sha256.

    A content-addressed task's id is the sha256 its path names, and anyone can
    choose bytes whose sha256 is the sha256 of a given text. Were URL keys
    sha256 too, an object made of a victim URL's key text, fetched under its
    own digest, would be served as that URL.
    """
    return hashlib.blake2b(material.encode(), digest_size=32, person=b"damselfly-url").hexdigest()
