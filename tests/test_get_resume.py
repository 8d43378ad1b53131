"""``damselfly get`` picks up where an interrupted run stopped, and cleans up a failed one.

Each run is the real command with no peer given, so it starts its ephemeral peer
in-process (the store under a HOME of the test's own) — the path a user without a
cluster takes. A run is interrupted the hard way, ``kill -9``; the origin is a real
HTTP server that sends slowly (``@rate``) or breaks off (``@cut``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.origin import Origin, start_origin

MiB = 1 << 20
SIZE = 32 * MiB + 4321  # nine pieces of 4 MiB, fetched four at a time by the peer
RATE = 4 * MiB  # bytes per second and request: a batch of pieces lands every second


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    (tmp_path / "www" / "files").mkdir(parents=True)
    return start_origin(processes, tmp_path / "www")


def env_for(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "DAMSELFLY_PROXY": ""}


def command(url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "damselfly.cli", "get", url, "-O", str(out), *extra]


def get(tmp_path: Path, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(url, out, *extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env_for(tmp_path),
    )


def started(tmp_path: Path, url: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """A get running in the background, once its .part holds a first batch of pieces."""
    part = out.with_name(out.name + ".part")
    proc = subprocess.Popen(
        command(url, out, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.stat().st_size >= MiB:
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"no partial download to interrupt (exit {proc.returncode})")


def killed_halfway(tmp_path: Path, url: str, out: Path) -> int:
    """A get killed -9 midway; the bytes its .part held."""
    proc = started(tmp_path, url, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    held = out.with_name(out.name + ".part").stat().st_size
    assert 0 < held < SIZE
    return held


def put(origin: Origin, data: bytes) -> str:
    """The object at the origin, replaced whole (a new file: new mtime, new ETag)."""
    staged = origin.directory / "files" / "model.bin.new"
    staged.write_bytes(data)
    os.replace(staged, origin.directory / "files" / "model.bin")
    return hashlib.sha256(data).hexdigest()


def test_an_interrupted_get_resumes_from_its_part_file(origin: Origin, tmp_path: Path) -> None:
    digest = put(origin, os.urandom(SIZE))
    url = f"{origin.base_url}/@rate={RATE}/files/model.bin"
    out = tmp_path / "model.bin"
    held = killed_halfway(tmp_path, url, out)

    again = get(tmp_path, url, out, "--digest", f"sha256:{digest}")
    assert again.returncode == 0, again.stderr
    assert f"resumed at byte {held}" in again.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert not out.with_name("model.bin.part").exists()
    assert not out.with_name("model.bin.part.json").exists()


def test_an_object_changed_since_the_interruption_is_fetched_whole(
    origin: Origin, tmp_path: Path
) -> None:
    put(origin, os.urandom(SIZE))
    url = f"{origin.base_url}/@rate={RATE}/files/model.bin"
    out = tmp_path / "model.bin"
    killed_halfway(tmp_path, url, out)
    time.sleep(1.1)  # a Last-Modified of its own second
    digest = put(origin, os.urandom(SIZE))

    again = get(tmp_path, url, out, "--digest", f"sha256:{digest}")
    assert again.returncode == 0, again.stderr
    assert "resumed" not in again.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_a_get_that_breaks_off_removes_its_part_unless_asked_to_keep_it(
    processes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    origin: Origin,
) -> None:
    """The origin goes away midway: the peer cannot finish, the client is cut."""
    out = tmp_path / "model.bin"
    part = out.with_name("model.bin.part")
    for keep in (False, True):
        put(origin, os.urandom(SIZE))
        url = f"{origin.base_url}/@rate={RATE}/files/model.bin"
        proc = started(tmp_path, url, out, *(["--keep-partial"] if keep else []))
        origin.process.kill()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1, stderr
        assert "broke off" in stderr
        assert not out.exists()
        if keep:
            assert "kept, the next run resumes it" in stderr
            assert 0 < part.stat().st_size < SIZE
        else:
            assert not part.exists()
            assert not part.with_name("model.bin.part.json").exists()
            origin = start_origin(processes, origin.directory, name="origin-2")
