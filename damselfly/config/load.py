"""Reading a component's YAML config into its pydantic model, with errors that name keys.

The peer and the scheduler share this, so a bad file reads the same everywhere:
``peer.yaml: invalid config`` then one line per bad key with the value given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from damselfly.errors import InputError, describe_validation

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(InputError):
    """A config that cannot be read or does not validate; the message names every bad key."""


def parse_model(model: type[Model], data: Any, source: str) -> Model:
    """``data`` (parsed YAML) validated as ``model``; None means all defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc, source)) from None


def load_model(model: type[Model], path: str | None) -> Model:
    """The model from a YAML file, or its defaults when ``path`` is None."""
    if path is None:
        return model()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_model(model, data, path)
