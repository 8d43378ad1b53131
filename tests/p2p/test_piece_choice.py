"""Which piece a child fetches next, and from whom: pure selection."""

from __future__ import annotations

import random

from damselfly.api import scheduler as api
from damselfly.peer.transfer.swarm import (
    MAX_REQUESTS_PER_PARENT,
    PIECE_WINDOW,
    ParentLink,
    choose_piece,
)


def link(host: str, pieces: list[int], seed: bool = False, in_flight: int = 0) -> ParentLink:
    parent = api.Parent(host_id=host, ip="127.0.0.1", upload_port=1, seed=seed)
    return ParentLink(parent, pieces={n: "d" for n in pieces}, in_flight=in_flight)


def test_the_lowest_wanted_piece_comes_first_for_streaming_readers() -> None:
    links = [link("a", [0, 1, 2]), link("b", [2])]
    assert choose_piece([0, 1, 2], links, random.Random(1))[0] == 0


def test_otherwise_the_rarest_piece() -> None:
    # Nobody holds piece 0 yet; piece 2 is held by one parent, piece 1 by two.
    links = [link("a", [1, 2]), link("b", [1])]
    for seed in range(20):
        number, holder = choose_piece([0, 1, 2], links, random.Random(seed))
        assert number == 2
        assert holder.parent.host_id == "a"


def test_a_peer_holder_is_preferred_to_the_seed() -> None:
    links = [link("seed", [0], seed=True), link("peer", [0], in_flight=2)]
    assert choose_piece([0], links, random.Random(0))[1].parent.host_id == "peer"


def test_a_child_keeps_one_request_at_a_time_to_a_seed() -> None:
    seed = link("seed", [0, 1], seed=True, in_flight=1)
    assert choose_piece([0, 1], [seed], random.Random(0)) is None
    busy = link("busy", [0], in_flight=MAX_REQUESTS_PER_PARENT)
    assert choose_piece([0], [busy], random.Random(0)) is None


def test_nothing_to_fetch_when_no_parent_holds_a_wanted_piece() -> None:
    assert choose_piece([3], [link("a", [0, 1])], random.Random(0)) is None


def test_a_reader_with_only_a_seed_gets_pieces_near_its_position() -> None:
    """All pieces equally rare (one seed): the choice stays within the window ahead."""
    seed = link("seed", list(range(256)), seed=True)
    for value in range(50):
        number, _ = choose_piece(list(range(256)), [seed], random.Random(value))
        assert number < PIECE_WINDOW


def test_once_the_readers_next_piece_is_in_flight_the_rest_go_rarest_first() -> None:
    # Piece 0 is being fetched; 1 is held by both parents, 2 only by "a".
    links = [link("a", [1, 2]), link("b", [1])]
    for seed in range(20):
        assert choose_piece([1, 2], links, random.Random(seed), reader_next=0)[0] == 2
    # With 1 the reader's next piece (nothing lower in flight), 1 goes first.
    assert choose_piece([1, 2], links, random.Random(0), reader_next=1)[0] == 1
