"""Running a real ``damselfly peer`` process for tests."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.metrics import sample, scrape
from tests.support.ports import free_ports
from tests.support.procs import ManagedProcess, http_ok, wait_until


@dataclass
class PeerHandle:
    proc: ManagedProcess
    config_path: Path
    store_dir: Path
    proxy_port: int
    metrics_port: int
    host: str = "127.0.0.1"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"

    def metrics_text(self) -> str:
        return scrape(self.metrics_port)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample, 0.0 if absent."""
        return sample(self.metrics_text(), name, **labels)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/status", timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result


def peer_config(
    store_dir: Path,
    proxy_port: int,
    metrics_port: int,
    upload_port: int,
    rule_list: list[dict[str, Any]] | None = None,
    host: str = "127.0.0.1",
    **overrides: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "proxy": {"host": host, "port": proxy_port},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "upload": {"host": host, "port": upload_port},
        "storage": {"dir": str(store_dir), "quota": "2Gi"},
        "rules": {"rules": rule_list or []},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def start_peer(
    processes: Any,
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    name: str = "peer",
    rule_list: list[dict[str, Any]] | None = None,
    host: str = "127.0.0.1",
    command_prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    **overrides: Any,
) -> PeerHandle:
    """Start a peer and wait until its proxy and metrics endpoints answer.

    ``command_prefix`` goes before the command (e.g. setpriv, to run as another user);
    ``env`` adds to the environment, ``cwd`` is the working directory.
    """
    proxy_port, metrics_port, upload_port = free_ports(3)
    store_dir = tmp_path / f"{name}-store"
    if config is None:
        config = peer_config(
            store_dir, proxy_port, metrics_port, upload_port, rule_list, host=host, **overrides
        )
    else:
        proxy_port = config["proxy"]["port"]
        metrics_port = config["metrics"]["port"]
        store_dir = Path(config["storage"]["dir"])
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = processes.start(
        name,
        [
            *command_prefix,
            sys.executable,
            "-m",
            "damselfly.cli",
            "--log-level",
            "DEBUG",
            "peer",
            "-c",
            str(config_path),
        ],
        env=env,
        cwd=cwd,
    )
    wait_until(http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 30, f"{name} ready", proc=proc)
    return PeerHandle(proc, config_path, store_dir, proxy_port, metrics_port, host=host)
