"""The environment as the read-only commands read it (``host.environ``), against the
settings every other command reads with pydantic-settings (``host.config.Settings``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cronbox_shared.errors import InvalidInput
from host.config import Settings
from host.environ import HOST_SETTINGS, configured_home
from tests.cli_harness import fresh_home


def test_the_names_it_knows_are_the_fields_of_the_settings() -> None:
    assert frozenset(Settings.model_fields) == HOST_SETTINGS


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own and an environment without cronbox's variables."""
    for name in list(os.environ):
        if name.upper().startswith("CRONBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


HOME_SOURCES = [
    ("nothing set", {}, None),
    ("environment", {"CRONBOX_HOME": "/from/env"}, None),
    ("lower-case name", {"cronbox_home": "/from/lower"}, None),
    ("empty value", {"CRONBOX_HOME": ""}, None),
    (".env", {}, "CRONBOX_HOME=/from/dotenv\n"),
    (".env, lower case", {}, "cronbox_home=/from/dotenv\n"),
    (".env with a comment and quotes", {}, '# home\nCRONBOX_HOME="/q d"  # here\n'),
    ("environment over .env", {"CRONBOX_HOME": "/env"}, "CRONBOX_HOME=/dotenv\n"),
    (".env naming it without a value", {}, "CRONBOX_HOME\n"),
    ("other names only", {"CRONBOX_MAX_CONTAINERS": "3"}, "CRONBOX_SWEEP_INTERVAL=2\n"),
]


@pytest.mark.parametrize(
    ("env", "dotenv"), [c[1:] for c in HOME_SOURCES], ids=[c[0] for c in HOME_SOURCES]
)
def test_the_home_is_the_one_the_settings_read(
    clean: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], dotenv: str | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if dotenv is not None:
        (clean / ".env").write_text(dotenv, encoding="utf-8")
    assert configured_home(os.environ) == Settings().home


def test_a_dotenv_that_is_not_utf8_is_one_sentence(clean: Path) -> None:
    (clean / ".env").write_bytes(b"CRONBOX_HOME=/x\nNAME=\xff\n")
    with pytest.raises(InvalidInput, match=r"^\.env is not valid UTF-8 text \(byte 0xff"):
        configured_home(os.environ)


def cronbox(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args], cwd=home.parent, capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, "CRONBOX_HOME": str(home), **env},
    )  # fmt: skip


@pytest.mark.parametrize("command", [["status"], ["task", "list"]])
def test_a_read_only_command_uses_only_the_home_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    home = fresh_home(tmp_path, monkeypatch, "UTC")
    bad = {"CRONBOX_MAX_CONTAINERS": "many"}
    assert cronbox(home, "session", "create", "work", env={}).returncode == 0
    read = cronbox(home, *command, env=bad)
    assert read.returncode == 0, read.stderr
    assert "error" not in read.stderr
    # A command that uses the settings still refuses the bad value, in one sentence.
    refused = cronbox(home, "session", "create", "other", env=bad)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: CRONBOX_MAX_CONTAINERS is not valid")


@pytest.mark.parametrize("command", [["status"], ["session", "list"]])
def test_a_dotenv_that_is_not_utf8_fails_every_command_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    home = fresh_home(tmp_path, monkeypatch, "UTC")
    (home.parent / ".env").write_bytes(b"X=\xff\n")
    done = cronbox(home, *command, env={})
    assert done.returncode == 2
    assert done.stderr == (
        "error: .env is not valid UTF-8 text (byte 0xff at offset 2); save it in UTF-8\n"
    )
