"""Issue 8: running ended work again, prompts from files, operator-only task settings and
deleting a session whose runner is at work, through the ``cronbox`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import Result

from cronbox_shared import sessiondb as sdb
from cronbox_shared.actions import parse_action
from cronbox_shared.errors import InvalidAction, InvalidInput
from cronbox_shared.models import AckStatus
from cronbox_shared.recurrence import next_fire, stored_recurrence
from cronbox_shared.tasks import UpdateRequest
from cronbox_shared.timeutil import fmt, parse_utc, zone
from host import cli as cli_module
from host.runtimes.base import RunnerSpec
from host.runtimes.process import PID_FILE, ProcessRuntime
from host.service import Cronbox
from tests.cli_harness import Cli, as_json, cli_for, fresh_home, ok

HANG_GUARD = 30
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_home(tmp_path, monkeypatch, "UTC")


@pytest.fixture
def cli(home: Path) -> Cli:
    return cli_for(home)


@pytest.fixture
def session(cli: Cli) -> str:
    ok(cli("session", "create", "work", "--timezone", "UTC"))
    return "work"


def refused(result: Result) -> str:
    """The one error sentence of a refused command (exit 2, nothing on stdout)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def run_module(
    *args: str, home: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args, "--home", str(home)],
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def finish(home: Path, message_id: str, status: AckStatus) -> None:
    """Play the runner: end ``message_id`` with ``status``, then settle as the host does."""
    store = Cronbox(home)
    sid = store.get_session("work").id
    with sdb.outbound(store.session_dir(sid)) as db, db.atomic():
        sdb.set_ack(db, message_id, 0, status, fmt(store.now()), None, status.value)
    store.settle_acks(sid, timedelta(minutes=10))


def history(cli: Cli, task: str) -> list[tuple[str, str]]:
    """(occurrence id, outcome) of a task's runs, oldest first."""
    runs = as_json(cli("task", "history", task, "--json"))["runs"]
    return sorted((r["message_id"], r["outcome"]) for r in runs)


# --- task run on ended work ------------------------------------------------------------


def test_task_run_of_a_failed_one_time_task_runs_it_again_and_history_keeps_both(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "once"))
    finish(home, "once", AckStatus.FAILED)
    queued = as_json(cli("task", "run", "once", "--json"))
    assert queued["series_id"] == "once"
    assert queued["id"] != "once"
    finish(home, queued["id"], AckStatus.COMPLETED)
    assert history(cli, "once") == sorted([("once", "error"), (queued["id"], "ok")])
    store = Cronbox(home)
    entry = store.audit_entries(store.get_session("work").id)[0]
    assert (entry.action, entry.detail) == ("task.run", {"rerun_of": "failed"})


def test_task_run_of_a_completed_one_time_task_runs_it_again(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "once"))
    finish(home, "once", AckStatus.COMPLETED)
    first = as_json(cli("task", "run", "once", "--json"))
    finish(home, first["id"], AckStatus.COMPLETED)
    second = as_json(cli("task", "run", "once", "--json"))
    finish(home, second["id"], AckStatus.FAILED)
    assert history(cli, "once") == sorted(
        [("once", "ok"), (first["id"], "ok"), (second["id"], "error")]
    )


def test_cancel_calls_off_a_rerun_of_an_ended_task_that_has_not_started(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "once"))
    finish(home, "once", AckStatus.FAILED)
    queued = as_json(cli("task", "run", "once", "--json"))
    view = as_json(cli("task", "cancel", "once", "--json"))
    assert view["status"] == "failed", "the task itself stays as it ended"
    assert live_row(home, "once").id == queued["id"]
    assert live_row(home, "once").status.value == "cancelled"
    line = refused(cli("task", "cancel", "once"))
    assert "has no live occurrence" in line


