"""A cache directory the peer cannot use: one line at start-up, then a non-zero exit.

In a pod the peer runs as uid 65532 on a volume it did not make: kubelet
creates hostPath directories root-owned, some volumes ignore fsGroup, a mount
can be read-only, an older image may have left root-owned files. The tests
are root, so permissions would not stop them: the peer runs as uid 65532
(setpriv), the read-only case is a tmpfs mounted read-only in a mount
namespace of the peer's own (gone when it exits).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.origin import start_origin
from tests.support.peer import PeerHandle, peer_config, start_peer
from tests.support.ports import free_ports

UID = 65532  # the image's user (Dockerfile, the operator's runAsUser)
AS_PEER_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"]
# As the image runs it: no usable home, a working directory it cannot write.
POD_ENV = {"HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("unshare") is None,
    reason="needs root, setpriv and unshare to run the peer as another user",
)


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory uid 65532 can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="damselfly-storedir-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(world: Path, store: Path) -> Path:
    config = peer_config(store, *free_ports(3))
    path = world / "peer.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def run_peer(world: Path, config: Path, prefix: list[str]) -> tuple[int, str, str]:
    """Run the peer until it exits: its exit code, stderr+stdout and termination log."""
    termination = world / "termination-log"
    termination.write_text("")
    termination.chmod(0o666)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "damselfly.cli", "peer", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={**os.environ, **POD_ENV, "DAMSELFLY_TERMINATION_LOG": str(termination)},
    )
    return result.returncode, result.stderr + result.stdout, termination.read_text()


def root_owned_dir(world: Path) -> Path:
    """What kubelet makes of a hostPath with type DirectoryOrCreate."""
    store = world / "cache"
    store.mkdir(mode=0o755)
    return store


def missing_under_root_owned(world: Path) -> Path:
    parent = world / "var-cache"
    parent.mkdir(mode=0o755)
    return parent / "damselfly"


def stale_root_owned_db(world: Path) -> Path:
    """The directory is the peer's, the database a root-run older image left."""
    store = world / "cache"
    store.mkdir(mode=0o755)
    sqlite3.connect(store / "store.db").close()
    (store / "store.db").chmod(0o644)
    os.chown(store, UID, UID)
    return store


def stale_root_owned_pieces(world: Path) -> Path:
    """A chown of the top directory only (the usual initContainer) misses these."""
    store = world / "cache"
    (store / "data" / "ab").mkdir(parents=True, mode=0o755)
    (store / "data" / "ab" / ("ab" + "0" * 62)).write_bytes(b"x")
    os.chown(store, UID, UID)
    os.chown(store / "data", UID, UID)
    return store


CASES = {
    "root-owned-dir": (root_owned_dir, "cache", ["not writable", "owned by uid 0 gid 0"]),
    "missing-under-root-owned-parent": (
        missing_under_root_owned,
        "var-cache/damselfly",
        ["cannot be created", "var-cache owned by uid 0 gid 0"],
    ),
    "stale-root-owned-store-db": (stale_root_owned_db, "cache/store.db", ["not writable"]),
    "stale-root-owned-piece-dir": (stale_root_owned_pieces, "cache/data/ab", ["not writable"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cache_dir_the_peer_user_cannot_write_is_one_line_naming_path_and_uid(
    world: Path, case: str
) -> None:
    make, named, phrases = CASES[case]
    store = make(world)
    code, output, termination = run_peer(world, write_config(world, store), AS_PEER_USER)
    lines = output.strip().splitlines()
    assert code == 2, output
    assert "Traceback" not in output
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith("damselfly peer: "), line
    assert str(world / named) in line, line
    assert f"uid {UID} gid {UID}" in line, line
    for phrase in [*phrases, f"chown -R {UID}:{UID} {store}", "initContainer", "fsGroup"]:
        assert phrase in line, line
    assert termination == line.removeprefix("damselfly peer: ") + "\n"


def test_a_read_only_cache_mount_is_one_line(world: Path) -> None:
    store = world / "cache"
    store.mkdir()
    config = write_config(world, store)
    # root in a mount namespace of its own: the read-only tmpfs is gone when it exits
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    code, output, termination = run_peer(world, config, [*prefix, script, str(store)])
    assert code == 2, output
    assert "Traceback" not in output
    assert output.strip().splitlines() == [
        f"damselfly peer: cache directory {store} is on a read-only filesystem; the peer "
        "(uid 0 gid 0) must write there: mount a writable volume at storage.dir"
    ]
    assert "read-only" in termination
    assert not os.path.ismount(store)


def test_a_cache_path_that_is_a_file_is_one_line(world: Path) -> None:
    store = world / "cache"
    store.write_text("not a directory\n")
    code, output, _ = run_peer(world, write_config(world, store), [])
    assert code == 2, output
    assert output.strip().splitlines() == [
        f"damselfly peer: cache directory {store} is not a directory (peer runs as uid 0 "
        "gid 0): set storage.dir to a directory"
    ]


def test_the_peer_user_serves_from_a_dir_made_its_own(processes, world: Path) -> None:  # type: ignore[no-untyped-def]
    """After the fix the message names (chown to 65532), the peer runs as 65532 with no
    home and a working directory it cannot write, and caches: miss, then hit."""
    store = root_owned_dir(world)
    os.chown(store, UID, UID)
    www = world / "www"
    (www / "files").mkdir(parents=True)
    (www / "files" / "obj.bin").write_bytes(os.urandom(5 << 20))
    origin = start_origin(processes, www)
    peer: PeerHandle = start_peer(
        processes,
        world,
        config=peer_config(store, *free_ports(3), [{"regex": r"/files/"}]),
        command_prefix=AS_PEER_USER,
        env=POD_ENV,
        cwd=Path("/"),
    )
    url = origin.url("files/obj.bin")
    for expected in ("miss", "hit"):
        result = subprocess.run(
            ["curl", "-sS", "-x", peer.proxy_url, "-D", "-", "-o", "/dev/null", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert f"x-damselfly-cache: {expected}" in result.stdout.lower()
    assert {p.stat().st_uid for p in store.rglob("*")} == {UID}
    assert origin.hits("/files/obj.bin") >= 1
