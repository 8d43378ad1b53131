"""The errors Damselfly raises on purpose, as one tree, and how they read.

Every exception class we define derives from DamselflyError, so
``describe_error`` can tell ours (whose messages are written as sentences) from
a library's, and a caller can catch a whole family. The families live here;
each class lives beside the code that raises it (tests/test_errors.py checks
this drawing against the classes)::

    DamselflyError                       errors.py: one of ours; its message reads as is
    ├── InputError (ValueError)          errors.py: something we were handed is wrong; fix it
    │   ├── ConfigError                  config/load.py: a component's YAML config is unreadable
    │   │                                or invalid; the message names the bad keys
    │   ├── RenderError                  operator/render_cli.py: a file given to ``render``
    │   │                                (or a resource in it) cannot be rendered
    │   ├── RulesRejected                peer/rules/filesource.py: a rules version the peer
    │   │                                cannot use; it keeps the rules it has
    │   └── TokenFileError               sharedtoken.py: the shared token file cannot be read
    │                                    or holds no usable token
    ├── RequestError                     errors.py: a client's request gets no object
    │   ├── Refused                      peer/net/access.py: policy says no: 403 or 407
    │   ├── UnsatisfiableRange           peer/net/ranges.py: a Range outside the object: 416
    │   │   (ValueError)
    │   └── ClientGone                   peer/frontdoor/http1.py: the client hung up or sent
    │                                    what h11 rejects: nobody to answer
    ├── ServiceError                     errors.py: a control-plane service gave no usable answer
    │   ├── SchedulerError               api/schedulerclient.py: the scheduler client's errors
    │   │   ├── SchedulerUnavailable     no replica answered: go to the origin
    │   │   └── SchedulerRejected        a replica answered 4xx: our request is wrong (a bug)
    │   ├── ApiError                     kube.py: the Kubernetes API answered non-2xx
    │   └── Resync                       peer/rules/kubesource.py: the watch cannot resume from
    │                                    its resourceVersion: list again
    ├── StoreError                       errors.py: the peer's cache directory cannot do its part
    │   ├── StoreUnusable                peer/store/check.py: the directory cannot be used at all
    │   ├── StoreFull                    peer/store/piecestore.py: an object exceeds the quota
    │   │                                even after evicting
    │   ├── PieceCorrupt                 peer/store/piecestore.py: a stored piece fails its
    │   │                                digest; the task was dropped
    │   └── DiskFull                     peer/store/space.py: a write found no space on the
    │                                    store's filesystem
    ├── TransferError                    errors.py: moving an object's bytes went wrong
    │   ├── OriginError                  peer/transfer/origin.py: the origin misbehaved on a
    │   │   │                            piece (status, range, length)
    │   │   ├── RangeIgnored             it answered a range request with the whole object
    │   │   └── ObjectChanged            it now serves another version than the download's
    │   ├── ParentBusy                   peer/transfer/parents.py: a parent has no upload slot
    │   │                                now; not a failure, ask again later
    │   ├── ParentError                  peer/transfer/parents.py: a parent failed a piece;
    │   │                                carries the reason the scheduler expects
    │   ├── BadLine (ValueError)         api/peerwire.py: a line of a parent's piece stream is
    │   │                                not JSON, or a known kind with bad fields
    │   ├── PieceLengthWrong             peer/store/writer.py: a source sent more bytes than the
    │   │                                piece holds, or fewer
    │   ├── PieceMismatch                peer/store/writer.py: a piece's bytes miss the digest
    │   │                                they had to match
    │   └── DownloadFailed               peer/transfer/download.py: the download cannot finish;
    │       │                            clients still reading are cut off
    │       └── ObjectChangedUnderDownload  the origin's object changed: what was stored
    │                                    is dropped, the scheduler told
    └── CommandError                     errors.py: a CLI command stops; it prints the message
        ├── GetError                     get.py: ``damselfly get`` could not fetch the file
        ├── LocalError                   local.py: ``damselfly local`` cannot do what was asked
        └── NotBuiltError                cli.py: a subcommand whose module does not exist yet

ValueError stays a second base where it was before (the InputError family,
UnsatisfiableRange and BadLine), so ``except ValueError`` around parsing keeps
catching them.
Outside the tree on purpose: ``scheduler/service.BadRequest`` is an aiohttp
HTTP response (``web.HTTPBadRequest``), not an error of ours.

This module sits below every other: it imports nothing from damselfly
(``.importlinter`` enforces it), so any module may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

# A body with a thousand bad items must not become a thousand-line answer.
MAX_PROBLEMS = 20
# A value quoted back (a long regex, a list) is cut to this many characters.
MAX_VALUE = 80
# A library's error can embed a whole response; one log line is enough.
MAX_FOREIGN = 300


class DamselflyError(Exception):
    """One of ours: raised on purpose, with a message written for a person."""


class InputError(DamselflyError, ValueError):
    """A file, flag or resource we were handed is wrong; the message says what to fix."""


class RequestError(DamselflyError):
    """A client's request that gets no object: refused, out of range, or its client left."""


class ServiceError(DamselflyError):
    """A control-plane service (scheduler, Kubernetes API) gave no usable answer."""


class StoreError(DamselflyError):
    """The peer's cache directory cannot do its part."""


class TransferError(DamselflyError):
    """Moving an object's bytes (from the origin, a parent, to clients) went wrong."""


class CommandError(DamselflyError):
    """A CLI command cannot go on; it prints the message and exits non-zero."""


def describe_error(exc: BaseException) -> str:
    """One readable line for an error shown to a client or written to the log.

    Ours already read as sentences. Some aiohttp errors print as the repr of a
    parsed message; then the type's name says more.
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, DamselflyError) and text:
        return text
    if not text or text.startswith("<"):
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:MAX_FOREIGN]


def describe_validation(exc: ValidationError, source: str | None = None) -> str:
    """Every bad field of ``exc`` as ``where: why (got value)``, the same everywhere.

    Without ``source`` the fields join on "; " (a status condition, an HTTP
    answer, a log line). A config file's ``source`` heads the message and each
    field gets its own line, as a person reads a file.
    """
    problems = []
    errors = exc.errors()
    for error in errors[:MAX_PROBLEMS]:
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        # A missing field's input is its parent mapping: quoting it says nothing.
        shown = "" if isinstance(value, dict) else f" (got {_short(repr(value))})"
        problems.append(f"{where}: {message}{shown}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more")
    if source is None:
        return "; ".join(problems)
    return "\n  ".join([f"{source}: invalid config", *problems])


def _short(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
