"""The conversation commands (``log``, ``send --wait``, ``task output``) and table layout."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus
from cronbox_shared.timeutil import fmt
from host.cli import render_history, render_tasks, unwrapped_width
from host.service import Cronbox
from tests.cli_harness import Cli, as_json, cli_for, fresh_home, ok
from tests.hosting import make_settings, running_host, wait_for

HOST_TZ = "America/New_York"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_home(tmp_path, monkeypatch, HOST_TZ)


@pytest.fixture
def cli(home: Path) -> Cli:
    return cli_for(home)


@pytest.fixture
def session(cli: Cli) -> str:
    ok(cli("session", "create", "work", "--timezone", "Europe/Paris"))
    return "work"


def cronbox(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args, "--home", str(home)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def session_id(cli: Cli) -> str:
    (row,) = as_json(cli("session", "list", "--json"))
    return str(row["id"])


def finish(home: Path, sid: str, message_id: str, status: AckStatus, **ack: str) -> None:
    """Speak the runner's side: a processing ack, then the final one, each settled."""
    store = Cronbox(home, default_timezone=HOST_TZ)
    with sdb.outbound(store.session_dir(sid)) as out:
        sdb.set_ack(out, message_id, 0, AckStatus.PROCESSING, fmt(store.now()))
    store.settle_acks(sid, timedelta(minutes=10))
    with sdb.outbound(store.session_dir(sid)) as out:
        sdb.set_ack(
            out, message_id, 0, status, fmt(store.now()), ack.get("error"), ack.get("output")
        )
    store.settle_acks(sid, timedelta(minutes=10))


# --- cronbox log ------------------------------------------------------------------------


def test_log_shows_messages_in_time_order_in_the_sessions_zone(cli: Cli, session: str) -> None:
    ok(cli("send", "work", "first question"))
    ok(cli("send", "work", "second question"))
    lines = ok(cli("log", "work")).stdout.splitlines()
    assert len(lines) == 2
    assert "→ you" in lines[0] and "first question" in lines[0]
    assert "second question" in lines[1]
    assert all(" CET " in line or " CEST " in line for line in lines)
    assert all("[pending]" in line for line in lines)


def test_log_json_prints_the_log_entries_and_n_keeps_the_newest(cli: Cli, session: str) -> None:
    for text in ("one", "two", "three"):
        ok(cli("send", "work", text))
    entries = as_json(cli("log", "work", "--json"))
    assert [e["text"] for e in entries] == ["one", "two", "three"]
    assert {e["direction"] for e in entries} == {"in"}
    assert {e["kind"] for e in entries} == {"chat"}
    assert set(entries[0]) >= {"at", "direction", "kind", "id", "text", "status", "outcome"}
    assert [e["text"] for e in as_json(cli("log", "work", "-n", "2", "--json"))] == ["two", "three"]


def test_log_shows_a_task_occurrence_with_its_outcome_in_the_status_vocabulary(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "check prs", "--at", "now", "--id", "t1"))
    finish(home, session_id(cli), "t1", AckStatus.FAILED, error="gate crashed")
    (line,) = ok(cli("log", "work")).stdout.splitlines()
    assert "→ task" in line
    assert "check prs" in line
    assert "[failed] gate crashed" in line
    (entry,) = as_json(cli("log", "work", "--json"))
    assert (entry["kind"], entry["outcome"]) == ("task", "error")


def test_log_indents_the_later_lines_of_a_long_message(cli: Cli, session: str) -> None:
    ok(cli("send", "work", "line one\nline two"))
    first, second = ok(cli("log", "work")).stdout.splitlines()
    assert "→ you" in first and second.endswith("line two  [pending]")
    assert first.index("line one") == second.index("line two")


def test_log_of_a_quiet_session_says_so(cli: Cli, session: str) -> None:
    assert "has no messages yet" in ok(cli("log", "work")).stdout
    assert as_json(cli("log", "work", "--json")) == []


def test_log_count_out_of_range_is_one_sentence(cli: Cli, session: str) -> None:
    result = cli("log", "work", "-n", "0")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: -n 0 is out of range; give a count of entries from 1 to 1000"
    )