def test_task_run_of_a_cancelled_task_is_refused_in_one_sentence(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--id", "once"))
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@daily", "--id", "daily"))
    for task in ("once", "daily"):
        ok(cli("task", "cancel", task))
        line = refused(cli("task", "run", task))
        assert line == (
            f'error: task "{task}" was cancelled, so it is not run again; '
            "schedule a new task instead"
        )
    store = Cronbox(home)
    assert len(store.inbound_rows(store.get_session("work").id)) == 2, "nothing queued"


def test_task_run_in_a_subprocess_reruns_a_failed_task(session: str, home: Path) -> None:
    made = run_module(
        "task", "schedule", "work", "--prompt", "p", "--at", "now", "--id", "once", home=home
    )
    assert made.returncode == 0, made.stderr
    finish(home, "once", AckStatus.FAILED)
    done = run_module("task", "run", "once", "--json", home=home)
    assert done.returncode == 0, done.stderr
    queued = json.loads(done.stdout)
    store = Cronbox(home)
    row = store.message(store.get_session("work").id, queued["id"])
    assert (row.status.value, row.series_id, row.prompt) == ("pending", "once", "p")


# --- --prompt-file ---------------------------------------------------------------------


def test_schedule_and_update_read_the_prompt_from_a_file_or_stdin(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    text = "Summarise the inbox.\nKeep it short: 3 bullets.\n"
    (tmp_path / "prompt.txt").write_text(text, encoding="utf-8")
    task = as_json(
        cli("task", "schedule", "work", "--prompt-file", "prompt.txt", "--at", "+1h", "--json")
    )
    assert task["prompt"] == text
    (tmp_path / "new.txt").write_text("Only the headlines.", encoding="utf-8")
    updated = as_json(cli("task", "update", task["id"], "--prompt-file", "new.txt", "--json"))
    assert updated["prompt"] == "Only the headlines."


def test_update_reads_the_new_prompt_from_stdin(cli: Cli, session: str) -> None:
    task = as_json(cli("task", "schedule", "work", "--prompt", "old", "--at", "+1h", "--json"))
    updated = as_json(
        cli("task", "update", task["id"], "--prompt-file", "-", "--json", input="new one\n")
    )
    assert updated["prompt"] == "new one\n"


def test_schedule_reads_the_prompt_from_stdin_in_a_subprocess(session: str, home: Path) -> None:
    done = run_module(
        "task", "schedule", "work", "--prompt-file", "-", "--at", "+1h", "--json",
        home=home, stdin="from a pipe",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prompt"] == "from a pipe"


@pytest.mark.parametrize("command", ["schedule", "update"])
def test_prompt_and_prompt_file_together_are_one_error_sentence(
    cli: Cli, session: str, tmp_path: Path, command: str
) -> None:
    (tmp_path / "p.txt").write_text("x")
    task = as_json(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--json"))
    target = (
        ["schedule", "work", "--at", "+1h"] if command == "schedule" else ["update", task["id"]]
    )
    line = refused(cli("task", *target, "--prompt", "p", "--prompt-file", "p.txt"))
    assert line == "error: --prompt and --prompt-file contradict each other; give one of them"


def test_an_unreadable_prompt_file_is_one_error_sentence(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    line = refused(cli("task", "schedule", "work", "--prompt-file", "missing.txt", "--at", "+1h"))
    assert line.startswith('error: cannot read prompt file "missing.txt"')
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    line = refused(cli("task", "schedule", "work", "--prompt-file", "latin1.txt", "--at", "+1h"))
    assert line == 'error: prompt file "latin1.txt" is not UTF-8 text; give a text file'


# --- task update: --timeout, --misfire-grace, --timezone --------------------------------


def live_row(home: Path, series: str) -> Any:
    store = Cronbox(home)
    sid = store.get_session("work").id
    return next(r for r in reversed(store.inbound_rows(sid)) if r.series_id == series)


def test_update_changes_the_timeout_and_misfire_grace_of_the_live_occurrence(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@hourly", "--id", "t"))
    ok(cli("task", "update", "t", "--timeout", "120", "--misfire-grace", "30"))
    row = live_row(home, "t")
    assert (row.timeout, row.misfire_grace) == (120, 30)
    line = refused(cli("task", "update", "t", "--timeout", "0"))
    assert line.startswith("error: --timeout 0 is too short")


def test_a_new_timezone_recomputes_a_recurring_tasks_next_run_in_that_zone(
    cli: Cli, session: str, home: Path
) -> None:
    task = as_json(
        cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 9 * * *", "--json")
    )
    assert task["next_run_local"].endswith("T09:00:00Z")
    moved = as_json(cli("task", "update", task["id"], "--timezone", "Asia/Tokyo", "--json"))
    assert moved["timezone"] == "Asia/Tokyo"
    assert moved["next_run_local"].endswith("09:00:00+09:00")
    store = Cronbox(home)
    expected = next_fire(stored_recurrence("0 9 * * *"), zone("Asia/Tokyo"), store.now())
    assert parse_utc(moved["next_run"]) == expected


def test_a_new_timezone_keeps_a_one_time_tasks_instant(cli: Cli, session: str) -> None:
    task = as_json(
        cli("task", "schedule", "work", "--prompt", "p", "--at", "2031-01-15T09:00:00", "--json")
    )
    moved = as_json(cli("task", "update", task["id"], "--timezone", "Europe/Berlin", "--json"))
    assert moved["next_run"] == task["next_run"]
    assert parse_utc(moved["next_run"]) == parse_utc("2031-01-15T09:00:00Z")
    assert moved["next_run_local"] == "2031-01-15T10:00:00+01:00"


def test_a_naive_at_given_with_a_new_timezone_is_read_in_that_zone(cli: Cli, session: str) -> None:
    task = as_json(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--json"))
    moved = as_json(
        cli(
            "task",
            "update",
            task["id"],
            "--timezone",
            "Asia/Tokyo",
            "--at",
            "2031-01-15T09:00:00",
            "--json",
        )
    )
    assert parse_utc(moved["next_run"]) == parse_utc("2031-01-15T00:00:00Z")


def test_an_unknown_timezone_in_an_update_is_one_error_sentence(cli: Cli, session: str) -> None:
    task = as_json(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--json"))
    line = refused(cli("task", "update", task["id"], "--timezone", "Mars/Olympus"))
    assert line.startswith('error: timezone "Mars/Olympus" is not a known IANA zone')


def test_update_settings_in_a_subprocess(session: str, home: Path) -> None:
    made = run_module(
        "task", "schedule", "work", "--prompt", "p", "--cron", "@daily", "--id", "t", home=home
    )
    assert made.returncode == 0, made.stderr
    done = run_module("task", "update", "t", "--timeout", "60", "--timezone", "Asia/Tokyo",
                      home=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = live_row(home, "t")
    assert (row.timeout, row.timezone) == (60, "Asia/Tokyo")


def test_agents_cannot_send_the_operator_only_settings() -> None:
    for field, value in (("timeout", 60), ("misfireGrace", 5), ("timezone", "UTC")):
        with pytest.raises(InvalidInput, match=field):
            UpdateRequest.parse({"taskId": "t", field: value})
        with pytest.raises(InvalidAction, match=field):
            parse_action({"action": "update_task", "taskId": "t", field: value})


# --- session delete ---------------------------------------------------------------------


def session_names(cli: Cli) -> list[str]:
    return [s["name"] for s in as_json(cli("session", "list", "--json"))]


def test_session_delete_without_yes_and_without_a_terminal_deletes_nothing(
    cli: Cli, session: str
) -> None:
    line = refused(cli("session", "delete", "work"))
    assert line == (
        "error: deleting session work needs confirmation and stdin is not a terminal; "
        "add --yes to delete it"
    )
    assert session_names(cli) == ["work"]


def test_session_delete_asks_for_confirmation_on_a_terminal(
    cli: Cli, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module, "interactive", lambda: True)
    declined = cli("session", "delete", "work", input="n\n")
    assert declined.exit_code == 2
    assert "session work was not deleted" in declined.stderr
    assert session_names(cli) == ["work"]
    ok(cli("session", "delete", "work", input="y\n"))
    assert session_names(cli) == []


def test_session_delete_in_a_subprocess_without_a_terminal_asks_for_yes(
    session: str, home: Path
) -> None:
    done = run_module("session", "delete", "work", home=home)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: deleting session work needs confirmation and stdin is not a terminal; "
        "add --yes to delete it"
    ]
    assert Cronbox(home).get_session("work").name == "work"


@pytest.mark.anyio
async def test_session_delete_stops_the_sessions_live_runner_then_deletes_it(
    session: str, home: Path
) -> None:
    store = Cronbox(home)
    target = store.get_session("work")
    other = store.create_session("other")
    runtime = ProcessRuntime(SLEEPER)
    handles = []
    with anyio.fail_after(HANG_GUARD):
        for s in (target, other):
            spec = RunnerSpec(s.id, store.session_dir(s.id), home, {})
            handle = await runtime.start(spec)
            store.acquire_lease(s.id, "host-a", handle.ref)
            handles.append(handle)
    try:
        done = await anyio.to_thread.run_sync(
            lambda: run_module("session", "delete", "work", "--yes", "--json", home=home)
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["id"] == target.id
        mine, theirs = handles
        assert not await runtime.is_running(mine)
        assert await runtime.is_running(theirs), "another session's runner is left alone"
        assert [lease.session_id for lease in store.leases()] == [other.id]
        assert not store.session_dir(target.id).exists()
        assert (store.session_dir(other.id) / PID_FILE).exists()
        entry = store.audit_entries(target.id)[0]
        assert (entry.action, entry.detail) == ("session.delete", {"stopped_runner": mine.ref})
    finally:
        with anyio.fail_after(HANG_GUARD):
            for handle in handles:
                await runtime.kill(handle)
