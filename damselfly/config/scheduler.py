"""The scheduler's optional YAML config, validated by pydantic.

Keys are camelCase like the rest of Damselfly's config (snake_case fields with
camelCase aliases, as in the peer's). Durations accept numbers (seconds) or
strings such as ``"5s"``/``"2m"``. An error names the bad key and value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from damselfly.config.load import load_model, parse_model
from damselfly.config.units import parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


@dataclass(slots=True)
class Limits:
    """Tunables of scheduling and expiry, as the scheduler's state applies them."""

    candidate_parents: int = 4
    filter_sample: int = 15
    max_examined: int = 120  # peers looked at per schedule, bounding its cost
    announce_interval: float = 5.0
    host_ttl: float = 15.0
    reschedule_limit: int = 5


class SchedulerConfig(BaseModel):
    """Scheduling and expiry tunables; defaults follow design §5."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    candidate_parents: int = Field(default=4, ge=1, le=64)
    filter_sample: int = Field(default=15, ge=1, le=1000)
    announce_interval: Seconds = 5.0
    host_ttl: Seconds | None = Field(
        default=None,
        alias="hostTTL",
        description="Hosts silent this long are dropped (default 3 intervals).",
    )
    seed_trigger_timeout: Seconds = 2.0
    reschedule_limit: int = Field(default=5, ge=0, le=1000)
    seed_attempts: int = Field(
        default=3,
        ge=1,
        le=32,
        description="Seeds tried for one schedule before the peer goes back to source: "
        "each failed trigger costs up to seedTriggerTimeout while the child waits.",
    )

    def limits(self) -> Limits:
        ttl = self.host_ttl if self.host_ttl is not None else 3 * self.announce_interval
        return Limits(
            candidate_parents=self.candidate_parents,
            filter_sample=max(self.filter_sample, self.candidate_parents),
            max_examined=8 * max(self.filter_sample, self.candidate_parents),
            announce_interval=self.announce_interval,
            host_ttl=ttl,
            reschedule_limit=self.reschedule_limit,
        )


def parse_config(data: Any, source: str = "config") -> SchedulerConfig:
    return parse_model(SchedulerConfig, data, source)


def load_config(path: str | None) -> SchedulerConfig:
    """The config from a YAML file, or the defaults when ``path`` is None."""
    return load_model(SchedulerConfig, path)
