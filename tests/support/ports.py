"""Free TCP ports for servers started by tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just considered free on ``host``.

    The socket is closed before the port is used, so a race is possible in
    principle; SO_REUSEADDR on our servers makes it harmless in practice.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports, held open together so none repeats."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def non_loopback_ipv4() -> str | None:
    """This machine's own non-loopback IPv4 address, or None.

    git-lfs never uses a proxy for loopback targets, so servers that git-lfs
    must reach through our proxy listen here. Found via the route a UDP socket
    would take; no packet is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never sent, only routed
        except OSError:
            return None
        addr = str(sock.getsockname()[0])
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr
