"""The test origin (tests/support/origin.py) as a real subprocess, spoken to with http.client."""

from __future__ import annotations

import gzip
import http.client
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Processes
from tests.support.origin import Origin, parse_range, start_origin

SIZE = 300_000


@pytest.fixture
def origin(processes: Processes, tmp_path: Path) -> tuple[Origin, bytes]:
    root = tmp_path / "files"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "blob.bin").write_bytes(data)
    return start_origin(processes, root), data


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(
        method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {}
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=10-", 10) == "416"
    assert parse_range("bytes=0-1,3-4", 10) is None
    assert parse_range("items=0-1", 10) is None


def test_full_get_head_and_ranges(origin: tuple[Origin, bytes]) -> None:
    server, data = origin
    resp, body = fetch(server.url("blob.bin"))
    assert (resp.status, body) == (200, data)
    assert resp.getheader("Content-Length") == str(SIZE)
    assert resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("ETag")

    resp, body = fetch(server.url("blob.bin"), "HEAD")
    assert (resp.status, body, resp.getheader("Content-Length")) == (200, b"", str(SIZE))

    resp, body = fetch(server.url("blob.bin"), headers={"Range": "bytes=100-199"})
    assert (resp.status, body) == (206, data[100:200])
    assert resp.getheader("Content-Range") == f"bytes 100-199/{SIZE}"

    resp, body = fetch(server.url("blob.bin"), headers={"Range": "bytes=0-0"})
    assert (resp.status, body, resp.getheader("Content-Range")) == (
        206,
        data[:1],
        f"bytes 0-0/{SIZE}",
    )

    resp, _ = fetch(server.url("blob.bin"), headers={"Range": f"bytes={SIZE}-"})
    assert (resp.status, resp.getheader("Content-Range")) == (416, f"bytes */{SIZE}")

    assert server.hits("blob.bin") == 5
    assert server.ranges("blob.bin") == [None, None, "bytes=100-199", "bytes=0-0", f"bytes={SIZE}-"]
    assert [r["method"] for r in server.requests("blob.bin")] == [
        "GET",
        "HEAD",
        "GET",
        "GET",
        "GET",
    ]
    server.reset()
    assert server.hits("blob.bin") == 0


def test_norange_and_chunked_send_the_whole_body(origin: tuple[Origin, bytes]) -> None:
    server, data = origin
    resp, body = fetch(server.url("blob.bin", norange=1), headers={"Range": "bytes=5-9"})
    assert (resp.status, body, resp.getheader("Content-Range")) == (200, data, None)

    resp, body = fetch(server.url("blob.bin", chunked=1), headers={"Range": "bytes=5-9"})
    assert (resp.status, body) == (200, data)
    assert resp.getheader("Content-Length") is None
    assert resp.getheader("Transfer-Encoding") == "chunked"


@pytest.mark.parametrize("url_form", ["query", "path"])
def test_cut_body_closes_the_connection_short(origin: tuple[Origin, bytes], url_form: str) -> None:
    server, data = origin
    url = (
        server.url("blob.bin", cut=1000)
        if url_form == "query"
        else server.url("@cut=1000/blob.bin")
    )
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(url)
    assert info.value.partial == data[:1000]
    assert info.value.expected == SIZE - 1000
    (entry,) = server.requests("blob.bin")
    assert entry["bytes_sent"] == 1000


def test_error_statuses(origin: tuple[Origin, bytes]) -> None:
    server, _ = origin
    assert fetch(server.url("blob.bin", status=403))[0].status == 403
    assert fetch(server.url("blob.bin", status=404))[0].status == 404
    assert fetch(server.url("missing.bin"))[0].status == 404
    assert fetch(server.url("../../etc/passwd"))[0].status == 404
    assert server.hits("missing.bin") == 1


def test_slow_body_is_rate_limited(origin: tuple[Origin, bytes]) -> None:
    server, data = origin
    started = time.monotonic()
    resp, body = fetch(server.url("blob.bin", rate=1_000_000))
    elapsed = time.monotonic() - started
    assert (resp.status, body) == (200, data)
    assert elapsed >= 0.8 * SIZE / 1_000_000


def test_gzip_only_when_asked(origin: tuple[Origin, bytes]) -> None:
    server, data = origin
    resp, body = fetch(server.url("blob.bin", gzip=1), headers={"Accept-Encoding": "gzip"})
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Vary") == "Accept-Encoding"
    assert gzip.decompress(body) == data
    resp, body = fetch(server.url("blob.bin", gzip=1), headers={"Accept-Encoding": "identity"})
    assert (resp.getheader("Content-Encoding"), body) == (None, data)
    encodings = [r["accept_encoding"] for r in server.requests("blob.bin")]
    assert encodings == ["gzip", "identity"]
