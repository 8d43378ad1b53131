"""One logging setup for every component.

JSON lines when stderr is not a terminal (log collectors parse them), readable
lines on a terminal. The level comes from ``--log-level`` or
``DAMSELFLY_LOG_LEVEL``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

ENV_LEVEL = "DAMSELFLY_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and
# belongs in the JSON line as a field of its own.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable single lines for a person at a terminal, extras as key=value."""

    def __init__(self, component: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + component + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def resolve_level(cli_level: str | None) -> str:
    """The command-line flag wins over the environment; INFO otherwise."""
    level = (cli_level or os.environ.get(ENV_LEVEL) or "INFO").upper()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return level


def setup_logging(component: str, level: str | None = None, stream: TextIO | None = None) -> None:
    """Install the one handler on the root logger; safe to call more than once."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    is_tty = hasattr(out, "isatty") and out.isatty()
    handler.setFormatter(TextFormatter(component) if is_tty else JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(resolve_level(level))
    # aiohttp's access log duplicates our own request accounting.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
