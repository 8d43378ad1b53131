"""The shared token: who may use the upload port and the scheduler API.

Without it, any pod that reaches a peer's upload port can read every cached
object by task id, and anything that reaches the scheduler can register as a
parent of every task. With it, peers, seed peers and schedulers of one cluster
hold one secret, a file (a mounted Secret) that ``DAMSELFLY_TOKEN_FILE`` names:

- every request between them carries the file's first line as a bearer token;
- their servers accept any non-empty line of the file, so a token is rotated
  without a restart: add the new one as a second line, wait until every pod
  sees it, move it to the top, later remove the old one. The file is read
  again when it changes (kubelet swaps a mounted Secret's files in place).

Without the variable nothing is checked, as before (loopback setups, or a
cluster that fences the ports with a NetworkPolicy alone). Health, readiness
and the metrics ports never ask for the token: probes and scrapers have none.
An environment variable rather than a config key: a peer of the previous
version refuses config keys it does not know, and ignores an unknown variable.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from damselfly.errors import InputError

log = logging.getLogger(__name__)

ENV_VAR = "DAMSELFLY_TOKEN_FILE"
# Short tokens are guessable; the operator's are 43 characters.
MIN_LENGTH = 16
# How often the file's change time is looked at, at most.
RECHECK_SECONDS = 5.0
# At most one log line per this many seconds about refused requests (the metric counts all).
REFUSAL_LOG_SECONDS = 60.0


class TokenFileError(InputError):
    """The token file cannot be read, or holds no usable token."""


def read_tokens(path: Path) -> tuple[str, ...]:
    """The file's tokens, the one to send first; TokenFileError says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(
            f"cannot read the shared token file {path} ({ENV_VAR}): {exc}"
        ) from None
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not tokens:
        raise TokenFileError(f"the shared token file {path} ({ENV_VAR}) is empty")
    for number, token in enumerate(tokens, 1):
        if len(token) < MIN_LENGTH or any(c.isspace() or not c.isprintable() for c in token):
            raise TokenFileError(
                f"line {number} of the shared token file {path} is not a token: "
                f"{MIN_LENGTH} or more printable characters without spaces"
            )
    return tokens


class SharedToken:
    """The tokens of one file, read again when it changes; a bad new version is
    logged and the last good one kept, so a botched edit does not cut a cluster."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._tokens = read_tokens(path)
        self._stamp = self._file_stamp()
        self._checked = clock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SharedToken | None:
        """The token the environment names, None when it names none."""
        name = environ.get(ENV_VAR, "").strip()
        return cls(Path(name)) if name else None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def tokens(self) -> tuple[str, ...]:
        now = self._clock()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._tokens = read_tokens(self.path)
                    log.info("shared token file read again", extra={"tokens": len(self._tokens)})
                except TokenFileError as exc:
                    log.warning("shared token file kept as it was", extra={"error": str(exc)})
                self._stamp = stamp
        return self._tokens

    def headers(self) -> dict[str, str]:
        """What a request to another peer or a scheduler carries."""
        return {"Authorization": f"Bearer {self.tokens()[0]}"}

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the tokens (constant time)."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = presented.strip().encode()
        found = False
        for token in self.tokens():
            found |= hmac.compare_digest(given, token.encode())
        return found


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def outgoing(token: SharedToken | None) -> dict[str, str]:
    """Headers for a request to a peer or a scheduler: the token's, or none."""
    return {} if token is None else token.headers()


def require_token(
    token: SharedToken | None,
    open_paths: Collection[str] = ("/healthz", "/readyz"),
    refused: Callable[[], None] | None = None,
) -> list[Middleware]:
    """aiohttp middlewares answering 401 to a request without the token (none without one).

    ``refused`` hears of every refusal (a metric); the log gets one line a minute.
    """
    if token is None:
        return []
    last_line = [-REFUSAL_LOG_SECONDS]

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths or token.accepts(request.headers.get("Authorization")):
            return await handler(request)
        if refused is not None:
            refused()
        now = time.monotonic()
        if now - last_line[0] >= REFUSAL_LOG_SECONDS:
            last_line[0] = now
            log.warning(
                "request without the shared token refused (more are counted, not logged)",
                extra={"remote": request.remote, "path": request.path},
            )
        raise web.HTTPUnauthorized(
            text="this port needs the cluster's shared token (Authorization: Bearer)\n",
            headers={"WWW-Authenticate": 'Bearer realm="damselfly"'},
        )

    return [check]
