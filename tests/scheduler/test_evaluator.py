"""The pure parent rules: bad parents, scoring, cycles, filtering and sampling."""

from __future__ import annotations

import random

from damselfly.api import hashring
from damselfly.scheduler import evaluator
from damselfly.scheduler.evaluator import Candidate


def cand(host_id: str, **kw: object) -> Candidate:
    fields: dict[str, object] = {
        "host_id": host_id,
        "seed": False,
        "complete": False,
        "finished_pieces": 0,
        "upload_slots_total": 4,
        "upload_slots_free": 4,
        "upload_successes": 0,
        "upload_failures": 0,
        "bad": False,
    }
    fields.update(kw)
    return Candidate(**fields)  # type: ignore[arg-type]


def test_bad_parent_needs_enough_samples() -> None:
    assert not evaluator.is_bad_parent([])
    assert not evaluator.is_bad_parent([10, 10, 10, 10, 1000])


def test_bad_parent_above_mean_plus_three_sigma() -> None:
    normal = [100.0, 110.0, 90.0, 105.0, 95.0, 100.0, 102.0, 98.0]
    assert not evaluator.is_bad_parent([*normal, 120.0])
    assert evaluator.is_bad_parent([*normal, 200.0])


def test_identical_costs_do_not_make_a_slightly_slower_piece_bad() -> None:
    costs = [50.0] * 10
    assert not evaluator.is_bad_parent([*costs, 55.0])
    assert evaluator.is_bad_parent([*costs, 80.0])


def test_success_rate_is_smoothed() -> None:
    assert evaluator.success_rate(0, 0) == 0.5
    assert evaluator.success_rate(9, 0) > evaluator.success_rate(9, 1)


def test_more_pieces_free_slots_and_success_score_higher() -> None:
    base = cand("a", finished_pieces=5)
    assert evaluator.score(cand("b", finished_pieces=9), 10) > evaluator.score(base, 10)
    assert evaluator.score(cand("b", finished_pieces=5, upload_slots_free=0), 10) < (
        evaluator.score(base, 10)
    )
    assert evaluator.score(cand("b", finished_pieces=5, upload_failures=5), 10) < (
        evaluator.score(base, 10)
    )
    assert evaluator.score(cand("b", finished_pieces=5, upload_successes=5), 10) > (
        evaluator.score(base, 10)
    )


def test_complete_peer_preferred_to_complete_seed() -> None:
    assert evaluator.score(cand("p", complete=True), 10) > evaluator.score(
        cand("s", complete=True, seed=True), 10
    )


def test_fetching_seed_preferred_to_fetching_peer() -> None:
    assert evaluator.score(cand("s", seed=True, finished_pieces=2), 10) > evaluator.score(
        cand("p", finished_pieces=2), 10
    )


def test_complete_counts_as_all_pieces_and_unknown_size_saturates() -> None:
    assert evaluator.score(cand("a", complete=True), None) == evaluator.score(
        cand("a", finished_pieces=10), 10
    )
    assert evaluator.score(cand("a", finished_pieces=100), None) > evaluator.score(
        cand("a", finished_pieces=1), None
    )


def test_would_cycle_direct_and_transitive() -> None:
    edges = {"b": {"a"}, "c": {"b"}, "d": {"seed"}}
    parents_of = evaluator.parents_index(edges)
    assert evaluator.would_cycle("a", "b", parents_of)  # b downloads from a
    assert evaluator.would_cycle("a", "c", parents_of)  # c <- b <- a
    assert not evaluator.would_cycle("a", "d", parents_of)
    assert not evaluator.would_cycle("a", "seed", parents_of)
    assert evaluator.would_cycle("a", "a", parents_of)


def test_would_cycle_terminates_on_existing_loops_and_depth() -> None:
    loop = evaluator.parents_index({"x": {"y"}, "y": {"x"}})
    assert not evaluator.would_cycle("a", "x", loop)
    chain = evaluator.parents_index({f"n{i}": {f"n{i + 1}"} for i in range(200)})
    assert evaluator.would_cycle("a", "n0", chain, max_depth=10)  # unknown = unsafe
    assert not evaluator.would_cycle("a", "n150", chain, max_depth=100)


