"""The config package: the transfer tunables and the one config idiom."""

from __future__ import annotations

import pytest

from damselfly.config.load import ConfigError
from damselfly.config.peer import parse_config
from damselfly.config.scheduler import parse_config as parse_scheduler_config


def test_transfer_tunables_default_to_the_measured_values() -> None:
    transfer = parse_config({}).transfer
    assert (transfer.origin_workers, transfer.swarm_workers) == (4, 8)
    assert (transfer.piece_attempts, transfer.reschedule_limit) == (3, 3)
    assert (transfer.requests_per_parent, transfer.requests_per_seed) == (4, 1)
    assert (transfer.piece_window, transfer.parent_refresh, transfer.busy_backoff) == (16, 1, 0.5)


def test_transfer_tunables_are_camel_case_keys_like_the_rest() -> None:
    config = parse_config({"transfer": {"pieceWindow": 32, "busyBackoff": "250ms"}})
    assert config.transfer.piece_window == 32
    assert config.transfer.busy_backoff == 0.25
    with pytest.raises(ConfigError, match=r"transfer\.pieceWindw"):
        parse_config({"transfer": {"pieceWindw": 32}})


def test_slots_per_task_default_by_role() -> None:
    assert parse_config({}).upload.task_slots(seed=True) == 2
    assert parse_config({}).upload.task_slots(seed=False) == 4
    assert parse_config({"upload": {"slotsPerTask": 9}}).upload.task_slots(seed=True) == 9


def test_scheduler_config_reads_the_same_keys_as_before() -> None:
    config = parse_scheduler_config(
        {"candidateParents": 8, "hostTTL": "1m", "seedAttempts": 1, "rescheduleLimit": 2}
    )
    assert config.candidate_parents == 8
    assert config.host_ttl == 60.0
    assert config.seed_attempts == 1
    assert config.limits().reschedule_limit == 2
