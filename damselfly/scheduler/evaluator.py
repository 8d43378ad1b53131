"""Parent selection: pure filtering and scoring of candidate parents.

Nothing here touches the scheduler's state or the clock; callers pass
snapshots (``Candidate``) and lookups, so every rule is testable on its own.

The rules (design §5): exclude the asking host, block-listed and failed
parents, bad parents (latest piece cost above mean + 3 sigma of that host's earlier
costs), parents with no room for another child of the task, and choices that
would form a cycle; rank the rest by finished pieces,
free upload slots, success record and host type; return a few.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field

# Score weights; they sum to 1 so a score is in [0, 1].
WEIGHT_FINISHED = 0.40
WEIGHT_FREE_UPLOAD = 0.25
WEIGHT_SUCCESS = 0.20
WEIGHT_HOST_TYPE = 0.15

# Fewer samples than this say nothing about a host's normal piece cost.
MIN_COST_SAMPLES = 5
# sigma is floored at this fraction of the mean, so a host with identical costs is
# not declared bad for one piece a hair slower than the rest.
MIN_RELATIVE_SIGMA = 0.1
# How far up the parent graph the cycle check walks before giving up (and
# treating the candidate as unsafe): bounds the work on pathological graphs.
MAX_CYCLE_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the evaluator needs to know about one possible parent."""

    host_id: str
    seed: bool
    complete: bool
    finished_pieces: int
    upload_slots_total: int
    upload_slots_free: int
    upload_successes: int
    upload_failures: int
    bad: bool = False  # is_bad_parent of the host's piece costs (cached by the caller)


def is_bad_parent(costs: Sequence[float]) -> bool:
    """True when the latest piece cost is above mean + 3 sigma of the host's earlier costs.

    Why: a parent whose newest piece took abnormally long has likely become
    slow (congested link, busy disk); children should move elsewhere.
    """
    if len(costs) <= MIN_COST_SAMPLES:
        return False
    *earlier, last = costs
    n = len(earlier)
    mean = math.fsum(earlier) / n
    variance = math.fsum((c - mean) ** 2 for c in earlier) / n
    sigma = max(math.sqrt(variance), mean * MIN_RELATIVE_SIGMA)
    return last > mean + 3 * sigma


def is_full(children: int, slots_per_task: int | None) -> bool:
    """A parent that limits uploads per task has no room for one more child.

    Why: a seed serving every child at once gives each a sliver of its upload
    and spends most of it on peers that pass nothing on. With its children
    capped, the rest of the swarm is fed by those children, as a tree.
    """
    return slots_per_task is not None and children >= slots_per_task


def success_rate(successes: int, failures: int) -> float:
    """Laplace-smoothed success rate: an unknown host starts at 0.5, not 0 or 1."""
    return (successes + 1) / (successes + failures + 2)


def host_type_score(candidate: Candidate) -> float:
    """A seed still fetching is the swarm's source: best. A seed that is done is
    worst, so ordinary peers carry the load and seeds keep their bandwidth for
    tasks nobody else holds yet.
    """
    if not candidate.seed:
        return 0.5
    return 0.25 if candidate.complete else 1.0


def score(candidate: Candidate, total_pieces: int | None) -> float:
    """A parent's desirability in [0, 1]; higher is better."""
    if candidate.complete:
        finished = 1.0
    elif total_pieces:
        finished = min(candidate.finished_pieces / total_pieces, 1.0)
    else:
        # Unknown size: saturate so that a few pieces already count for a lot.
        finished = candidate.finished_pieces / (candidate.finished_pieces + 8)
    if candidate.upload_slots_total > 0:
        free = max(candidate.upload_slots_free, 0) / candidate.upload_slots_total
    else:
        free = 0.5  # not announced: neither favoured nor ruled out
    success = success_rate(candidate.upload_successes, candidate.upload_failures)
    host_type = host_type_score(candidate)
    return (
        WEIGHT_FINISHED * finished
        + WEIGHT_FREE_UPLOAD * free
        + WEIGHT_SUCCESS * success
        + WEIGHT_HOST_TYPE * host_type
    )


@dataclass(slots=True)
class CycleMemo:
    """What one child's cycle checks learned: nodes that do / do not reach the child.

    Shared across the candidates of one scheduling call, so the parent graph
    is walked about once instead of once per candidate.
    """

    clear: set[str] = field(default_factory=set)
    reaches: set[str] = field(default_factory=set)
    # Nodes the walks may still visit in this scheduling call. When it runs
    # out, checks fall back to the direct edge only ("does the candidate
    # download from the child itself?"), so one schedule's cost stays bounded
    # in a large, densely connected swarm.
    budget: int = 2000


