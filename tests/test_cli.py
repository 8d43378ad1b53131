"""The damselfly command: subcommands, --help, loud failure of unbuilt features."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from io import StringIO

import pytest

from damselfly import cli
from damselfly.logs import JsonFormatter, resolve_level, setup_logging

SUBCOMMANDS = ["operator", "scheduler", "peer", "get", "local", "crds", "render", "version"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "damselfly.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in result.stdout, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name: str) -> None:
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: damselfly {name}" in result.stdout


def test_no_subcommand_is_an_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def test_version_prints_package_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("damselfly ")


def test_every_subcommand_maps_to_a_module() -> None:
    assert set(cli.COMMAND_MODULES) == set(SUBCOMMANDS) - {"version"}


def test_unbuilt_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMAND_MODULES, "peer", "damselfly.peer.no_such_module")
    with pytest.raises(cli.NotBuiltError, match="not built yet"):
        cli.load_handler("peer")


def test_json_logs_when_not_a_terminal() -> None:
    stream = StringIO()
    setup_logging("peer", "DEBUG", stream=stream)
    logging.getLogger("damselfly.test").info("hello %s", "world", extra={"task": "abc"})
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "hello world"
    assert line["component"] == "peer"
    assert line["level"] == "info"
    assert line["task"] == "abc"


def test_log_level_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMSELFLY_LOG_LEVEL", "error")
    assert resolve_level(None) == "ERROR"
    assert resolve_level("debug") == "DEBUG"
    monkeypatch.setenv("DAMSELFLY_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="LOUD"):
        resolve_level(None)


def test_json_formatter_includes_exceptions() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter("peer").format(record))
    assert "RuntimeError: boom" in entry["exc"]
