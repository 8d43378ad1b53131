"""The caching data path, end to end: curl -> real peer process -> real origin process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.origin import Origin, make_certificate, start_origin
from tests.support.peer import PeerHandle, start_peer
from tests.support.ports import free_port
from tests.support.procs import wait_until

MiB = 1 << 20
SIZE = 10 * MiB + 12345  # three pieces of 4 MiB, the last one short
RULES = [{"regex": r"/files/"}]


@pytest.fixture
def origin(processes, tmp_path: Path) -> Origin:  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / "files" / "big.bin").write_bytes(os.urandom(SIZE))
    (root / "files" / "small.txt").write_bytes(b"small object\n")
    (root / "files" / "empty.txt").write_bytes(b"")
    (root / "files" / "modèle-Ж.txt").write_bytes(b"named in UTF-8\n")
    return start_origin(processes, root)


@pytest.fixture
def peer(processes, tmp_path: Path) -> PeerHandle:  # type: ignore[no-untyped-def]
    return start_peer(processes, tmp_path, rule_list=RULES)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(peer: PeerHandle, url: str, out: Path, *extra: str) -> tuple[int, dict[str, str]]:
    """curl through the peer; returns curl's exit code and the response headers."""
    headers_file = out.with_suffix(".headers")
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-x",
            peer.proxy_url,
            "-D",
            str(headers_file),
            "-o",
            str(out),
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    headers: dict[str, str] = {}
    if headers_file.exists():
        lines = headers_file.read_text().splitlines()
        for line in lines:
            if line.startswith("HTTP/"):
                headers = {":status": line.split()[1]}  # last response wins
            elif ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
    return result.returncode, headers


