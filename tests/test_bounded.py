"""Bounded input and output: the CLI reads given files only up to their limit and never
from a device or pipe; the console prints a reply's control characters escaped."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from cronbox_shared.timeutil import ManualClock
from host.delivery import ConsoleChannel, escaped
from host.service import Cronbox
from tests.cli_harness import Cli, cli_for, fresh_home, ok


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    cli = cli_for(fresh_home(tmp_path, monkeypatch, "UTC"))
    ok(cli("session", "create", "work"))
    return cli


def schedule_with(cli: Cli, flag: str, path: str) -> str:
    args = ["task", "schedule", "work", "--at", "+1h", flag, path]
    if flag == "--script":
        args += ["--prompt", "p"]
    result = cli(*args)
    assert result.exit_code != 0
    return result.output


@pytest.mark.parametrize("flag", ["--script", "--prompt-file"])
def test_a_device_is_refused_before_anything_is_read_from_it(cli: Cli, flag: str) -> None:
    assert "not a regular file" in schedule_with(cli, flag, "/dev/zero")


@pytest.mark.parametrize("flag", ["--script", "--prompt-file"])
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(
    cli: Cli, tmp_path: Path, flag: str
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "not a regular file" in schedule_with(cli, flag, str(fifo))


def test_a_file_over_the_limit_is_refused_after_reading_only_the_limit(
    cli: Cli, tmp_path: Path
) -> None:
    big = tmp_path / "big.sh"
    with big.open("wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: reading it whole would cost half a GiB
    assert "over 64 KiB" in schedule_with(cli, "--script", str(big))


def test_escaped_shows_control_characters_instead_of_sending_them() -> None:
    text = "hi\x1b[2J\n[12:00:00] INFO cronbox host stopped\u202e\r\\"
    shown = escaped(text)
    assert shown == "hi\\x1b[2J\\n[12:00:00] INFO cronbox host stopped\\u202e\\r\\\\"
    assert shown.isprintable()
    assert escaped("plain é 日本") == "plain é 日本"


@pytest.mark.anyio
async def test_the_console_prints_a_hostile_reply_on_one_line_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cronbox_shared.models import MessageKind, OutboundMessage

    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-15T08:00:00Z"))
    session = store.create_session("work")
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    message = OutboundMessage(
        id="m", seq=1, kind=MessageKind.CHAT, created_at="2026-01-15T08:00:00Z",
        in_reply_to=None, content={"text": "x"},
    )  # fmt: skip
    await ConsoleChannel().send(session, message, "\x1b[2J\n[12:00:00] INFO cronbox host stopped")
    [line] = [r.getMessage() for r in caplog.records if r.name == "cronbox.reply"]
    assert "\n" not in line and "\x1b" not in line
    assert line == "[work] \\x1b[2J\\n[12:00:00] INFO cronbox host stopped"
