"""Config validation and the client's address handling (pure parts)."""

from __future__ import annotations

import aiohttp
import pytest

from damselfly.api.schedulerclient import SchedulerClient, normalize_address
from damselfly.config.load import ConfigError
from damselfly.config.scheduler import SchedulerConfig, parse_config


def test_defaults_follow_the_design() -> None:
    limits = SchedulerConfig().limits()
    assert limits.candidate_parents == 4
    assert limits.filter_sample == 15
    assert limits.announce_interval == 5.0
    assert limits.host_ttl == 15.0


def test_durations_and_explicit_ttl() -> None:
    config = parse_config({"announceInterval": "2s", "hostTTL": "1m", "seedTriggerTimeout": 0.5})
    assert config.limits().host_ttl == 60.0
    assert config.seed_trigger_timeout == 0.5


def test_errors_name_the_key_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"candidateParents": 0, "filtrSample": 3}, "sched.yaml")
    text = str(err.value)
    assert "sched.yaml" in text
    assert "candidateParents" in text
    assert "(got 0)" in text
    assert "filtrSample" in text
    with pytest.raises(ConfigError, match="mapping"):
        parse_config([1, 2])


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("10.0.0.1:8002", "http://10.0.0.1:8002"),
        ("http://Sched.Example:8002/", "http://sched.example:8002"),
        ("[::1]:8002", "http://[::1]:8002"),
    ],
)
def test_normalize_address(given: str, normal: str) -> None:
    assert normalize_address(given) == normal


@pytest.mark.parametrize("bad", ["nohost", "ftp://x:1", "host-without-port"])
def test_bad_address_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="scheduler address"):
        normalize_address(bad)


async def test_every_peer_ranks_replicas_the_same_way() -> None:
    async with aiohttp.ClientSession() as session:
        a = SchedulerClient(["s1:8002", "s2:8002", "s3:8002"], session, 1.0)
        b = SchedulerClient(["http://s3:8002", "s1:8002/", "s2:8002", "s1:8002"], session, 1.0)
        assert len(b.addresses) == 3
        for i in range(50):
            assert a.order(f"t{i}") == b.order(f"t{i}")