def test_filter_excludes_self_blocked_failed_bad_and_cycles() -> None:
    pool = {
        "me": cand("me", finished_pieces=9),
        "blocked": cand("blocked", finished_pieces=9),
        "gone": None,
        "slow": cand("slow", finished_pieces=9, bad=True),
        "mychild": cand("mychild", finished_pieces=9),
        "good": cand("good", finished_pieces=3),
    }
    chosen = evaluator.filter_candidates(
        "me",
        list(pool),
        pool.get,
        {"blocked"},
        evaluator.parents_index({"mychild": {"me"}}),
        sample=15,
    )
    assert [c.host_id for c in chosen] == ["good"]


def test_filter_stops_at_sample() -> None:
    pool = {f"p{i}": cand(f"p{i}") for i in range(100)}
    chosen = evaluator.filter_candidates(
        "me", list(pool), pool.get, set(), evaluator.parents_index({}), sample=15
    )
    assert len(chosen) == 15


def test_filter_examines_at_most_max_examined() -> None:
    pool = {f"p{i}": cand(f"p{i}") for i in range(100)}
    blocked = {f"p{i}" for i in range(50)}
    chosen = evaluator.filter_candidates(
        "me",
        list(pool),
        pool.get,
        blocked,
        evaluator.parents_index({}),
        sample=15,
        max_examined=60,
    )
    assert [c.host_id for c in chosen] == [f"p{i}" for i in range(50, 60)]


def test_rank_best_first_and_bounded() -> None:
    cands = [cand(f"p{i}", finished_pieces=i) for i in range(10)]
    ranked = evaluator.rank(cands, 10, limit=4)
    assert [c.host_id for c in ranked] == ["p9", "p8", "p7", "p6"]


def test_lazy_shuffle_is_a_permutation_and_lazy() -> None:
    items = [str(i) for i in range(50)]
    rng = random.Random(1)
    assert sorted(evaluator.lazy_shuffle(items, rng), key=int) == items
    gen = evaluator.lazy_shuffle(items, random.Random(2))
    first = [next(gen) for _ in range(5)]
    assert len(set(first)) == 5
    assert items == [str(i) for i in range(50)]  # the input is not modified


def test_seed_order_owner_first_minus_excluded() -> None:
    seeds = ["s1", "s2", "s3"]
    ranked = hashring.rank("t", seeds)
    assert evaluator.seed_order("t", seeds, set(), hashring.rank) == ranked
    assert evaluator.seed_order("t", seeds, {ranked[0]}, hashring.rank) == ranked[1:]


def test_would_cycle_memo_gives_the_same_answers() -> None:
    rng = random.Random(5)
    nodes = [f"n{i}" for i in range(60)]
    # A random DAG (edges only to lower indices) plus the child "c" somewhere in it.
    edges: dict[str, set[str]] = {
        n: {nodes[j] for j in rng.sample(range(i), min(i, 2))} for i, n in enumerate(nodes)
    }
    edges["n30"].add("c")
    parents_of = evaluator.parents_index(edges)
    memo = evaluator.CycleMemo()
    answers = {}
    for n in rng.sample(nodes, len(nodes)):
        answers[n] = evaluator.would_cycle("c", n, parents_of, memo=memo)
        assert answers[n] == evaluator.would_cycle("c", n, parents_of)
    assert answers["n30"]
    assert "n30" in memo.reaches
    assert not memo.clear & memo.reaches


def test_exhausted_budget_still_rejects_direct_children() -> None:
    parents_of = evaluator.parents_index({"b": {"a"}, "c": {"b"}})
    memo = evaluator.CycleMemo(budget=0)
    assert evaluator.would_cycle("a", "b", parents_of, memo=memo)  # direct: always caught
    assert not evaluator.would_cycle("a", "c", parents_of, memo=memo)  # transitive: not walked
    assert evaluator.would_cycle("a", "c", parents_of, memo=evaluator.CycleMemo())


def test_is_full_only_with_a_per_task_limit() -> None:
    assert not evaluator.is_full(50, None)
    assert not evaluator.is_full(1, 2)
    assert evaluator.is_full(2, 2)
