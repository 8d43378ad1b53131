"""Reading one sample from a component's Prometheus /metrics endpoint."""

from __future__ import annotations

import urllib.request


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` in exposition ``text``; 0.0 if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    key = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        found, _, value = line.rpartition(" ")
        if found == key:
            return float(value)
    return 0.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())
