"""Access control: the proxy listens on the node network and must not be an open relay."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from damselfly.errors import RequestError

_LINK_LOCAL = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    # Not link-local, but where AWS serves instance metadata over IPv6 (IMDS).
    ipaddress.ip_network("fd00:ec2::254/128"),
)


class Refused(RequestError):
    """A request the proxy will not serve; ``status`` is 403 or 407."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal (zone dropped, IPv4-mapped IPv6 unwrapped), or None for a name."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_link_local(address: str) -> bool:
    ip = parse_ip(address)
    return ip is not None and any(ip in network for network in _LINK_LOCAL)


def client_allowed(client_ip: str, cidrs: list[str]) -> bool:
    if not cidrs:
        return True
    ip = parse_ip(client_ip)
    return ip is not None and any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def check_basic_auth(header: str | None, username: str, password: str) -> bool:
    """Constant-time check of a ``Proxy-Authorization: Basic ...`` header."""
    if not header:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, secret = decoded.partition(":")
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    secret_ok = hmac.compare_digest(secret.encode(), password.encode())
    return user_ok and secret_ok


def check_upstream(url: str, allow_link_local: bool) -> None:
    """Refuse a URL whose host is a link-local IP literal, before any connection.

    aiohttp does not consult the resolver for IP literals, so GuardedResolver
    alone would not stop ``http://169.254.169.254/``.
    """
    host = urlsplit(url).hostname or ""
    if not allow_link_local and is_link_local(host):
        raise Refused(403, "link_local", f"{host} is a link-local address, refused")


def parent_refusal(address: str, allow_link_local: bool) -> str | None:
    """Why a parent address from the scheduler must not be dialled, or None.

    Parents are the scheduler's word, and a wrong or compromised scheduler must
    not make every peer fetch from wherever it likes: the same guard as for a
    client's target (link-local and cloud metadata refused), and nothing that is
    not one host's IP address (a name would be resolved outside the guard; an
    unspecified, multicast or broadcast address is no peer).
    """
    ip = parse_ip(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    if not allow_link_local and any(ip in network for network in _LINK_LOCAL):
        return f"{address} is a link-local address"
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is not the address of one host"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, minus link-local addresses (cloud metadata).

    Checking the resolved address — not the name — is what stops a DNS name
    that points at 169.254.169.254 from slipping through.
    """

    def __init__(self, allow_link_local: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_link_local = allow_link_local

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_link_local:
            return results
        allowed = [r for r in results if not is_link_local(r["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to link-local addresses, which are refused")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


async def resolve_tunnel_target(loop: Any, host: str, port: int, allow_link_local: bool) -> str:
    """The address a CONNECT tunnel dials: resolved once and checked, then dialled."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    allowed = [a for a in addresses if allow_link_local or not is_link_local(a)]
    if not allowed:
        raise Refused(403, "link_local", f"{host} resolves to a link-local address, refused")
    return allowed[0]
