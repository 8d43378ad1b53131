"""Plain git over smart HTTP through the peer: clone and push pass through untouched.

With ``git config --global http.proxy`` pointing at the node's peer, every git
remote goes through it; the POSTs of the smart protocol (upload-pack,
receive-pack) must be forwarded byte for byte. The server is git's own
``git http-backend`` (tests/support/git_http.py runs it as CGI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peer import start_peer
from tests.support.ports import free_port
from tests.support.procs import http_ok, wait_until


def git(*args: str, cwd: Path | None = None, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture
def git_server(processes, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    repos = tmp_path / "repos"
    repos.mkdir()
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1"}
    git("init", "-q", "--bare", "-b", "main", str(repos / "app.git"), env=env)
    git("config", "http.receivepack", "true", cwd=repos / "app.git", env=env)
    port = free_port()
    proc = processes.start(
        "git-http",
        [sys.executable, "-m", "tests.support.git_http", "--port", str(port), "--root", str(repos)],
        cwd=Path(__file__).resolve().parent.parent.parent,
    )
    base = f"http://127.0.0.1:{port}/app.git"
    wait_until(http_ok(f"{base}/info/refs?service=git-upload-pack"), 15, "git server", proc=proc)
    return base


@pytest.mark.parametrize("protocol", ["0", "2"])
def test_clone_and_push_over_smart_http_through_the_proxy(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    git_server: str,
    protocol: str,
) -> None:
    """A rule matches the server, so GET info/refs reaches the cache path; its answer
    (the refs themselves, under protocol v0) says Cache-Control: no-cache and must
    not be kept. The smart-HTTP POSTs pass through untouched."""
    peer = start_peer(processes, tmp_path, rule_list=[{"regex": "127\\.0\\.0\\.1"}])
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    git("config", "--global", "http.proxy", peer.proxy_url, env=env)
    git("config", "--global", "protocol.version", protocol, env=env)
    work = tmp_path / "work"
    git("clone", "-q", git_server, str(work), env=env)  # an empty repository
    (work / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # a pack of a few MiB
    git("add", "data.bin", cwd=work, env=env)
    git("commit", "-q", "-m", "first", cwd=work, env=env)
    git("push", "-q", "origin", "HEAD:main", cwd=work, env=env)
    again = tmp_path / "again"
    git("clone", "-q", git_server, str(again), env=env)
    assert (again / "data.bin").read_bytes() == (work / "data.bin").read_bytes()
    assert git("log", "--format=%s", cwd=again, env=env).strip() == "first"
    assert peer.metric("damselfly_peer_requests_total", route="passthrough") >= 2
