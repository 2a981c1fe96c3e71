"""cronbox as a service: ``cronbox run --log-format json`` under a supervisor."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from typer.testing import CliRunner

from host.cli import app
from host.service import Cronbox
from tests.hosting import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def service_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CRONBOX_")}
    # A misspelt setting: its warning must be a JSON line too.
    env.update(
        TZ="UTC",
        CRONBOX_HOME=str(home),
        CRONBOX_IDLE_TIMEOUT="1",
        CRONBOX_MAX_CONTAINER="3",
        CRONBOX_HTTP_PORT="0",
    )
    return env


async def read_json_lines(process: Process, until: str | None) -> list[dict[str, Any]]:
    """JSON lines from the host's stderr until one has the field ``until`` (or EOF)."""
    assert process.stderr is not None
    stream = BufferedByteReceiveStream(process.stderr)
    lines: list[dict[str, Any]] = []
    while True:
        try:
            raw = await stream.receive_until(b"\n", 1 << 20)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return lines
        line = json.loads(raw)
        assert isinstance(line, dict), raw
        lines.append(line)
        if until is not None and until in line:
            return lines


async def test_run_with_json_logs_writes_one_object_per_line_with_session_fields(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    store = Cronbox.from_settings(make_settings(home))
    session = store.create_session("ops")
    message = store.send_message(session.id, "hello")
    command = [sys.executable, "-m", "host.cli", "run", "--log-format", "json"]
    async with await anyio.open_process(
        command, env=service_env(home), cwd=tmp_path, start_new_session=True
    ) as host:
        try:
            with anyio.fail_after(60):
                before = await read_json_lines(host, until="outcome")
            host.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                after = await read_json_lines(host, until=None)
                assert await host.wait() == 0
        finally:
            if host.returncode is None:
                host.kill()
    lines = before + after
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert line["time"].endswith("Z")
    settled = before[-1]
    assert settled["session"] == "ops"
    assert settled["session_id"] == session.id
    assert settled["message_id"] == message.id
    assert settled["outcome"] == "ok"
    started = [line for line in lines if line["message"].endswith("started")]
    assert started and started[0]["session_id"] == session.id and "runner" in started[0]
    assert any(line["message"] == "received SIGTERM: stopping" for line in after)
    warning = "CRONBOX_MAX_CONTAINER is not a cronbox setting; did you mean CRONBOX_MAX_CONTAINERS?"
    assert {"level": "WARNING", "message": warning}.items() <= lines[0].items()
    assert after[-1]["message"] == "cronbox host stopped"


def test_run_help_names_the_log_formats() -> None:
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "--log-format" in result.stdout and "json" in result.stdout


async def test_text_logs_to_a_pipe_are_plain_lines_not_terminal_rendering(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Cronbox.from_settings(make_settings(home))
    store.send_message(store.create_session("ops").id, "hello")
    command = [sys.executable, "-m", "host.cli", "run"]
    async with await anyio.open_process(
        command, env=service_env(home), cwd=tmp_path, start_new_session=True
    ) as host:
        assert host.stderr is not None
        stream = BufferedByteReceiveStream(host.stderr)
        try:
            first: list[str] = []
            with anyio.fail_after(60):
                while not first or "[ops] echo: hello" not in first[-1]:
                    first.append((await stream.receive_until(b"\n", 1 << 20)).decode())
            host.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                rest = ""
                while True:
                    try:
                        rest += (await stream.receive()).decode()
                    except anyio.EndOfStream:
                        break
                assert await host.wait() == 0
        finally:
            if host.returncode is None:
                host.kill()
    lines = [*first, *rest.splitlines()]
    plain = re.compile(r"\d{4}-\d\d-\d\dT[\d:]{8}\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) +cronbox")
    assert all(plain.match(line) for line in lines), lines
    assert not any("\x1b" in line for line in lines)
    assert lines[-1].endswith("cronbox.host: cronbox host stopped")
