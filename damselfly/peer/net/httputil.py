"""Small HTTP facts shared by the proxy's modules."""

from __future__ import annotations

# describe_error lives in damselfly.errors; re-exported because transfer/download
# and transfer/fetch import it from here.
from damselfly.errors import describe_error as describe_error

# RFC 9110 §7.6.1: headers that concern one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def connection_tokens(values: list[str]) -> set[str]:
    """Header names listed in Connection headers: hop-by-hop too."""
    return {
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    }
