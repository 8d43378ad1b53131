"""Kubernetes-style sizes ("100Gi", "500M") and durations ("24h", "90s").

Config files and custom resources use the same notation, so both parse here.
"""

from __future__ import annotations

import re

_SIZE_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: str | int) -> int:
    """Bytes from an int or a quantity string; raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 512Mi, 100Gi, 2T)")
    number, suffix = match.groups()
    return int(float(number) * _SIZE_SUFFIXES[suffix or ""])


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number or a string like "1h30m", "24h", "90s", "7d"."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value} is negative")
        return float(value)
    text = value.strip()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration (examples: 90s, 30m, 24h, 7d, 1h30m)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
