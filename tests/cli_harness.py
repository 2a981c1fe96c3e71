"""The CLI tests' shared harness: a fresh home and an in-process ``cronbox``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from host.cli import app

Cli = Callable[..., Result]


def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tz: str) -> Path:
    """A CRONBOX_HOME not made yet; the working directory has no .env and TZ is ``tz``."""
    monkeypatch.setenv("TZ", tz)
    monkeypatch.setenv("CRONBOX_HOME", str(tmp_path / "default-home"))
    for name in ("CRONBOX_MIN_INTERVAL", "CRONBOX_MAX_TASKS_PER_SESSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def cli_for(home: Path) -> Cli:
    """Run ``cronbox ARGS --home HOME`` in-process; options go after the subcommand, and
    ``input`` is what stdin holds."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, [*args, "--home", str(home)], input=input)

    return invoke


def ok(result: Result) -> Result:
    """The result of a command that must have succeeded."""
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Result) -> Any:
    """The ``--json`` output of a command that must have succeeded."""
    return json.loads(ok(result).stdout)