def read_until(stream: Any, needle: str, limit: float = 30) -> str:
    """Lines read from ``stream`` until one holds ``needle``; fails after ``limit`` s."""
    seen = ""
    deadline = time.monotonic() + limit
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen in {seen!r}"
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            line = stream.readline()
            assert line, f"output ended before {needle!r}: {seen!r}"
            seen += line
    return seen


@pytest.mark.e2e
def test_log_follow_prints_new_entries_until_ctrl_c(cli: Cli, session: str, home: Path) -> None:
    ok(cli("send", "work", "already there"))
    follower = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "log", "work", "--follow", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        assert "already there" in read_until(follower.stdout, "already there")
        ok(cli("send", "work", "sent while following"))
        later = read_until(follower.stdout, "sent while following")
        assert "already there" not in later  # an entry is printed once
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert "Traceback" not in err


# --- cronbox send --wait ----------------------------------------------------------------


def test_send_wait_without_a_host_times_out_with_a_hint(cli: Cli, session: str) -> None:
    result = cli("send", "work", "anyone?", "--wait", "--timeout", "1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: no answer within 1 s; is the host running? start it with cronbox run"
    ]
    # The message stays queued for when a host starts.
    (entry,) = as_json(cli("log", "work", "--json"))
    assert (entry["text"], entry["status"]) == ("anyone?", "pending")


@pytest.mark.e2e
def test_send_wait_times_out_as_a_subprocess(cli: Cli, session: str, home: Path) -> None:
    done = cronbox("send", "work", "hello?", "--wait", "--timeout", "1", home=home)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: no answer within 1 s; is the host running? start it with cronbox run"
    )


def test_send_timeout_without_wait_is_refused(cli: Cli, session: str) -> None:
    result = cli("send", "work", "hi", "--timeout", "5")
    assert result.exit_code == 2
    assert "--timeout only applies with --wait" in result.stderr
    assert as_json(cli("log", "work", "--json")) == []


async def cronbox_async(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: cronbox(*args, home=home, timeout=90))


@pytest.mark.anyio
@pytest.mark.e2e
async def test_send_wait_prints_the_agents_answer_from_a_running_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    home = tmp_path / "home"
    settings = make_settings(home)
    store = Cronbox.from_settings(settings)
    store.create_session("chatty")
    store.create_session("broken", agent="fail")
    async with running_host(settings):
        answered = await cronbox_async("send", "chatty", "hello there", "--wait", home=home)
        failed = await cronbox_async("send", "broken", "hi", "--wait", "--timeout", "60", home=home)
        task = store.schedule_task("chatty", {"prompt": "ping the task", "processAfter": "now"})
        await wait_for(lambda: [r for r in store.runs_for(task.id) if r.outcome is not None])
        logged = await cronbox_async("log", "chatty", home=home)
    assert answered.returncode == 0, answered.stderr
    assert "hello there" in answered.stdout
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("error: the agent could not answer: ")
    assert "always fails" in line
    assert logged.returncode == 0, logged.stderr
    lines = logged.stdout.splitlines()
    assert any("→ you" in x and "hello there" in x for x in lines)
    assert any("← agent" in x for x in lines)
    assert any("→ task" in x and "ping the task" in x and "[ok]" in x for x in lines)

    # The task's run: its id is in the history, and `task output` prints its reply.
    history = cronbox("task", "history", task.id, home=home)
    [run] = store.runs_for(task.id)
    assert re.search(rf"│ {run.id} +│", history.stdout), history.stdout
    output = cronbox("task", "output", str(run.id), home=home)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "\n".join(store.replies(run.session_id, run.message_id))
    assert "ping the task" in output.stdout


# --- cronbox task output and history ----------------------------------------------------


def test_task_output_prints_a_failed_runs_error(cli: Cli, session: str, home: Path) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "t1"))
    finish(home, session_id(cli), "t1", AckStatus.FAILED, error="the gate\nexited 3")
    (run,) = as_json(cli("task", "history", "t1", "--json"))["runs"]
    assert run["outcome"] == "error"  # JSON keeps the stored value
    printed = ok(cli("task", "output", str(run["id"]))).stdout
    assert printed == f"run {run['id']} failed: the gate\nexited 3\n"
    assert as_json(cli("task", "output", str(run["id"]), "--json"))["replies"] == []


def test_task_output_of_an_unknown_run_is_one_sentence(cli: Cli, session: str) -> None:
    result = cli("task", "output", "999")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no run with id 999; `cronbox task history ID` shows a task's runs"
    )


