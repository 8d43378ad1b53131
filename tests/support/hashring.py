"""An independent implementation of the task ring's owner, as a test oracle.

``damselfly.api.hashring.rank`` is what production uses; its first element must
be the node this straightforward max-score loop picks.
"""

from __future__ import annotations

from collections.abc import Iterable

from damselfly.api.hashring import score


def owner(key: str, nodes: Iterable[str]) -> str | None:
    """The node responsible for ``key``, or None when there are no nodes."""
    best: str | None = None
    best_score = -1
    for node in nodes:
        s = score(key, node)
        if s > best_score or (s == best_score and best is not None and node > best):
            best, best_score = node, s
    return best
