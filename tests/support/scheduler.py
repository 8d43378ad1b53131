"""Running a real ``damselfly scheduler`` process for tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.metrics import sample, scrape
from tests.support.ports import free_ports
from tests.support.procs import ManagedProcess, http_ok, wait_until


@dataclass
class SchedulerHandle:
    proc: ManagedProcess
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample, 0.0 if absent."""
        return sample(scrape(self.metrics_port), name, **labels)


def start_scheduler(
    processes: Any,
    tmp_path: Path,
    name: str = "scheduler",
    config: dict[str, Any] | None = None,
    ports: tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> SchedulerHandle:
    """Start a scheduler on loopback and wait until it is ready (``env`` adds to its
    environment)."""
    port, metrics_port = ports or tuple(free_ports(2))
    argv = [
        sys.executable,
        "-m",
        "damselfly.cli",
        "--log-level",
        "DEBUG",
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
    ]
    if config is not None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv += ["-c", str(path)]
    proc = processes.start(name, argv, env=env)
    wait_until(http_ok(f"http://127.0.0.1:{port}/readyz"), 30, f"{name} ready", proc=proc)
    return SchedulerHandle(proc, port, metrics_port)