def test_history_shows_run_id_schedule_lateness_and_failed_for_an_error(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "t1"))
    finish(home, session_id(cli), "t1", AckStatus.FAILED, error="boom")
    (run,) = as_json(cli("task", "history", "t1", "--json"))["runs"]
    table = ok(cli("task", "history", "t1")).stdout.splitlines()
    (header,) = [line for line in table if "┃" in line]
    rows = [line for line in table if "│" in line]
    for column in ("run", "scheduled for", "started", "late", "duration", "outcome"):
        assert column in header
    (row,) = rows
    assert row.startswith(f"│ {run['id']} ")
    assert " failed " in row
    assert " error " not in row
    assert "seconds" in row  # the lateness and the duration


def test_history_preview_of_multiline_output_stays_on_one_line(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "t1"))
    finish(home, session_id(cli), "t1", AckStatus.COMPLETED, output='{"wakeAgent": false}\n\n')
    rows = [line for line in ok(cli("task", "history", "t1")).stdout.splitlines() if "│" in line]
    assert len(rows) == 1  # one run, no blank continuation line
    assert '{"wakeAgent": false} │' in rows[0]


# --- tables in a narrow terminal --------------------------------------------------------


def narrow(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, highlight=False, color_system=None), out


def test_task_list_in_80_columns_keeps_every_id_whole(cli: Cli, session: str, home: Path) -> None:
    prompt = "summarise the overnight alerts and open pull requests " * 3
    for cron in ("0 9 * * MON-FRI", "*/5 * * * *", "@daily"):
        ok(cli("task", "schedule", "work", "--prompt", prompt, "--cron", cron))
    store = Cronbox(home)
    views = store.list_tasks(None)
    console, out = narrow()
    console.print(render_tasks(views, store.now(), console))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    for view in views:
        assert any(f"│ {view.series_id} │" in line for line in lines), out.getvalue()
    assert "…" not in "".join(line.split("│")[1] for line in lines if "│" in line)


TABLES = {
    "words": [["a few words here", "x"], ["one", "two three four five"]],
    "wide characters": [["日本語のテキスト", "ok"], ["€ and ümlauts", "a"]],
    "lines": [["first line\nand a much longer second line", "b"]],
    "empty cells": [["", ""], ["", "z"]],
}


@pytest.mark.parametrize("rows", TABLES.values(), ids=TABLES.keys())
@pytest.mark.parametrize("min_width", [None, 30])
def test_the_unwrapped_width_bounds_what_rich_measures(
    rows: list[list[str]], min_width: int | None
) -> None:
    table = Table(Column("first", min_width=min_width), Column("second", no_wrap=True))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console, out = narrow(10_000)
    unbounded = console.options.update(max_width=10**6)
    assert unwrapped_width(table) >= Measurement.get(console, unbounded, table).maximum
    # Laid out in that width, no cell wraps: the table is as many lines as its rows'.
    console.width = unwrapped_width(table)
    console.print(table)
    lines = sum(max(len(cell.split("\n")) for cell in row) for row in rows)
    assert len(out.getvalue().splitlines()) == lines + 4  # rules and the header


def test_history_in_80_columns_keeps_the_run_id(cli: Cli, session: str, home: Path) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "t1"))
    finish(home, session_id(cli), "t1", AckStatus.COMPLETED, output="x " * 200)
    store = Cronbox(home)
    runs = store.runs_for("t1")
    console, out = narrow()
    console.print(render_history(runs, ZoneInfo(HOST_TZ), store.now(), console))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith(f"│ {runs[0].id} ") for line in lines)


@pytest.mark.e2e
def test_task_list_in_a_real_80_column_terminal_shows_whole_ids(
    cli: Cli, session: str, home: Path
) -> None:
    prompt = "a long prompt that would push the table past the edge of the terminal " * 2
    task = as_json(
        cli("task", "schedule", "work", "--prompt", prompt, "--cron", "@hourly", "--json")
    )
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "host.cli", "task", "list", "--home", str(home)],
            stdout=follower, stderr=subprocess.PIPE, timeout=60, check=False,
            env={**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm"},
        )  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    screen = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    lines = [line for line in screen.splitlines() if line]
    assert lines and all(len(line) <= 80 for line in lines), screen
    assert f"│ {task['series_id']} │" in screen
