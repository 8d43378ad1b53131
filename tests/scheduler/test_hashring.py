"""Rendezvous hashing: stable, balanced, minimal movement, usable as fail-over order."""

from __future__ import annotations

from collections import Counter

from damselfly.api import hashring
from tests.support.hashring import owner

KEYS = [f"task-{i}" for i in range(3000)]


def test_owner_is_first_of_rank_and_order_independent() -> None:
    nodes = ["a:1", "b:2", "c:3", "d:4"]
    for key in KEYS[:200]:
        ranked = hashring.rank(key, nodes)
        assert sorted(ranked) == sorted(nodes)
        assert owner(key, nodes) == ranked[0]
        assert hashring.rank(key, list(reversed(nodes))) == ranked


def test_no_nodes() -> None:
    assert owner("x", []) is None
    assert hashring.rank("x", []) == []


def test_duplicates_collapse() -> None:
    assert hashring.rank("x", ["a", "a", "b"]) in (["a", "b"], ["b", "a"])


def test_balanced() -> None:
    nodes = [f"seed-{i}" for i in range(5)]
    counts = Counter(owner(k, nodes) for k in KEYS)
    expected = len(KEYS) / len(nodes)
    assert all(abs(c - expected) < expected * 0.15 for c in counts.values()), counts


def test_adding_a_node_moves_only_keys_to_it() -> None:
    before = [f"seed-{i}" for i in range(4)]
    after = [*before, "seed-new"]
    moved = [k for k in KEYS if owner(k, before) != owner(k, after)]
    # Every moved key moved to the new node, and about 1/5 of the keys moved.
    assert all(owner(k, after) == "seed-new" for k in moved)
    assert abs(len(moved) / len(KEYS) - 1 / 5) < 0.04


def test_removing_a_node_moves_only_its_keys_to_their_second_choice() -> None:
    nodes = [f"s{i}" for i in range(4)]
    for key in KEYS[:500]:
        ranked = hashring.rank(key, nodes)
        remaining = [n for n in nodes if n != ranked[0]]
        assert owner(key, remaining) == ranked[1]
        other = next(n for n in nodes if n != ranked[0])
        survivors = [n for n in nodes if n != other]
        assert owner(key, survivors) == ranked[0]
