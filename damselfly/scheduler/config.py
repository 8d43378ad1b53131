"""The scheduler's optional YAML config, validated by pydantic.

Keys are camelCase like the rest of Damselfly's config. Durations accept
numbers (seconds) or strings such as ``"5s"``/``"2m"``. An error names the bad
key and value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from damselfly.configfile import load_model, parse_model
from damselfly.quantity import parse_duration
from damselfly.scheduler.resources import Limits

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class SchedulerConfig(BaseModel):
    """Scheduling and expiry tunables; defaults follow design §5."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=None)

    candidateParents: int = Field(default=4, ge=1, le=64)
    filterSample: int = Field(default=15, ge=1, le=1000)
    announceInterval: Seconds = 5.0
    hostTTL: Seconds | None = Field(
        default=None, description="Hosts silent this long are dropped (default 3 intervals)."
    )
    seedTriggerTimeout: Seconds = 2.0
    rescheduleLimit: int = Field(default=5, ge=0, le=1000)

    def limits(self) -> Limits:
        ttl = self.hostTTL if self.hostTTL is not None else 3 * self.announceInterval
        return Limits(
            candidate_parents=self.candidateParents,
            filter_sample=max(self.filterSample, self.candidateParents),
            max_examined=8 * max(self.filterSample, self.candidateParents),
            announce_interval=self.announceInterval,
            host_ttl=ttl,
            reschedule_limit=self.rescheduleLimit,
        )


def parse_config(data: Any, source: str = "config") -> SchedulerConfig:
    return parse_model(SchedulerConfig, data, source)


def load_config(path: str | None) -> SchedulerConfig:
    """The config from a YAML file, or the defaults when ``path`` is None."""
    return load_model(SchedulerConfig, path)
