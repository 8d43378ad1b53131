"""Consistent hashing of task ids over nodes (schedulers, seed peers).

Rendezvous (highest-random-weight) hashing: each (key, node) pair gets a
sha256 score and nodes are ranked by it. Adding or removing a node moves only
the keys that node wins or held (about 1/N of them), and the ranking itself is
the fail-over order: when the first node is down, try the second. No state, no
virtual nodes, the same answer in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(key: str, node: str) -> int:
    """The weight of ``node`` for ``key``; higher wins."""
    digest = hashlib.sha256(f"{node}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rank(key: str, nodes: Iterable[str]) -> list[str]:
    """Distinct ``nodes`` ordered by preference for ``key`` (owner first, then fail-over)."""
    unique = set(nodes)
    return sorted(unique, key=lambda node: (score(key, node), node), reverse=True)
