"""Is the cache directory usable? Checked once at start-up, before anything is opened.

In a pod the peer runs as a non-root user (uid 65532) on a volume it did not
create: a hostPath that kubelet made root-owned, a PVC whose driver ignores
fsGroup, a read-only mount, a cache left root-owned by an older image. Each
of those would otherwise surface as a traceback from deep inside the store,
or later, at the first download. Here they become one line naming the path,
the identity the peer runs as and what to change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from damselfly.errors import StoreError

# Files the peer keeps in the cache directory (the store's SQLite database and its
# journal, the effective rules it renders, the disk reserve) and must be able to rewrite.
STATE_FILES = (
    "store.db",
    "store.db-wal",
    "store.db-shm",
    "effective.yaml",
    "effective.tmp",
    "reserve.bin",
)
_PROBE = ".damselfly-write-check"


class StoreUnusable(StoreError):
    """The cache directory cannot be used; the message is one line saying what to fix."""


def identity() -> str:
    """``uid U gid G`` (and supplementary groups, where fsGroup shows up) of this process."""
    uid, gid = os.getuid(), os.getgid()
    text = f"uid {uid} gid {gid}"
    extra = sorted(set(os.getgroups()) - {gid})
    if extra:
        text += " groups " + ",".join(str(group) for group in extra)
    return text


def check_store_dir(root: Path) -> None:
    """Create ``root`` and ``root/data`` if needed and prove both writable, and every
    file and directory already in them usable; StoreUnusable otherwise."""
    data = root / "data"
    for directory in (root, data):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            _probe(directory)
        except OSError as exc:
            raise StoreUnusable(describe(root, directory, exc)) from None
    for name in STATE_FILES:
        _check_entry(root, root / name, os.R_OK | os.W_OK)
    with os.scandir(data) as shards:
        for shard in shards:
            if shard.is_dir(follow_symlinks=False):
                _check_entry(root, Path(shard.path), os.R_OK | os.W_OK | os.X_OK)
                with os.scandir(shard.path) as files:
                    for file in files:
                        _check_entry(root, Path(file.path), os.R_OK | os.W_OK)


def _probe(directory: Path) -> None:
    """Create and remove a file: the one test a read-only mount or ACL cannot fool."""
    probe = directory / _PROBE
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    probe.unlink()


def _check_entry(root: Path, path: Path, mode: int) -> None:
    if not os.path.lexists(path):
        return
    if not os.access(path, mode):
        raise StoreUnusable(describe(root, path, PermissionError(errno.EACCES, "access denied")))


def describe(root: Path, path: Path, exc: OSError) -> str:
    """One line: what is wrong with ``path`` (inside the cache dir ``root``) and the fix."""
    who = identity()
    uid, gid = os.getuid(), os.getgid()
    where = f"cache directory {root}" if path == root else f"{path} (in cache directory {root})"
    if exc.errno == errno.EROFS:
        return (
            f"{where} is on a read-only filesystem; the peer ({who}) must write there: "
            "mount a writable volume at storage.dir"
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where} is not a directory (peer runs as {who}): set storage.dir to a directory"
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on the device (peer runs as {who})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        problem, fix = "is not writable by", "make it writable"
        if not os.path.lexists(path):
            problem, fix = "cannot be created by", "create it writable"
        return (
            f"{where} {problem} the peer ({who}; {_owner(path)}): {fix} for uid {uid}, "
            f"e.g. chown -R {uid}:{gid} {root} in an initContainer, or set the pod's "
            f"securityContext.fsGroup: {gid} on volumes that honour it"
        )
    return f"{where} cannot be used by the peer ({who}): {exc.strerror or exc}"


def _owner(path: Path) -> str:
    """Who owns ``path``, or the nearest existing directory above it."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            info = os.lstat(candidate)
            mode = stat.S_IMODE(info.st_mode)
            prefix = "" if candidate == path else f"{candidate} "
            return f"{prefix}owned by uid {info.st_uid} gid {info.st_gid}, mode {mode:04o}"
    return "owner unknown"