def test_miss_then_hit_serves_identical_bytes_and_spares_the_origin(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    url = origin.url("files/big.bin")
    expected = sha256_file(origin.directory / "files" / "big.bin")
    code, first = fetch(peer, url, tmp_path / "1.bin")
    assert code == 0
    assert first["x-damselfly-cache"] == "miss"
    assert first["content-length"] == str(SIZE)
    assert sha256_file(tmp_path / "1.bin") == expected
    # One stat (first byte) and one ranged GET per piece, each exactly once.
    assert sorted(r or "" for r in origin.ranges("files/big.bin")) == sorted(
        ["bytes=0-0", "bytes=0-4194303", "bytes=4194304-8388607", f"bytes=8388608-{SIZE - 1}"]
    )
    assert all(r["accept_encoding"] == "identity" for r in origin.requests("files/big.bin"))
    before = origin.hits("files/big.bin")
    code, second = fetch(peer, url, tmp_path / "2.bin")
    assert code == 0
    assert second["x-damselfly-cache"] == "hit"
    assert second["x-damselfly-task-id"] == first["x-damselfly-task-id"]
    assert sha256_file(tmp_path / "2.bin") == expected
    assert origin.hits("files/big.bin") == before
    assert peer.metric("damselfly_peer_cache_lookups_total", result="hit") == 1
    assert peer.metric("damselfly_peer_served_bytes_total", source="local") == SIZE
    assert peer.metric("damselfly_peer_downloaded_bytes_total", source="origin") == SIZE


def test_an_empty_object_is_a_200_with_no_body_and_is_cached(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    # The origin answers the peer's one-byte stat with 416 "bytes */0".
    url = origin.url("files/empty.txt")
    code, head = fetch(peer, url, tmp_path / "h", "-I")
    assert code == 0
    assert (head[":status"], head["content-length"]) == ("200", "0")
    for state in ("miss", "hit"):
        code, headers = fetch(peer, url, tmp_path / f"{state}.txt")
        assert code == 0
        assert (headers[":status"], headers["content-length"]) == ("200", "0")
        assert headers["x-damselfly-cache"] == state
        assert (tmp_path / f"{state}.txt").read_bytes() == b""
    assert origin.hits("files/empty.txt") == 2  # the HEAD's stat and the miss's


def test_a_head_answered_by_the_proxy_itself_is_a_clean_reply(
    peer: PeerHandle, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/files/gone.bin"  # nothing listens there
    code, headers = fetch(peer, closed, tmp_path / "h", "-I")
    assert code == 0  # not a reset after the headers
    assert headers[":status"] == "502"


def test_non_ascii_header_bytes_reach_both_ends_unchanged(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    url = origin.url("files/mod%C3%A8le-%D0%96.txt")
    for state in ("miss", "hit"):
        code, headers = fetch(peer, url, tmp_path / f"{state}.txt")
        assert code == 0
        assert headers["x-damselfly-cache"] == state
        assert headers["content-disposition"] == 'attachment; filename="modèle-Ж.txt"'
    echo = origin.url("files/upload.bin", echo=1)
    result = subprocess.run(
        ["curl", "-sS", "-x", peer.proxy_url, "-X", "POST", "-d", "x", "-H", "X-Name: Ж", echo],
        capture_output=True,
        timeout=60,
        check=False,
    )
    echoed = {k.lower(): v for k, v in json.loads(result.stdout)["headers"].items()}
    assert echoed["x-name"] == "Ж"


def test_the_upstream_gets_the_url_as_the_client_wrote_it(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    # Signatures are computed over these bytes: %2F and %21 must not be decoded.
    code, headers = fetch(peer, origin.url("files/small.txt") + "?sig=AK%2F1%21", tmp_path / "s")
    assert code == 0
    assert headers[":status"] == "200"
    queries = [r["query"] for r in origin.requests("files/small.txt")]
    assert queries
    assert queries == ["sig=AK%2F1%21"] * len(queries)


def test_presigned_urls_with_fresh_signatures_share_one_entry(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    one = origin.url("files/big.bin") + "?X-Amz-Signature=aaa&X-Amz-Date=1&versionId=3"
    two = origin.url("files/big.bin") + "?X-Amz-Signature=bbb&X-Amz-Date=2&versionId=3"
    other = origin.url("files/big.bin") + "?X-Amz-Signature=bbb&versionId=4"
    assert fetch(peer, one, tmp_path / "1.bin")[1]["x-damselfly-cache"] == "miss"
    assert fetch(peer, two, tmp_path / "2.bin")[1]["x-damselfly-cache"] == "hit"
    assert fetch(peer, other, tmp_path / "3.bin")[1]["x-damselfly-cache"] == "miss"
    # The origin saw the signed query unchanged.
    queries = {r["query"] for r in origin.requests("files/big.bin")}
    assert "X-Amz-Signature=aaa&X-Amz-Date=1&versionId=3" in queries


@pytest.mark.parametrize("warm", [False, True], ids=["during-download", "from-store"])
def test_ranges_and_head(peer: PeerHandle, origin: Origin, tmp_path: Path, warm: bool) -> None:
    url = origin.url("files/big.bin")
    data = (origin.directory / "files" / "big.bin").read_bytes()
    if warm:
        fetch(peer, url, tmp_path / "warm.bin")
    # git-lfs resumes with Range: bytes=N-(size-1) and needs a 206 starting at N.
    start = 5 * MiB + 7
    code, headers = fetch(peer, url, tmp_path / "r1.bin", "-r", f"{start}-{SIZE - 1}")
    assert code == 0
    assert headers[":status"] == "206"
    assert headers["content-range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"
    assert (tmp_path / "r1.bin").read_bytes() == data[start:]
    code, headers = fetch(peer, url, tmp_path / "r2.bin", "-H", "Range: bytes=-100")
    assert headers[":status"] == "206"
    assert (tmp_path / "r2.bin").read_bytes() == data[-100:]
    code, headers = fetch(peer, url, tmp_path / "r3.bin", "-r", f"{SIZE}-")
    assert headers[":status"] == "416"
    assert headers["content-range"] == f"bytes */{SIZE}"
    code, headers = fetch(peer, url, tmp_path / "h.bin", "-I")
    assert code == 0
    assert headers[":status"] == "200"
    assert headers["content-length"] == str(SIZE)
    assert headers["accept-ranges"] == "bytes"


def test_head_of_an_uncached_object_downloads_nothing(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    code, headers = fetch(peer, origin.url("files/big.bin"), tmp_path / "h", "-I")
    assert code == 0
    assert headers["content-length"] == str(SIZE)
    assert headers["x-damselfly-cache"] == "miss"
    # A HEAD may be unsigned for presigned URLs: the peer asked with GET for one byte.
    assert [(r["method"], r["range"]) for r in origin.requests("files/big.bin")] == [
        ("GET", "bytes=0-0")
    ]


@pytest.mark.parametrize("status", [403, 404, 500])
def test_origin_errors_reach_the_client_as_they_came_and_are_not_cached(
    peer: PeerHandle, origin: Origin, tmp_path: Path, status: int
) -> None:
    url = origin.url("files/big.bin", status=status)
    for attempt in (1, 2):
        code, headers = fetch(peer, url, tmp_path / f"e{attempt}")
        assert code == 0
        assert headers[":status"] == str(status)
        assert (tmp_path / f"e{attempt}").read_text() == f"origin says {status}\n"
    assert origin.hits("files/big.bin") == 2
    code, headers = fetch(peer, origin.url("files/missing.bin"), tmp_path / "m")
    assert headers[":status"] == "404"


@pytest.mark.parametrize("mode", ["cut", "norange-cut"])
def test_a_body_cut_mid_way_is_never_passed_off_as_complete(
    peer: PeerHandle, origin: Origin, tmp_path: Path, mode: str
) -> None:
    # Ranged mode: every piece response (4 MiB) is cut at 1 MiB, retries included.
    flags: dict[str, str | int] = {"cut": MiB}
    if mode == "norange-cut":
        flags = {"cut": 5 * MiB, "norange": 1}
    url = origin.url("files/big.bin", **flags)
    code, _headers = fetch(peer, url, tmp_path / "cut.bin")
    assert code != 0, "curl must see the transfer fail"
    received = (tmp_path / "cut.bin").stat().st_size if (tmp_path / "cut.bin").exists() else 0
    assert received < SIZE
    # Nothing was cached: asking again goes to the origin again.
    hits = origin.hits("files/big.bin")
    fetch(peer, url, tmp_path / "cut2.bin")
    assert origin.hits("files/big.bin") > hits


@pytest.mark.parametrize("flag", ["norange", "chunked"])
def test_origins_that_ignore_range_or_send_no_length_still_work(
    peer: PeerHandle, origin: Origin, tmp_path: Path, flag: str
) -> None:
    url = origin.url("files/big.bin", **{flag: 1})
    expected = sha256_file(origin.directory / "files" / "big.bin")
    code, headers = fetch(peer, url, tmp_path / "1.bin")
    assert code == 0
    assert sha256_file(tmp_path / "1.bin") == expected
    assert origin.hits("files/big.bin") == 1  # the stat's full answer was the download
    code, headers = fetch(peer, url, tmp_path / "2.bin", "-r", "100-199")
    assert headers["x-damselfly-cache"] == "hit"
    assert headers[":status"] == "206"
    assert (tmp_path / "2.bin").read_bytes() == (origin.directory / "files/big.bin").read_bytes()[
        100:200
    ]
    assert origin.hits("files/big.bin") == 1


def test_ten_concurrent_requests_share_one_origin_download(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    url = origin.url("files/big.bin", rate=8 * MiB)  # about 1.3 s: everyone joins in time
    expected = sha256_file(origin.directory / "files" / "big.bin")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: fetch(peer, url, tmp_path / f"c{i}.bin"), range(10)))
    assert all(code == 0 for code, _ in results)
    for i in range(10):
        assert sha256_file(tmp_path / f"c{i}.bin") == expected
    ranges = origin.ranges("files/big.bin")
    assert ranges.count("bytes=0-0") == 1
    assert len(ranges) == 4, ranges


def test_gzip_is_never_mixed_up_with_identity(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    url = origin.url("files/big.bin", gzip=1)
    expected = sha256_file(origin.directory / "files" / "big.bin")
    code, headers = fetch(peer, url, tmp_path / "g.bin", "-H", "Accept-Encoding: gzip")
    assert code == 0
    assert "content-encoding" not in headers
    assert sha256_file(tmp_path / "g.bin") == expected
    code, headers = fetch(peer, url, tmp_path / "p.bin")
    assert headers["x-damselfly-cache"] == "hit"
    assert sha256_file(tmp_path / "p.bin") == expected


def test_pass_through_keeps_the_origin_encoding(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    # Not matched by any rule: forwarded as is, gzip and all, nothing decoded.
    url = origin.url("other/x", gzip=1)
    (origin.directory / "other").mkdir()
    (origin.directory / "other" / "x").write_bytes(b"z" * 100_000)
    code, headers = fetch(peer, url, tmp_path / "x.gz", "-H", "Accept-Encoding: gzip")
    assert code == 0
    assert headers["content-encoding"] == "gzip"
    assert "x-damselfly-cache" not in headers
    import gzip

    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == b"z" * 100_000


def test_restart_keeps_the_cache_and_catches_corruption(
    processes,
    origin: Origin,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    peer = start_peer(processes, tmp_path, rule_list=RULES)
    url = origin.url("files/big.bin")
    expected = sha256_file(origin.directory / "files" / "big.bin")
    fetch(peer, url, tmp_path / "1.bin")
    task_id = fetch(peer, url, tmp_path / "1b.bin")[1]["x-damselfly-task-id"]
    peer.proc.stop()
    hits = origin.hits("files/big.bin")

    again = start_peer(
        processes,
        tmp_path,
        config=yaml.safe_load(peer.config_path.read_text()),
        name="peer-restarted",
    )
    code, headers = fetch(again, url, tmp_path / "2.bin")
    assert code == 0
    assert headers["x-damselfly-cache"] == "hit"
    assert sha256_file(tmp_path / "2.bin") == expected
    assert origin.hits("files/big.bin") == hits
    again.proc.stop()

    # Flip one byte in the stored data while the peer is down.
    data_file = peer.store_dir / "data" / task_id[:2] / task_id
    with data_file.open("r+b") as handle:
        handle.seek(6 * MiB)
        byte = handle.read(1)
        handle.seek(6 * MiB)
        handle.write(bytes([byte[0] ^ 0xFF]))
    third = start_peer(
        processes,
        tmp_path,
        config=yaml.safe_load(peer.config_path.read_text()),
        name="peer-third",
    )
    code, _ = fetch(third, url, tmp_path / "3.bin")
    assert code != 0, "corrupt bytes must not be served as a complete body"
    assert (tmp_path / "3.bin").stat().st_size <= 4 * MiB  # cut at the bad piece
    assert third.metric("damselfly_peer_integrity_failures_total", kind="piece") == 1
    code, headers = fetch(third, url, tmp_path / "4.bin")
    assert code == 0
    assert headers["x-damselfly-cache"] == "miss"  # the bad entry was dropped
    assert sha256_file(tmp_path / "4.bin") == expected


# "both": a Content-Length beside chunked framing, which chunked overrides (RFC 9112 6.3)
@pytest.mark.parametrize("framing", ["content-length", "chunked", "both"])
def test_uploads_pass_through_with_their_body_and_are_never_cached(
    peer: PeerHandle, origin: Origin, tmp_path: Path, framing: str
) -> None:
    """PUT/POST — even to a URL a rule matches — go upstream unchanged, streamed."""
    body = tmp_path / "upload.bin"
    body.write_bytes(os.urandom(3 * MiB + 1))
    url = origin.url("files/upload.bin", echo=1)
    extra = ["-H", "Transfer-Encoding: chunked"] if framing != "content-length" else []
    extra += ["-H", "Content-Length: 5"] if framing == "both" else []
    for method in ("POST", "PUT"):
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "-x",
                peer.proxy_url,
                "-X",
                method,
                "--data-binary",
                f"@{body}",
                "-H",
                "Authorization: Bearer t0ken",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        echoed = json.loads(result.stdout)
        assert echoed["method"] == method
        assert echoed["length"] == body.stat().st_size
        assert echoed["sha256"] == sha256_file(body)
        assert echoed["headers"]["Authorization"] == "Bearer t0ken"
        if framing != "content-length":
            assert echoed["transferEncoding"] == "chunked"
        else:
            assert echoed["contentLength"] == str(body.stat().st_size)
    assert peer.metric("damselfly_peer_requests_total", route="passthrough") == 2
    assert peer.metric("damselfly_peer_requests_total", route="cache") == 0


def test_a_content_addressed_object_with_wrong_bytes_is_refused_and_dropped(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    """The URL names a sha256 the bytes do not have: the client must not get a clean body."""
    claimed = hashlib.sha256(b"what the URL promises").hexdigest()
    (origin.directory / "files" / claimed).write_bytes(os.urandom(5 * MiB))
    url = origin.url(f"files/{claimed}")
    code, _ = fetch(peer, url, tmp_path / "bad.bin")
    assert code != 0
    assert (tmp_path / "bad.bin").stat().st_size < 5 * MiB  # the last piece was held back
    assert peer.metric("damselfly_peer_integrity_failures_total", kind="object") == 1
    code, headers = fetch(peer, url, tmp_path / "bad2.bin")
    assert code != 0
    assert headers.get("x-damselfly-cache") == "miss"  # nothing was kept


def test_an_object_larger_than_the_store_passes_through_uncached(
    processes,
    origin: Origin,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    peer = start_peer(processes, tmp_path, rule_list=RULES, storage={"quota": "4Mi"})
    code, _headers = fetch(peer, origin.url("files/big.bin"), tmp_path / "1.bin")
    assert code == 0
    assert sha256_file(tmp_path / "1.bin") == sha256_file(origin.directory / "files/big.bin")
    assert "does not fit" in peer.proc.log_tail() or "larger than the store" in peer.proc.log_tail()
    assert peer.metric("damselfly_peer_store_used_bytes") == 0


def test_store_evicts_least_recently_used_objects_above_the_high_watermark(
    processes,
    origin: Origin,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    for name in ("a", "b", "c"):
        (origin.directory / "files" / name).write_bytes(os.urandom(4 * MiB))
    peer = start_peer(
        processes,
        tmp_path,
        rule_list=RULES,
        storage={"quota": "12Mi", "highWatermarkPercent": 90, "lowWatermarkPercent": 70},
    )
    fetch(peer, origin.url("files/a"), tmp_path / "a")
    fetch(peer, origin.url("files/b"), tmp_path / "b")
    fetch(peer, origin.url("files/a"), tmp_path / "a2")  # a is now the most recently used
    # 12 MiB would pass the high watermark (10.8 MiB): least recently used b goes,
    # which brings the store to the low watermark (8.4 MiB) with c.
    fetch(peer, origin.url("files/c"), tmp_path / "c")
    assert fetch(peer, origin.url("files/a"), tmp_path / "a3")[1]["x-damselfly-cache"] == "hit"
    assert fetch(peer, origin.url("files/c"), tmp_path / "c3")[1]["x-damselfly-cache"] == "hit"
    assert fetch(peer, origin.url("files/b"), tmp_path / "b3")[1]["x-damselfly-cache"] == "miss"
    assert peer.metric("damselfly_peer_gc_evicted_tasks_total", reason="watermark") >= 1


@contextlib.contextmanager
def slow_download_with_a_piece_stored(
    processes: Any, origin: Origin, tmp_path: Path, rate: int
) -> Iterator[tuple[PeerHandle, str]]:
    """A peer fetching a content-addressed object at ``rate`` bytes/s per piece request,
    once a piece is stored. Pieces download in parallel at the same rate, so the short
    last one lands first while the two full ones are still on the way. The path flag
    changes the URL, not the content-addressed task; the client is stopped on exit.
    """
    data = os.urandom(SIZE)
    oid = hashlib.sha256(data).hexdigest()
    (origin.directory / "files" / oid).write_bytes(data)
    peer = start_peer(processes, tmp_path, rule_list=RULES)
    slow = f"{origin.base_url}/@rate={rate}/files/{oid}"
    client = subprocess.Popen(
        ["curl", "-sS", "-x", peer.proxy_url, "-o", "/dev/null", slow],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: peer.metric("damselfly_peer_downloaded_bytes_total", source="origin") > 0,
            30,
            "a piece stored",
        )
        yield peer, oid
    finally:
        client.kill()
        client.wait()


# "lost write": the crash took bytes the metadata had recorded (a byte flipped in a
# stored piece); the resumed download must fetch that piece again, not trust it.
@pytest.mark.parametrize("lost_write", [False, True], ids=["intact", "lost-write"])
def test_a_download_killed_mid_way_resumes_after_restart(
    processes,
    origin: Origin,
    tmp_path: Path,
    lost_write: bool,  # type: ignore[no-untyped-def]
) -> None:
    with slow_download_with_a_piece_stored(processes, origin, tmp_path, 2 * MiB) as (peer, oid):
        peer.proc.kill()  # a crash: no clean shutdown
    with sqlite3.connect(f"file:{peer.store_dir / 'store.db'}?mode=ro", uri=True) as db:
        stored = {n for (n,) in db.execute("SELECT number FROM pieces WHERE task_id = ?", (oid,))}
        complete = db.execute("SELECT complete FROM tasks WHERE task_id = ?", (oid,)).fetchone()
    assert stored, "the crash came before any piece was stored"
    assert complete == (0,), "the download finished before the crash"
    if lost_write:
        damaged = min(stored)
        with (peer.store_dir / "data" / oid[:2] / oid).open("r+b") as data:
            data.seek(damaged * 4 * MiB + 7)
            byte = data.read(1)
            data.seek(damaged * 4 * MiB + 7)
            data.write(bytes([byte[0] ^ 0xFF]))
        stored.discard(damaged)
    origin.reset()
    config = yaml.safe_load(peer.config_path.read_text())
    again = start_peer(processes, tmp_path, config=config, name="peer-restarted")
    code, headers = fetch(again, origin.url(f"files/{oid}"), tmp_path / "r.bin")
    assert code == 0
    assert headers["x-damselfly-cache"] == "miss"
    assert hashlib.sha256((tmp_path / "r.bin").read_bytes()).hexdigest() == oid
    fetched = sorted(r for r in origin.ranges(f"files/{oid}") if r != "bytes=0-0")
    pieces = ["bytes=0-4194303", "bytes=4194304-8388607", f"bytes=8388608-{SIZE - 1}"]
    assert fetched == sorted(p for n, p in enumerate(pieces) if n not in stored)


def test_a_peer_stopped_mid_download_exits_at_once_and_resumes_later(
    processes,
    origin: Origin,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """SIGTERM while pieces are still arriving slowly: the piece requests are cut,
    the peer exits cleanly within seconds (not when the pieces would have landed,
    about 16 s later), and what it stored serves a later download."""
    with slow_download_with_a_piece_stored(processes, origin, tmp_path, 256 * 1024) as (
        peer,
        oid,
    ):
        began = time.monotonic()
        peer.proc.signal(signal.SIGTERM)
        peer.proc.proc.wait(timeout=30)
        stopped_after = time.monotonic() - began
    assert peer.proc.proc.returncode == 0, peer.proc.log_tail()
    assert stopped_after < 5, f"the peer took {stopped_after:.1f} s to stop"
    config = yaml.safe_load(peer.config_path.read_text())
    again = start_peer(processes, tmp_path, config=config, name="peer-restarted")
    code, _ = fetch(again, origin.url(f"files/{oid}"), tmp_path / "r.bin")
    assert code == 0
    assert hashlib.sha256((tmp_path / "r.bin").read_bytes()).hexdigest() == oid


def test_use_tls_fetches_https_upstream_for_a_plain_http_client(
    processes,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The Git LFS recipe: url.http://H/.insteadOf https://H/ plus a useTLS rule.

    The client speaks plain http to the proxy; the peer fetches over https,
    verifying the origin's certificate against the configured CA file.
    """
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    data = os.urandom(5 * MiB)
    (root / "files" / "tls.bin").write_bytes(data)
    cert, key = make_certificate(tmp_path)
    secure = start_origin(processes, root, tls=(cert, key))
    plain_url = secure.url("files/tls.bin").replace("https://", "http://", 1)
    peer = start_peer(
        processes,
        tmp_path,
        rule_list=[{"regex": "/files/", "useTLS": True}],
        proxy={"upstreamCaFile": str(cert)},
    )
    code, headers = fetch(peer, plain_url, tmp_path / "out.bin")
    assert code == 0
    assert headers["x-damselfly-cache"] == "miss"
    assert (tmp_path / "out.bin").read_bytes() == data
    assert secure.hits("files/tls.bin") >= 2  # the stat and the piece, both over TLS
    # Without the CA the origin's certificate is refused: a clear 502, no bytes.
    untrusting = start_peer(
        processes, tmp_path, name="untrusting", rule_list=[{"regex": "/files/", "useTLS": True}]
    )
    code, headers = fetch(untrusting, plain_url, tmp_path / "refused.bin")
    assert headers[":status"] == "502"
    assert "certificate" in (tmp_path / "refused.bin").read_text().lower()


def test_an_upload_expecting_100_continue_is_told_to_go_on(
    peer: PeerHandle, origin: Origin
) -> None:
    """curl and git-lfs send Expect: 100-continue and wait (a second) for the go-ahead."""
    import socket

    body = os.urandom(200_000)
    url = origin.url("files/upload.bin", echo=1)
    head = (
        f"PUT {url} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)  # the body is not sent until the proxy says so
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status, _, payload = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 ")
    echoed = json.loads(payload)
    assert echoed["length"] == len(body)
    assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
    assert "Expect" not in echoed["headers"]


def test_a_range_of_a_broken_unknown_length_body_is_a_502(
    peer: PeerHandle, origin: Origin, tmp_path: Path
) -> None:
    """No length from the origin, so a range waits for the whole body, which breaks off."""
    url = origin.url("files/big.bin", chunked=1, cut=MiB)
    code, headers = fetch(peer, url, tmp_path / "r.bin", "-r", "0-99")
    assert code == 0
    assert headers[":status"] == "502"
    assert "failed" in (tmp_path / "r.bin").read_text()
