"""Small HTTP facts shared by the proxy's modules."""

from __future__ import annotations

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


def describe_error(exc: BaseException) -> str:
    """One readable line for an error shown to a client or written to the log.

    Some aiohttp errors print as the repr of a parsed message; the type's name
    says more. Our own errors already read as sentences.
    """
    text = " ".join(str(exc).split())
    if type(exc).__module__.startswith("damselfly") and text:
        return text
    if not text or text.startswith("<"):
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
