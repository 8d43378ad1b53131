"""A real peer process: access control, CONNECT tunnels, config errors, live rule reloads."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.netns import in_namespace, isolated_namespace, netns_available
from tests.support.peer import PeerHandle, peer_config, start_peer
from tests.support.ports import free_port, free_ports
from tests.support.procs import http_ok, wait_until


@pytest.fixture
def static_origin(processes, tmp_path: Path) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    """Python's http.server over a directory: a real, plain origin."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the origin\n")
    port = free_port()
    proc = processes.start(
        "origin",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(root)],
    )
    wait_until(http_ok(f"http://127.0.0.1:{port}/hello.txt"), 15, "origin", proc=proc)
    return f"http://127.0.0.1:{port}", root


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def raw_request(port: int, data: bytes, read_until: bytes = b"\r\n\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while read_until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_connect_to_unmatched_host_is_a_blind_tunnel(processes, tmp_path, static_origin) -> None:  # type: ignore[no-untyped-def]
    origin_url, _ = static_origin
    origin_port = int(origin_url.rsplit(":", 1)[1])
    peer = start_peer(processes, tmp_path, proxy={"connectPorts": [origin_port]})
    # curl --proxytunnel speaks HTTP through the CONNECT tunnel, as git does for https.
    result = curl("-p", "-x", peer.proxy_url, f"{origin_url}/hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the origin\n"
    assert peer.metric("damselfly_peer_requests_total", route="tunnel") == 1


def test_connect_to_a_port_not_on_the_allow_list_is_refused(
    processes, tmp_path, static_origin
) -> None:  # type: ignore[no-untyped-def]
    origin_url, _ = static_origin
    peer = start_peer(processes, tmp_path)  # default allow-list: 443 only
    port = origin_url.rsplit(":", 1)[1]
    reply = raw_request(
        peer.proxy_port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert peer.metric("damselfly_peer_refused_requests_total", reason="connect_port") == 1


def test_link_local_targets_are_refused(processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Cloud metadata lives at 169.254.169.254: never a proxy target.

    Peer and client run in a namespace with nothing but loopback, so even a
    regression cannot send a packet to a real link-local address.
    """
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with isolated_namespace() as ns:
        proxy_port, metrics_port, upload_port = free_ports(3)
        config = peer_config(
            tmp_path / "store",
            proxy_port,
            metrics_port,
            upload_port,
            [{"regex": r"\.bin$"}],
            seed=True,  # the scheduler's seed requests must not get through either
        )
        config_path = tmp_path / "peer.yaml"
        config_path.write_text(yaml.safe_dump(config))
        proc = processes.start(
            "peer",
            in_namespace(
                ns, [sys.executable, "-m", "damselfly.cli", "peer", "-c", str(config_path)]
            ),
        )

        def ns_curl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                in_namespace(ns, ["curl", "-sS", "--max-time", "10", *args]),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        proxy = f"http://127.0.0.1:{proxy_port}"
        wait_until(
            lambda: ns_curl(f"http://127.0.0.1:{metrics_port}/readyz").returncode == 0,
            30,
            "peer ready",
            proc=proc,
        )
        tunnel = ns_curl(
            "-p",
            "-x",
            proxy,
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "http://169.254.169.254:443/",
        )
        assert tunnel.stdout == "403", tunnel
        for url in (
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.169.254/x.bin",
            "http://[fe80::1]/x.bin",
        ):
            result = ns_curl("-x", proxy, "-w", "%{http_code}", url)
            assert result.stdout.startswith("damselfly: "), result
            assert "link-local" in result.stdout
            assert result.stdout.endswith("403"), result
        metrics = ns_curl(f"http://127.0.0.1:{metrics_port}/metrics").stdout
        assert 'damselfly_peer_refused_requests_total{reason="link_local"} 4.0' in metrics
        seed = ns_curl(
            "-w",
            "%{http_code}",
            "--json",
            json.dumps({"taskId": "f" * 64, "url": "http://169.254.169.254/x.bin"}),
            f"http://127.0.0.1:{upload_port}/v1/seed",
        )
        assert "link-local" in seed.stdout
        assert seed.stdout.endswith("403"), seed


def test_basic_auth_is_required_when_configured(processes, tmp_path, static_origin) -> None:  # type: ignore[no-untyped-def]
    origin_url, _ = static_origin
    peer = start_peer(
        processes, tmp_path, proxy={"basicAuth": {"username": "ci", "password": "s3cret"}}
    )
    denied = curl("-x", peer.proxy_url, "-D", "-", "-o", "/dev/null", f"{origin_url}/hello.txt")
    assert denied.stdout.startswith("HTTP/1.1 407 ")
    assert 'proxy-authenticate: basic realm="damselfly"' in denied.stdout.lower()
    wrong = curl(
        "-x",
        peer.proxy_url,
        "-U",
        "ci:nope",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{origin_url}/hello.txt",
    )
    assert wrong.stdout == "407"
    allowed = curl("-x", peer.proxy_url, "-U", "ci:s3cret", f"{origin_url}/hello.txt")
    assert allowed.stdout == "hello from the origin\n"
    token = base64.b64encode(b"ci:s3cret").decode()
    reply = raw_request(
        peer.proxy_port,
        f"GET {origin_url}/hello.txt HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {token}"
        "\r\nConnection: close\r\n\r\n".encode(),
        read_until=b"origin\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_clients_outside_the_allowed_cidrs_are_refused(processes, tmp_path, static_origin) -> None:  # type: ignore[no-untyped-def]
    origin_url, _ = static_origin
    peer = start_peer(processes, tmp_path, proxy={"allowedClientCidrs": ["10.0.0.0/8"]})
    result = curl(
        "-x", peer.proxy_url, "-o", "/dev/null", "-w", "%{http_code}", f"{origin_url}/hello.txt"
    )
    assert result.stdout == "403"
    assert peer.metric("damselfly_peer_refused_requests_total", reason="client_cidr") == 1


def test_origin_form_request_gets_a_clear_error(processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    peer = start_peer(processes, tmp_path)
    result = curl(f"{peer.proxy_url}/some/path")
    assert "send absolute-form requests" in result.stdout


def test_bad_config_exits_with_the_bad_key_named(tmp_path: Path) -> None:
    config = tmp_path / "peer.yaml"
    config.write_text(yaml.safe_dump({"storage": {"quota": "10Qi"}, "proxy": {"prot": 1}}))
    result = subprocess.run(
        [sys.executable, "-m", "damselfly.cli", "peer", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "storage.quota: '10Qi' is not a size" in result.stderr
    assert "proxy.prot" in result.stderr


def cache_header(peer: PeerHandle, url: str) -> str:
    result = curl("-x", peer.proxy_url, "-D", "-", "-o", "/dev/null", url)
    for line in result.stdout.splitlines():
        if line.lower().startswith("x-damselfly-cache:"):
            return line.split(":", 1)[1].strip()
    return "passthrough"


def test_rules_file_reloads_without_restart_and_bad_files_keep_the_last_good(
    processes,
    tmp_path,
    static_origin,  # type: ignore[no-untyped-def]
) -> None:
    origin_url, _ = static_origin
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text("rules: []\n")
    peer = start_peer(processes, tmp_path, rules={"file": str(rules_dir), "watchInterval": 0.2})
    url = f"{origin_url}/hello.txt"
    assert cache_header(peer, url) == "passthrough"
    pid = peer.proc.pid

    (rules_dir / "rules.yaml").write_text("rules:\n  - regex: 'hello\\.txt$'\n")
    wait_until(lambda: cache_header(peer, url) in ("miss", "hit"), 10, "new rule in force")
    assert cache_header(peer, url) == "hit"
    good_hash = peer.status()["rules"]["hash"]

    (rules_dir / "rules.yaml").write_text("rules:\n  - regex: '(unclosed'\n")
    wait_until(lambda: peer.status()["rules"]["lastError"] is not None, 10, "rejection reported")
    status = peer.status()["rules"]
    assert "not valid RE2" in status["lastError"]
    assert status["hash"] == good_hash
    assert peer.metric("damselfly_peer_rule_reload_failures_total") == 1
    assert cache_header(peer, url) == "hit"  # still the old rules
    assert peer.proc.pid == pid
    assert peer.proc.alive()
    effective = (peer.store_dir / "effective.yaml").read_text()
    assert "hello" in effective
    assert good_hash in effective

    (rules_dir / "rules.yaml").write_text("rules: []\n")
    wait_until(lambda: cache_header(peer, url) == "passthrough", 10, "rule removed")


def test_a_rules_change_goes_in_when_the_effective_file_cannot_be_written(
    processes,
    tmp_path,
    static_origin,  # type: ignore[no-untyped-def]
) -> None:
    """effective.yaml is a record for people; a full disk or a broken volume there must
    not keep a new rules version out (nor lose it until the next change)."""
    origin_url, _ = static_origin
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text("rules: []\n")
    peer = start_peer(processes, tmp_path, rules={"file": str(rules_dir), "watchInterval": 0.2})
    (peer.store_dir / "effective.tmp").mkdir()  # the next write of the record fails
    url = f"{origin_url}/hello.txt"
    (rules_dir / "rules.yaml").write_text("rules:\n  - regex: 'hello\\.txt$'\n")
    wait_until(lambda: peer.status()["rules"]["count"] == 1, 10, "new rules in force")
    assert cache_header(peer, url) in ("miss", "hit")
    assert peer.status()["rules"]["lastError"] is None
    assert "cannot write the effective config" in peer.proc.log_tail()
    assert peer.proc.alive()


def test_a_client_that_never_finishes_its_request_head_is_disconnected(
    processes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Slow or idle clients cannot hold the proxy's sockets forever (slowloris)."""
    peer = start_peer(processes, tmp_path, proxy={"requestHeadTimeout": 1})
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=10) as sock:
        sock.sendall(b"GET http://127.0.0.1/files/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the peer, not answered
        assert time.monotonic() - began < 8
    # A complete request still gets its answer, and an idle keep-alive ends the same way.
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=10) as sock:
        sock.sendall(b"GET http://127.0.0.1:1/nothing HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 502")
        while chunk := sock.recv(4096):  # the rest of the reply, then the close
            answer += chunk


def test_a_target_that_is_no_url_is_a_400_naming_it(processes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    peer = start_peer(processes, tmp_path)
    for target in (b"http://[abc/x", b"http://host:99999/x", b"http:///x"):
        with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"is not a usable URL" in answer
