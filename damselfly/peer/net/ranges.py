"""HTTP Range requests (RFC 9110 §14) against an object of known size."""

from __future__ import annotations

from dataclasses import dataclass

from damselfly.errors import RequestError


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class UnsatisfiableRange(RequestError, ValueError):
    """A syntactically valid range that lies outside the object: answer 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a client asked for; None means "send the whole object".

    Multiple ranges and malformed headers are ignored (RFC 9110 allows a
    server to answer 200 with the full representation); git-lfs, curl and
    HTTP libraries send a single range.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:  # suffix range: the last N bytes
        if not last.isdigit():
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise UnsatisfiableRange(header)
        return ByteRange(max(0, size - suffix), size - 1)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise UnsatisfiableRange(header)
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))
