"""The LFS rig itself, with no proxy: real git + git-lfs against giftless + moto."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.lfs_rig import LfsRepo, LfsServer, run_git
from tests.support.ports import free_port

pytestmark = pytest.mark.lfs


def test_servers_listen_on_a_non_loopback_address(lfs_server: LfsServer) -> None:
    for url in (lfs_server.url, lfs_server.moto_url):
        host = urlsplit(url).hostname
        assert host is not None
        assert not ipaddress.ip_address(host).is_loopback, url


def test_clone_and_lfs_pull_fetch_real_objects_from_the_store(
    lfs_repo: LfsRepo, lfs_server: LfsServer, tmp_path: Path
) -> None:
    assert lfs_server.count_store_gets(lfs_repo.oids) == 0  # pushing uploads, never GETs

    dest = lfs_repo.clone(tmp_path / "clone")

    lfs_repo.verify(dest)
    assert (dest / ".lfsconfig").read_text().count(lfs_repo.lfs_url) == 1
    gets = lfs_server.store_gets(lfs_repo.oids)
    assert sorted(g.key.rsplit("/", 1)[-1] for g in gets) == sorted(lfs_repo.oids)
    assert all(g.status == 200 and g.range is None for g in gets)
    by_oid = {g.key.rsplit("/", 1)[-1]: g for g in gets}
    for f in lfs_repo.files:
        assert by_oid[f.oid].bytes_sent == f.size
        assert by_oid[f.oid].key == f"{lfs_repo.org}/{lfs_repo.name}/{f.oid}"
        assert "X-Amz-Signature=" in by_oid[f.oid].query


def test_a_second_clone_goes_to_the_store_again(
    lfs_repo: LfsRepo, lfs_server: LfsServer, tmp_path: Path
) -> None:
    lfs_repo.clone(tmp_path / "one", smudge=True)
    lfs_repo.verify(tmp_path / "one")
    first = lfs_server.count_store_gets(lfs_repo.oids)
    lfs_repo.clone(tmp_path / "two")
    lfs_repo.verify(tmp_path / "two")
    assert first == len(lfs_repo.files)
    assert lfs_server.count_store_gets(lfs_repo.oids) == 2 * len(lfs_repo.files)


def test_each_batch_call_signs_a_different_url_for_the_same_object(
    lfs_repo: LfsRepo, lfs_server: LfsServer
) -> None:
    obj = lfs_repo.files[0]
    hrefs = []
    for attempt in range(2):
        if attempt:
            time.sleep(1.1)  # X-Amz-Date has one-second resolution: sign in another second
        answer = lfs_server.batch(lfs_repo.lfs_url, [(obj.oid, obj.size)])
        (entry,) = answer["objects"]
        hrefs.append(entry["actions"]["download"]["href"])
    first, second = (urlsplit(h) for h in hrefs)
    assert (first.scheme, first.netloc, first.path) == (second.scheme, second.netloc, second.path)
    assert first.netloc == urlsplit(lfs_server.moto_url).netloc
    assert first.path.endswith("/" + obj.oid)
    assert first.query != second.query
    q1, q2 = parse_qs(first.query), parse_qs(second.query)
    assert q1["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert q1["X-Amz-Signature"] != q2["X-Amz-Signature"]
    assert lfs_server.count_store_gets(obj.oid) == 0  # a batch call alone downloads nothing


def test_git_lfs_sees_the_endpoint_from_lfsconfig(lfs_repo: LfsRepo, tmp_path: Path) -> None:
    dest = lfs_repo.clone(tmp_path / "clone")
    env = run_git(["lfs", "env"], cwd=dest, env=lfs_repo.env)
    assert f"Endpoint={lfs_repo.lfs_url} (auth=none)" in env


def test_git_lfs_goes_through_http_proxy_for_the_rig(
    lfs_repo: LfsRepo, lfs_server: LfsServer, tmp_path: Path
) -> None:
    """The rig's address is not loopback, so git-lfs obeys http.proxy: a dead proxy fails it."""
    port = free_port()
    dead_proxy = f"http://127.0.0.1:{port}"
    with pytest.raises(AssertionError, match=rf"lfs pull(.|\n)*127\.0\.0\.1:{port}"):
        lfs_repo.clone(
            tmp_path / "clone",
            config={"http.proxy": dead_proxy, "lfs.transfer.maxretries": "1"},
            timeout=120,
        )
    assert lfs_server.count_store_gets(lfs_repo.oids) == 0