def would_cycle(
    child: str,
    candidate: str,
    parents_of: Callable[[str], Set[str]],
    max_depth: int = MAX_CYCLE_DEPTH,
    memo: CycleMemo | None = None,
) -> bool:
    """True if ``candidate`` downloads (directly or transitively) from ``child``.

    Making such a candidate the child's parent would close a loop in which no
    one has the pieces. Unknown depth beyond ``max_depth`` counts as a cycle;
    an exhausted ``memo.budget`` leaves only the direct check.
    """
    if candidate == child:
        return True
    memo = memo if memo is not None else CycleMemo()
    if candidate in memo.clear:
        return False
    if candidate in memo.reaches:
        return True
    if memo.budget <= 0:
        return child in parents_of(candidate)
    # via[n] = the node whose parent n is: the way back to the candidate.
    via: dict[str, str | None] = {candidate: None}
    frontier = [candidate]
    for _ in range(max_depth):
        if not frontier:
            memo.clear.update(via)
            return False
        next_frontier: list[str] = []
        for node in frontier:
            for parent in parents_of(node):
                if parent == child or parent in memo.reaches:
                    step: str | None = node
                    while step is not None:
                        memo.reaches.add(step)
                        step = via[step]
                    return True
                if parent not in via and parent not in memo.clear:
                    via[parent] = node
                    next_frontier.append(parent)
        memo.budget -= len(frontier)
        frontier = next_frontier
    if frontier:
        return True
    memo.clear.update(via)
    return False


def lazy_shuffle(items: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Yield ``items`` in random order, paying only for the ones consumed.

    A Fisher-Yates shuffle run one step per item taken: sampling 15 of
    1,000 peers costs 15 steps, not 1,000.
    """
    pool = list(items)
    n = len(pool)
    for i in range(n):
        j = rng.randrange(i, n)
        pool[i], pool[j] = pool[j], pool[i]
        yield pool[i]


def filter_candidates(
    child: str,
    peer_ids: Iterable[str],
    candidate_of: Callable[[str], Candidate | None],
    excluded: Set[str],
    parents_of: Callable[[str], Set[str]],
    sample: int,
    max_examined: int | None = None,
) -> list[Candidate]:
    """Up to ``sample`` usable parents for ``child``, taken in the order of ``peer_ids``.

    ``candidate_of`` returns None for a peer that cannot serve (host gone,
    task failed). ``excluded`` holds the child's block-listed and failed
    parents. Callers pass a shuffled ``peer_ids`` to sample fairly. At most
    ``max_examined`` peers are looked at, which bounds the work of one
    schedule however large the swarm. Cheap checks run first.
    """
    chosen: list[Candidate] = []
    memo = CycleMemo()
    examined = 0
    for host_id in peer_ids:
        if len(chosen) >= sample or (max_examined is not None and examined >= max_examined):
            break
        examined += 1
        if host_id == child or host_id in excluded:
            continue
        candidate = candidate_of(host_id)
        if candidate is None or candidate.bad:
            continue
        if would_cycle(child, host_id, parents_of, memo=memo):
            continue
        chosen.append(candidate)
    return chosen


def rank(candidates: Iterable[Candidate], total_pieces: int | None, limit: int) -> list[Candidate]:
    """The best ``limit`` candidates, best first (ties: more pieces, then host id)."""
    scored = sorted(
        candidates,
        key=lambda c: (-score(c, total_pieces), -c.finished_pieces, c.host_id),
    )
    return scored[:limit]


def seed_order(
    task_id: str,
    seeds: Sequence[str],
    excluded: Set[str],
    ranker: Callable[[str, Sequence[str]], list[str]],
) -> list[str]:
    """Seeds to try for ``task_id``: its owner on the ring first, excluded ones dropped."""
    return [s for s in ranker(task_id, seeds) if s not in excluded]


def parents_index(edges: Mapping[str, Set[str]]) -> Callable[[str], Set[str]]:
    """A ``parents_of`` lookup over a plain mapping (missing nodes have no parents)."""
    empty: frozenset[str] = frozenset()

    def parents_of(node: str) -> Set[str]:
        return edges.get(node, empty)

    return parents_of
