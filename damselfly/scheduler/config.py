"""The scheduler's optional YAML config, validated by pydantic.

Keys are camelCase like the rest of Damselfly's config. Durations accept
numbers (seconds) or strings such as ``"5s"``/``"2m"``. An error names the bad
key and value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from damselfly.quantity import parse_duration
from damselfly.scheduler.resources import Limits

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message says where."""


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


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scheduler config"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> SchedulerConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return SchedulerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_config(path: str | None) -> SchedulerConfig:
    """The config from a YAML file, or the defaults when ``path`` is None."""
    if path is None:
        return SchedulerConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, path)
