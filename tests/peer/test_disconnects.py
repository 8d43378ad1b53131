"""A client or a child peer that hangs up mid-transfer is routine: an INFO line, no traceback.

On a busy node clients time out, get killed and cancel all the time; a log full of
ERROR tracebacks for that hides the errors that matter. A real peer and a slow
origin; clients are curl with a time limit and a raw socket that reads a little and
closes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.origin import start_origin
from tests.support.peer import PeerHandle, start_peer
from tests.support.procs import wait_until

MiB = 1 << 20


def cut_curl(peer: PeerHandle, url: str, *extra: str) -> None:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "1", *extra, "-x", peer.proxy_url, "-o", "/dev/null", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 28, result  # curl's "operation timed out": it hung up


def log_lines(peer: PeerHandle) -> list[dict[str, object]]:
    lines = []
    for text in peer.proc.log_path.read_text().splitlines():
        assert "Traceback" not in text, text
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def test_clients_and_children_hanging_up_are_info_lines(processes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(48 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "www" / "files").mkdir(parents=True)
    (tmp_path / "www" / "files" / digest).write_bytes(data)
    origin = start_origin(processes, tmp_path / "www")
    peer = start_peer(processes, tmp_path, rule_list=[{"regex": r"/files/"}])
    url = origin.url(f"files/{digest}", rate=8 * MiB)

    cut_curl(peer, url)  # on a miss, while the peer downloads
    wait_until(
        lambda: (
            peer.status()["store"] == {**peer.status()["store"], "tasks": 1, "activeDownloads": 0}
        ),
        30,
        "the download finished without its client",
        proc=peer.proc,
    )
    cut_curl(peer, url, "--limit-rate", "4M")  # on a hit

    # A child that asks for a piece on the upload port and hangs up after a few bytes.
    port = int(peer.status()["uploadPort"])
    # A small receive buffer keeps the piece from fitting in the sockets' buffers, so
    # the upload server is still writing when the reset comes.
    with socket.socket() as child:
        child.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        child.settimeout(5)
        child.connect(("127.0.0.1", port))
        child.sendall(
            f"GET /v1/tasks/{digest} HTTP/1.1\r\nHost: x\r\n"
            f"Range: bytes=0-{4 * MiB - 1}\r\n\r\n".encode()
        )
        assert child.recv(4096).startswith(b"HTTP/1.1 206")
        time.sleep(0.5)  # the server fills what the window allows and waits to drain
        child.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    time.sleep(1)

    lines = log_lines(peer)
    messages = [line["msg"] for line in lines]
    assert messages.count("client went away") >= 2, messages
    assert "child went away mid-piece" in messages
    loud = [line for line in lines if line["level"] in ("error", "critical")]
    assert loud == [], loud
