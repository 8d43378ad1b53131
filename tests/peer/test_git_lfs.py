"""Real git + git-lfs through the peer against a real LFS server (giftless + moto S3).

Every batch call signs fresh S3 URLs, so only query filtering plus content
addressing by oid lets the second clone come from the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.lfs_rig import LfsRepo, LfsServer, MakeLfsRepo
from tests.support.peer import start_peer

pytestmark = pytest.mark.lfs


def test_second_clone_is_served_entirely_from_the_cache(
    lfs_repo: LfsRepo,
    lfs_server: LfsServer,
    processes,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    peer = start_peer(
        processes, tmp_path, rule_list=[{"regex": "^" + re.escape(lfs_server.moto_url) + "/"}]
    )
    proxied = {"http.proxy": peer.proxy_url}

    first = lfs_repo.clone(tmp_path / "one", config=proxied)
    lfs_repo.verify(first)
    gets_after_first = lfs_server.count_store_gets(lfs_repo.oids)
    assert gets_after_first >= len(lfs_repo.files)
    misses = peer.metric("damselfly_peer_cache_lookups_total", result="miss")
    assert misses == len(lfs_repo.files)

    second = lfs_repo.clone(tmp_path / "two", config=proxied)
    lfs_repo.verify(second)
    assert lfs_server.count_store_gets(lfs_repo.oids) == gets_after_first, "store was hit again"
    assert peer.metric("damselfly_peer_cache_lookups_total", result="hit") == len(lfs_repo.files)
    # The batch API calls (POST) went through untouched, for both clones.
    assert peer.metric("damselfly_peer_requests_total", route="passthrough") >= 2


def test_an_object_from_another_repo_with_the_same_oid_is_one_entry(
    make_lfs_repo: MakeLfsRepo,
    lfs_server: LfsServer,
    processes,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Content addressing: the oid is the identity, whatever the URL path around it."""
    repo = make_lfs_repo(sizes=(3 * 1024 * 1024,))
    peer = start_peer(
        processes, tmp_path, rule_list=[{"regex": "^" + re.escape(lfs_server.moto_url) + "/"}]
    )
    clone = repo.clone(tmp_path / "one", config={"http.proxy": peer.proxy_url})
    repo.verify(clone)
    oid = repo.oids[0]
    # The same object under a different key (another repo's path) is a hit.
    import subprocess

    other_url = f"{lfs_server.moto_url}/{lfs_server.bucket}/someone/else/{oid}?X-Amz-Signature=x"
    result = subprocess.run(
        ["curl", "-sS", "-x", peer.proxy_url, "-D", "-", "-o", str(tmp_path / "o.bin"), other_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "X-Damselfly-Cache: hit" in result.stdout
    assert (tmp_path / "o.bin").read_bytes() == (clone / repo.files[0].name).read_bytes()
