"""The error tree: every exception class of ours hangs from DamselflyError, and reads well."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import HttpVersion10
from aiohttp.http_parser import RawResponseMessage
from pydantic import BaseModel, Field, ValidationError

import damselfly
from damselfly import errors
from damselfly.config.load import ConfigError
from damselfly.errors import DamselflyError, describe_error, describe_validation
from damselfly.peer.net.ranges import UnsatisfiableRange
from damselfly.peer.store.piecestore import StoreFull

# Exception classes in damselfly/ that are not errors of ours, and why.
OUTSIDE_THE_TREE = {
    # An aiohttp HTTP response (web.HTTPBadRequest) raised to answer 400, not an error.
    "damselfly.scheduler.service.BadRequest",
}


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a damselfly module, by dotted name."""
    for module in pkgutil.walk_packages(damselfly.__path__, "damselfly."):
        importlib.import_module(module.name)
    found: dict[str, type[BaseException]] = {}
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("damselfly."):
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_error_of_ours_is_a_damselfly_error() -> None:
    classes = exception_classes()
    assert len(classes) > 20  # the walk did find them
    stray = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, DamselflyError) and name not in OUTSIDE_THE_TREE
    )
    assert stray == []
    assert classes.keys() >= OUTSIDE_THE_TREE  # the allow-list names no ghost


def drawn_tree() -> dict[str, tuple[str, str]]:
    """errors.py's drawing, read back: class name -> (parent's name, module)."""
    drawn: dict[str, tuple[str, str]] = {}
    ancestors: list[tuple[str, str]] = []  # (name, module) down to the current line
    for line in (errors.__doc__ or "").splitlines():
        if not line.startswith("    "):
            continue  # prose: the drawing is the indented block
        body = line.removeprefix("    ")
        branch = body[: len(body) - len(body.lstrip(" │├└─"))]
        if not (body[:1].isupper() or branch.endswith("── ")):
            continue  # a drawn entry's second line
        name, *words = body[len(branch) :].split()
        where = next((w for w in words if w.endswith(".py:")), None)
        del ancestors[len(branch) // 4 :]
        parent, module = ancestors[-1] if ancestors else ("Exception", "")
        if where:
            module = "damselfly." + where.removesuffix(".py:").replace("/", ".")
        drawn[name] = (parent, module)
        ancestors.append((name, module))
    return drawn


def test_the_drawn_tree_is_the_real_one() -> None:
    """Each class in errors.py's drawing sits under the parent and in the module drawn."""
    drawn = drawn_tree()
    ours = {
        cls.__name__: cls for cls in exception_classes().values() if issubclass(cls, DamselflyError)
    }
    assert sorted(drawn) == sorted(ours)
    for name, (parent, module) in drawn.items():
        cls = ours[name]
        assert cls.__bases__[0].__name__ == parent, name
        assert cls.__module__ == module, name


def test_value_errors_stay_value_errors() -> None:
    """Parsing code catches ValueError; bad input must still be one."""
    assert issubclass(ConfigError, ValueError)
    assert issubclass(UnsatisfiableRange, ValueError)


def test_errors_module_imports_nothing_of_ours() -> None:
    tree = ast.parse(Path(errors.__file__).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    ]
    assert imported
    assert not [name for name in imported if name.startswith("damselfly")]


def test_describe_error_shows_ours_as_written() -> None:
    assert describe_error(StoreFull("object of 5 bytes\n does not fit")) == (
        "object of 5 bytes does not fit"
    )
    assert describe_error(StoreFull()) == "StoreFull"


def test_describe_error_names_a_library_error() -> None:
    assert describe_error(aiohttp.ClientConnectionError("cannot connect\n to x")) == (
        "ClientConnectionError: cannot connect to x"
    )
    message = RawResponseMessage(HttpVersion10, 200, "OK", {}, (), True, None, False, False)
    assert describe_error(aiohttp.ServerDisconnectedError(message)) == "ServerDisconnectedError"
    assert len(describe_error(aiohttp.ClientPayloadError("x" * 1000))) == errors.MAX_FOREIGN


def test_describe_error_of_a_bare_os_error() -> None:
    assert describe_error(OSError()) == "OSError"
    assert describe_error(ConnectionResetError("peer reset")) == "ConnectionResetError: peer reset"


class _Port(BaseModel):
    port: int = Field(le=65535)
    name: str
    tags: list[int] = []


def _invalid(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Port.model_validate(data)
    return info.value


def test_describe_validation_one_line_and_per_file() -> None:
    exc = _invalid({"port": 70000})
    assert describe_validation(exc) == (
        "port: Input should be less than or equal to 65535 (got 70000); name: Field required"
    )
    assert describe_validation(exc, "peer.yaml") == (
        "peer.yaml: invalid config\n"
        "  port: Input should be less than or equal to 65535 (got 70000)\n"
        "  name: Field required"
    )
    assert describe_validation(_invalid([1])) == (
        "(top level): Input should be a valid dictionary or instance of _Port (got [1])"
    )


def test_describe_validation_stays_short() -> None:
    exc = _invalid({"port": 1, "name": "x" * 10, "tags": ["no"] * 50})
    text = describe_validation(exc)
    assert text.count("tags.") == errors.MAX_PROBLEMS
    assert text.endswith(f"and {50 - errors.MAX_PROBLEMS} more")
    long = describe_validation(_invalid({"port": "p" * 500, "name": "x"}))
    assert len(long) < 200
    assert long.endswith("...)")
