"""``damselfly local up`` and ``damselfly get``: the README's main job, end to end."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.origin import Origin, start_origin
from tests.support.procs import wait_until

MiB = 1 << 20


def free_block() -> int:
    """A base port with base..base+32 and base+90..base+92 free on loopback."""
    import socket

    for _ in range(100):
        base = random.randrange(20000, 50000, 100)
        wanted = [*range(base, base + 33), *range(base + 90, base + 93)]
        try:
            socks = []
            for port in wanted:
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free port block")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "damselfly.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / "files" / "weights.bin").write_bytes(os.urandom(9 * MiB))
    return start_origin(processes, root)


def test_local_up_get_rule_edit_and_down(processes, tmp_path: Path, origin: Origin) -> None:  # type: ignore[no-untyped-def]
    base = free_block()
    cluster = {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "P2PCluster",
        "metadata": {"name": "dev"},
        "spec": {
            "image": "damselfly:dev",
            "proxy": {"port": base},
            "scheduler": {"port": base + 32},
        },
    }
    rule = {
        "apiVersion": "damselfly.io/v1alpha1",
        "kind": "ProxyRule",
        "metadata": {"name": "files"},
        "spec": {"clusterRef": {"name": "dev"}, "regex": "/files/"},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    rule_file = tmp_path / "rule.yaml"
    rule_file.write_text(yaml.safe_dump(rule))
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    up = processes.start(
        "local-up",
        [
            sys.executable,
            "-m",
            "damselfly.cli",
            "local",
            "up",
            "--peers",
            "2",
            "-f",
            str(tmp_path / "cluster.yaml"),
            "-f",
            str(rule_file),
        ],
        env=env,
    )
    wait_until(lambda: "Stop:" in up.log_tail(200), 60, "local up to be ready", proc=up)
    assert "peer-1     pid" in up.log_tail(200)
    assert cli("local", "status", env=env).returncode == 0

    url = origin.url("files/weights.bin")
    expected = hashlib.sha256((origin.directory / "files/weights.bin").read_bytes()).hexdigest()
    # Without --proxy, get finds the local cluster's first peer by itself.
    first = cli(
        "get", url, "-O", str(tmp_path / "a.bin"), "--digest", f"sha256:{expected}", env=env
    )
    assert first.returncode == 0, first.stderr
    assert "cache miss (sha256 verified)" in first.stderr
    second = cli(
        "get",
        "--proxy",
        f"http://127.0.0.1:{base + 10}",
        url,
        "-O",
        str(tmp_path / "b.bin"),
        env=env,
    )
    assert second.returncode == 0, second.stderr
    assert hashlib.sha256((tmp_path / "b.bin").read_bytes()).hexdigest() == expected
    sent = sum(r["bytes_sent"] for r in origin.requests("files/weights.bin"))
    assert sent <= 9 * MiB + 16, f"the origin sent {sent} bytes for two peers"

    bad = cli("get", url, "-O", str(tmp_path / "c.bin"), "--digest", "sha256:" + "0" * 64, env=env)
    assert bad.returncode == 1
    assert "expected 000" in bad.stderr
    assert not (tmp_path / "c.bin").exists()
    assert not (tmp_path / "c.bin.part").exists()
    missing = cli("get", origin.url("files/nope.bin"), "-O", str(tmp_path / "d.bin"), env=env)
    assert missing.returncode == 1
    assert "answered 404" in missing.stderr

    # Editing the ProxyRule file reaches the running peers: no longer cached.
    rule["spec"]["regex"] = "/elsewhere/"
    rule_file.write_text(yaml.safe_dump(rule))
    wait_until(lambda: "rules re-rendered" in up.log_tail(200), 20, "rules re-rendered", proc=up)
    wait_until(
        lambda: (
            "cache not cached"
            in cli(
                "get",
                "--proxy",
                f"http://127.0.0.1:{base}",
                url,
                "-O",
                str(tmp_path / "e.bin"),
                env=env,
            ).stderr
        ),
        20,
        "the peers to pass the URL through",
    )

    down = cli("local", "down", env=env)
    assert down.returncode == 0
    up.proc.wait(timeout=30)
    assert up.proc.returncode == 0
    assert cli("local", "status", env=env).returncode == 1
