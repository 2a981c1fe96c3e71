"""The ``cronbox`` CLI against real SQLite files under a temporary ``--home``."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus
from cronbox_shared.timeutil import fmt, is_canonical, parse_utc
from host.cli import LazyCommands, _Pending, app
from host.service import Cronbox
from tests.cli_harness import Cli, as_json, cli_for, fresh_home, ok

HOST_TZ = "America/New_York"
# Far enough ahead that "in the past" never applies, whatever today's date is.
FUTURE_WINTER = "2031-01-15T09:00:00"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_home(tmp_path, monkeypatch, HOST_TZ)


@pytest.fixture
def cli(home: Path) -> Cli:
    return cli_for(home)


@pytest.fixture
def session(cli: Cli) -> str:
    result = cli("session", "create", "work")
    assert result.exit_code == 0, result.output
    return "work"


def schedule(cli: Cli, *args: str) -> dict[str, Any]:
    task: dict[str, Any] = as_json(cli("task", "schedule", "work", *args, "--json"))
    return task


def tasks(cli: Cli, *args: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = as_json(cli("task", "list", *args, "--json"))
    return listed


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMAND_PATHS = list(walk(ROOT))


def lookup(path: tuple[str, ...]) -> Any:
    command = ROOT
    for name in path:
        assert isinstance(command, TyperGroup)
        command = command.commands[name]
    return command


# --- help -------------------------------------------------------------------------------


def test_every_command_option_and_argument_has_help_text() -> None:
    missing = []
    for path in COMMAND_PATHS:
        command = lookup(path)
        where = " ".join(("cronbox", *path))
        if not (command.help or "").strip():
            missing.append(f"{where}: command")
        for param in command.params:
            if param.name == "help":
                continue
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{where}: {param.name}")
    assert missing == []


def test_every_leaf_command_takes_home_and_json() -> None:
    lacking = []
    for path in COMMAND_PATHS:
        command = lookup(path)
        if isinstance(command, TyperGroup):
            continue
        flags = {opt for param in command.params for opt in param.opts}
        if not {"--home", "--json"} <= flags:
            lacking.append(" ".join(path))
    assert lacking == []


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "cronbox")
def test_help_flag_prints_the_commands_description(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    first_line = (lookup(path).help or "").strip().splitlines()[0]
    assert first_line and first_line in " ".join(result.stdout.split())


def help_text(root: Any, path: tuple[str, ...]) -> str:
    """What ``cronbox PATH --help`` prints, run through the click command ``root``."""
    with CliRunner().isolation() as (stdout, _stderr, _output):
        with pytest.raises(SystemExit) as exited:
            root.main(args=[*path, "--help"], prog_name="cronbox")
        text = stdout.getvalue().decode()
    assert exited.value.code == 0
    return text


def param_shape(param: Any) -> tuple[Any, ...]:
    return (
        type(param), param.name, param.opts, param.secondary_opts, param.required,
        repr(param.default), param.type_descriptor.annotation, param.nargs, param.multiple,
        getattr(param, "is_flag", None), getattr(param, "help", None),
    )  # fmt: skip


def test_the_lazily_made_commands_equal_the_ones_typer_makes() -> None:
    lazy = app.lazy_command()
    assert list(walk(lazy)) == COMMAND_PATHS
    for path in COMMAND_PATHS:
        made: Any = lazy
        expected: Any = ROOT
        for name in path:
            made, expected = made.commands[name], expected.commands[name]
        assert type(made) is type(expected)
        assert (made.name, made.help, made.no_args_is_help) == (
            expected.name, expected.help, expected.no_args_is_help,
        )  # fmt: skip
        assert [param_shape(p) for p in made.params] == [param_shape(p) for p in expected.params]
        assert help_text(lazy, path) == help_text(ROOT, path)


def test_a_command_is_made_only_when_it_is_looked_up() -> None:
    def made(group: Any) -> set[str]:
        commands: LazyCommands = group.commands
        return {n for n, c in commands._commands.items() if not isinstance(c, _Pending)}

    lazy = app.lazy_command()
    assert made(lazy) == set()
    task: Any = lazy.commands["task"]
    assert made(lazy) == {"task"}
    assert made(task) == set()
    task.commands["list"]
    assert made(task) == {"list"}


def test_the_cli_offers_the_commands_of_the_spec() -> None:
    assert {" ".join(p) for p in COMMAND_PATHS} >= {
        "session create", "session list", "send", "cron", "task schedule", "task list",
        "task cancel", "task pause", "task resume", "task update", "task history",
    }  # fmt: skip


# --- sessions ---------------------------------------------------------------------------


def test_session_create_then_list_shows_name_agent_and_timezone(cli: Cli) -> None:
    created = ok(cli("session", "create", "work", "--agent", "scripted"))
    assert "created session work" in created.stdout
    listed = ok(cli("session", "list")).stdout
    assert "work" in listed
    assert "scripted" in listed
    assert HOST_TZ in listed


def test_session_json_output_is_the_session_record(cli: Cli) -> None:
    created = as_json(cli("session", "create", "tokyo", "--timezone", "Asia/Tokyo", "--json"))
    assert created["name"] == "tokyo"
    assert created["timezone"] == "Asia/Tokyo"
    assert created["agent"] == "echo"
    assert created["id"].startswith("s-")
    listed = as_json(cli("session", "list", "--json"))
    assert [s["id"] for s in listed] == [created["id"]]


def test_session_with_taken_name_is_refused(cli: Cli, session: str) -> None:
    result = cli("session", "create", session)
    assert result.exit_code == 2
    assert "already exists" in result.stderr


def test_session_update_changes_agent_and_timezone(cli: Cli, session: str) -> None:
    updated = as_json(cli("session", "update", session, "--agent", "scripted",
                          "--timezone", "Asia/Tokyo", "--json"))  # fmt: skip
    assert (updated["agent"], updated["timezone"]) == ("scripted", "Asia/Tokyo")
    assert "updated session work" in ok(cli("session", "update", session, "--agent", "echo")).stdout
    refused = cli("session", "update", session)
    assert refused.exit_code == 2
    assert "nothing to change" in refused.stderr


def test_session_container_limits_are_kept_merged_and_shown(cli: Cli) -> None:
    made = as_json(cli("session", "create", "boxed", "--memory", "256m", "--pids", "64", "--json"))
    assert made["container"] == {"memory": "256m", "pids": 64}
    updated = as_json(cli("session", "update", "boxed", "--cpus", "0.5", "--network", "lab",
                          "--json"))  # fmt: skip
    assert updated["container"] == {"memory": "256m", "pids": 64, "cpus": 0.5, "network": "lab"}
    line = ok(cli("session", "update", "boxed", "--memory", "1g")).stdout
    assert "network lab, memory 1g, cpus 0.5, pids 64" in line


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--memory", "lots"], 'memory limit "lots" is not a size; write it like 512m or 1g'),
        (["--memory", "1m"], 'memory limit "1m" is below the 32m a runner needs to start'),
        (["--cpus", "0"], "cpus 0 must be above 0"),
        (["--cpus", "999"], "cpus 999 must be above 0 and at most"),
        (["--pids", "3"], "pids limit 3 is below the 16 a runner needs"),
        (["--network", "host"], 'network "host" would share another namespace'),
        (["--network", "container:web"], 'network "container:web" would share another'),
        (["--network", "no/such"], 'network "no/such" is not a Docker network name'),
    ],
)
def test_bad_container_limits_get_one_sentence_and_write_nothing(
    cli: Cli, home: Path, flags: list[str], says: str
) -> None:
    created = cli("session", "create", "boxed", *flags)
    assert created.exit_code == 2
    assert says in created.stderr and len(created.stderr.strip().splitlines()) == 1
    assert as_json(cli("session", "list", "--json")) == []
    ok(cli("session", "create", "boxed"))
    updated = cli("session", "update", "boxed", *flags)
    assert updated.exit_code == 2 and says in updated.stderr
    assert as_json(cli("session", "list", "--json"))[0]["container"] == {}


def test_session_delete_forgets_the_session(cli: Cli, session: str, home: Path) -> None:
    gone = as_json(cli("session", "delete", session, "--yes", "--json"))
    assert not (home / "sessions" / gone["id"]).exists()
    assert as_json(cli("session", "list", "--json")) == []
    again = cli("session", "delete", session)
    assert again.exit_code == 2
    assert "no session named" in again.stderr


def test_send_queues_a_message_that_makes_the_session_due(cli: Cli, session: str) -> None:
    sent = as_json(cli("send", session, "hello there", "--json"))
    assert sent["kind"] == "chat"
    assert sent["content"]["text"] == "hello there"
    (listed,) = as_json(cli("session", "list", "--json"))
    assert listed["next_due_at"] == sent["process_after"]


# --- scheduling -------------------------------------------------------------------------


def test_naive_at_is_read_in_the_host_zone(cli: Cli, session: str) -> None:
    task = schedule(cli, "--prompt", "report", "--at", FUTURE_WINTER)
    assert task["next_run"] == "2031-01-15T14:00:00.000Z"
    assert task["timezone"] == HOST_TZ
    assert task["recurrence"] is None


def test_naive_at_is_read_in_the_timezone_option(cli: Cli, session: str) -> None:
    task = schedule(cli, "--prompt", "report", "--at", FUTURE_WINTER, "--timezone", "Asia/Tokyo")
    assert task["next_run"] == "2031-01-15T00:00:00.000Z"
    assert task["timezone"] == "Asia/Tokyo"


def test_relative_at_schedules_from_now(cli: Cli, session: str) -> None:
    before = datetime.now(UTC)
    task = schedule(cli, "--prompt", "stretch", "--at", "+10m")
    delta = parse_utc(task["next_run"]) - before
    assert timedelta(minutes=9) < delta <= timedelta(minutes=11)


def test_cron_schedule_puts_next_run_on_the_grid(cli: Cli, session: str) -> None:
    now = datetime.now(UTC)
    task = schedule(cli, "--prompt", "brief", "--cron", "0 9 * * *")
    first = parse_utc(task["next_run"])
    local = first.astimezone(ZoneInfo(HOST_TZ))
    assert (local.hour, local.minute, local.second) == (9, 0, 0)
    assert now < first <= now + timedelta(days=1)
    assert task["recurrence"] == "0 9 * * *"
    assert task["recurrence_words"] == "At 09:00"


def test_schedule_json_has_the_documented_fields(cli: Cli, session: str) -> None:
    task = schedule(cli, "--prompt", "brief", "--cron", "0 9 * * MON-FRI", "--id", "brief")
    assert task["id"] == "brief"
    assert task["series_id"] == "brief"
    assert task["session"] == session
    assert task["status"] == "pending"
    assert is_canonical(task["next_run"])
    assert task["recurrence"] == "0 9 * * MON-FRI"
    assert task["recurrence_words"] == "At 09:00, Monday through Friday"
    assert task["timezone"] == HOST_TZ
    assert task["prompt"] == "brief"
    local = datetime.fromisoformat(task["next_run_local"])
    assert local == parse_utc(task["next_run"])
    assert local.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))


def test_scheduling_the_same_id_twice_creates_one_task(cli: Cli, session: str) -> None:
    first = schedule(cli, "--prompt", "once", "--at", FUTURE_WINTER, "--id", "dup")
    again = schedule(cli, "--prompt", "once", "--at", FUTURE_WINTER, "--id", "dup")
    assert again == first
    assert len(tasks(cli)) == 1


@pytest.mark.parametrize("end", ["cancel", "finish"])
def test_scheduling_the_id_of_an_ended_task_is_refused_and_writes_nothing(
    cli: Cli, session: str, home: Path, end: str
) -> None:
    if end == "cancel":
        schedule(cli, "--prompt", "once", "--at", FUTURE_WINTER, "--id", "oneshot")
        ok(cli("task", "cancel", "oneshot"))
        state = "cancelled"
    else:
        schedule(cli, "--prompt", "once", "--at", "now", "--id", "oneshot")
        store = Cronbox(home)
        sid = store.get_session(session).id
        with sdb.outbound(store.session_dir(sid)) as out:
            sdb.set_ack(out, "oneshot", 0, AckStatus.COMPLETED, fmt(store.now()), None, "done")
        store.settle_acks(sid, timedelta(minutes=10))
        state = "completed"
    before = tasks(cli, "--all")
    done = run_module(
        "task", "schedule", session, "--prompt", "x", "--at", "+1m", "--id", "oneshot", home=home
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f'error: task id "oneshot" is already used by a task that is {state}; choose another id'
    ]
    assert tasks(cli, "--all") == before


def test_scheduling_a_live_id_again_with_other_content_returns_the_live_task(
    cli: Cli, session: str
) -> None:
    first = schedule(cli, "--prompt", "once", "--at", FUTURE_WINTER, "--id", "dup")
    again = schedule(cli, "--prompt", "different", "--cron", "@daily", "--id", "dup")
    assert again == first


def test_script_file_is_attached_to_the_task(cli: Cli, session: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate.sh"
    gate.write_text("echo '{\"wakeAgent\": true}'\n", encoding="utf-8")
    task = schedule(cli, "--prompt", "check", "--cron", "@hourly", "--script", str(gate))
    assert task["has_script"] is True


def test_recurrence_more_frequent_than_min_interval_setting_is_refused(
    cli: Cli, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = cli("task", "schedule", session, "--prompt", "p", "--cron", "@every 30s")
    assert refused.exit_code == 2
    assert "more often than the minimum of 60" in refused.stderr
    monkeypatch.setenv("CRONBOX_MIN_INTERVAL", "10")
    assert schedule(cli, "--prompt", "p", "--cron", "@every 30s")["recurrence"] == "@every 30s"


# --- listing ----------------------------------------------------------------------------


def test_task_list_table_shows_schedule_in_words_and_next_run_relative(
    cli: Cli, session: str
) -> None:
    schedule(cli, "--prompt", "brief", "--cron", "0 9 * * MON-FRI", "--id", "brief")
    schedule(cli, "--prompt", "remind me", "--at", FUTURE_WINTER, "--id", "remind")
    table = ok(cli("task", "list")).stdout
    brief = next(line for line in table.splitlines() if "brief" in line)
    assert "0 9 * * MON-FRI (At 09:00, Monday through Friday)" in brief
    assert "(in " in brief
    remind = next(line for line in table.splitlines() if "remind" in line)
    assert "once" in remind
    assert "2031-01-15 09:00 EST (in " in remind


def test_task_list_json_is_an_array_of_task_objects(cli: Cli, session: str) -> None:
    scheduled = schedule(cli, "--prompt", "remind me", "--at", FUTURE_WINTER)
    assert tasks(cli) == [scheduled]


def test_task_list_can_be_limited_to_one_session(cli: Cli, session: str) -> None:
    ok(cli("session", "create", "other"))
    schedule(cli, "--prompt", "mine", "--at", FUTURE_WINTER, "--id", "mine")
    ok(cli("task", "schedule", "other", "--prompt", "theirs", "--at", FUTURE_WINTER))
    assert [t["id"] for t in tasks(cli, session)] == ["mine"]
    assert len(tasks(cli)) == 2


def test_empty_task_list_says_so(cli: Cli, session: str) -> None:
    assert "no live tasks" in ok(cli("task", "list")).stdout
    assert tasks(cli) == []


# --- task actions -----------------------------------------------------------------------


def test_cancel_by_series_id_hides_the_task_unless_all(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "brief", "--cron", "0 9 * * *", "--id", "brief")
    cancelled = as_json(cli("task", "cancel", "brief", "--json"))
    assert cancelled["status"] == "cancelled"
    assert cancelled["next_run"] is None
    assert tasks(cli) == []
    assert [(t["id"], t["status"]) for t in tasks(cli, "--all")] == [("brief", "cancelled")]
    assert "cancelled" in ok(cli("task", "list", "--all")).stdout


def test_pause_and_resume_by_series_id(cli: Cli, session: str) -> None:
    scheduled = schedule(cli, "--prompt", "brief", "--cron", "0 9 * * *", "--id", "brief")
    paused = ok(cli("task", "pause", "brief"))
    assert "paused task brief" in paused.stdout
    assert tasks(cli)[0]["status"] == "paused"
    (session_row,) = as_json(cli("session", "list", "--json"))
    assert session_row["next_due_at"] is None
    resumed = as_json(cli("task", "resume", "brief", "--json"))
    assert resumed["status"] == "pending"
    assert resumed["next_run"] == scheduled["next_run"]


def test_acting_on_a_cancelled_task_is_a_user_error(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "brief", "--at", FUTURE_WINTER, "--id", "brief")
    ok(cli("task", "cancel", "brief"))
    result = cli("task", "pause", "brief")
    assert result.exit_code == 2
    assert "no live occurrence" in result.stderr


def test_update_changes_prompt_and_reschedules(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "old", "--at", FUTURE_WINTER, "--id", "t1")
    updated = as_json(
        cli("task", "update", "t1", "--prompt", "new", "--at", "2031-07-15T09:00", "--json")
    )
    assert updated["prompt"] == "new"
    assert updated["next_run"] == "2031-07-15T13:00:00.000Z"


def test_update_with_cron_recomputes_next_run(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "p", "--at", FUTURE_WINTER, "--id", "t1")
    updated = as_json(cli("task", "update", "t1", "--cron", "30 7 * * *", "--json"))
    local = parse_utc(updated["next_run"]).astimezone(ZoneInfo(HOST_TZ))
    assert (local.hour, local.minute) == (7, 30)
    assert parse_utc(updated["next_run"]) < parse_utc("2031-01-01T00:00:00Z")


def test_update_clear_cron_and_clear_script(cli: Cli, session: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate.sh"
    gate.write_text("echo '{}'\n", encoding="utf-8")
    schedule(cli, "--prompt", "p", "--cron", "0 9 * * *", "--script", str(gate), "--id", "t1")
    updated = as_json(cli("task", "update", "t1", "--clear-cron", "--clear-script", "--json"))
    assert updated["recurrence"] is None
    assert updated["recurrence_words"] == "once"
    assert updated["has_script"] is False


def test_update_without_any_change_is_a_user_error(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "p", "--at", FUTURE_WINTER, "--id", "t1")
    result = cli("task", "update", "t1")
    assert result.exit_code == 2
    assert "nothing to update" in result.stderr


def test_history_of_a_task_that_never_ran_is_empty(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "p", "--at", FUTURE_WINTER, "--id", "t1")
    assert as_json(cli("task", "history", "t1", "--json")) == {
        "series_id": "t1", "runs": [], "input_tokens": 0, "output_tokens": 0,
    }  # fmt: skip
    assert "has not run yet" in ok(cli("task", "history", "t1")).stdout


def test_history_and_list_show_a_finished_run(cli: Cli, session: str, home: Path) -> None:
    schedule(cli, "--prompt", "p", "--at", "now", "--id", "t1")
    (row,) = as_json(cli("session", "list", "--json"))
    store = Cronbox(home, default_timezone=HOST_TZ)
    # Speak the runner's side of the protocol: acks in the session's outbound.db.
    with sdb.outbound(store.session_dir(row["id"])) as out:
        sdb.set_ack(out, "t1", 0, AckStatus.PROCESSING, fmt(store.now()))
    store.settle_acks(row["id"], timedelta(minutes=10))
    with sdb.outbound(store.session_dir(row["id"])) as out:
        sdb.set_ack(out, "t1", 0, AckStatus.COMPLETED, fmt(store.now()), None, "all done")
    store.settle_acks(row["id"], timedelta(minutes=10))

    (run,) = as_json(cli("task", "history", "t1", "--json"))["runs"]
    assert (run["outcome"], run["output_preview"]) == ("ok", "all done")
    assert run["duration_seconds"] >= 0
    table = ok(cli("task", "history", "t1")).stdout
    assert "all done" in table
    assert " ok " in table
    (listed,) = tasks(cli, "--all")
    assert (listed["status"], listed["last_outcome"]) == ("completed", "ok")
    assert " ok " in ok(cli("task", "list", "--all")).stdout


# --- cron preview -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        pytest.param(
            "0 9 * * *",
            "2026-03-07T12:00",
            ["2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00", "2026-03-10T09:00:00-04:00"],
            id="daily across spring forward",
        ),
        pytest.param(
            "30 2 * * *",
            "2026-03-07T12:00",
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"],
            id="gap time fires once at the transition",
        ),
        pytest.param(
            "30 1 * * *",
            "2026-10-31T12:00",
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"],
            id="repeated hour fires once",
        ),
        pytest.param(
            "0 9 * * *",
            "2026-03-08T09:00:00-04:00",
            ["2026-03-09T09:00:00-04:00", "2026-03-10T09:00:00-04:00", "2026-03-11T09:00:00-04:00"],
            id="strictly after --after",
        ),
    ],
)
def test_cron_preview_gives_exact_instants_with_local_offsets(
    cli: Cli, expr: str, after: str, expected: list[str]
) -> None:
    assert as_json(cli("cron", expr, "-n", "3", "--after", after, "--json")) == expected


def test_cron_preview_table_shows_words_local_time_and_utc(cli: Cli) -> None:
    out = ok(cli("cron", "0 9 * * MON-FRI", "-n", "2", "--after", "2026-03-06T12:00")).stdout
    assert "At 09:00, Monday through Friday" in out
    assert "2026-03-09 09:00 EDT" in out
    assert "2026-03-09T13:00:00.000Z" in out
    assert "2026-03-10 09:00 EDT" in out


def test_cron_preview_in_another_zone(cli: Cli) -> None:
    fires = as_json(
        cli("cron", "0 9 * * *", "-n", "1", "--timezone", "Asia/Kolkata",
            "--after", "2026-03-07T00:00:00Z", "--json")
    )  # fmt: skip
    assert fires == ["2026-03-07T09:00:00+05:30"]


@pytest.mark.parametrize(
    ("tz", "expected"),
    [("UTC", "2026-03-07T09:00:00Z"), ("Etc/UTC", "2026-03-07T09:00:00Z"),
     ("Europe/London", "2026-03-07T09:00:00+00:00")],
)  # fmt: skip
def test_cron_preview_prints_utc_instants_with_z_and_zone_offsets_otherwise(
    cli: Cli, tz: str, expected: str
) -> None:
    fires = as_json(
        cli("cron", "0 9 * * *", "-n", "1", "--timezone", tz,
            "--after", "2026-03-07T00:00:00Z", "--json")
    )  # fmt: skip
    assert fires == [expected]
    assert datetime.fromisoformat(fires[0]) == datetime(2026, 3, 7, 9, tzinfo=UTC)


def test_version_flag_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "host.cli", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cronbox {importlib.metadata.version('cronbox')}"


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "cronbox")
def test_help_shows_no_type_beside_a_flag(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout


def test_cron_preview_defaults_to_the_next_times_after_now(cli: Cli) -> None:
    now = datetime.now(UTC)
    fires = [datetime.fromisoformat(f) for f in as_json(cli("cron", "* * * * *", "--json"))]
    assert len(fires) == 5
    assert now < fires[0] <= now + timedelta(minutes=1)
    assert fires == sorted(set(fires))


# --- user mistakes ----------------------------------------------------------------------

MISTAKES = [
    pytest.param(
        ["task", "schedule", "nosuch", "--prompt", "p", "--at", "+1h"],
        'no session named or with id "nosuch"',
        id="unknown session",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--cron", "0 25 * * *"],
        "hour 25 is out of range 0-23",
        id="bad cron",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--timezone", "Mars/Base"],
        'timezone "Mars/Base"',
        id="unknown timezone",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "next tuesday-ish"],
        '"next tuesday-ish" is not a time',
        id="unparsable at",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--script", "missing.sh"],
        'cannot read script file "missing.sh"',
        id="missing script",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "  ", "--at", "+1h"],
        "prompt is empty",
        id="empty prompt",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "2020-01-01T09:00"],
        "is in the past",
        id="past time",
    ),
    pytest.param(["task", "schedule", "work", "--prompt", "p"], "needs processAfter", id="no time"),
    pytest.param(["task", "cancel", "nosuch"], 'no task with id or series id "nosuch"', id="task"),
    pytest.param(["cron", "61 * * * *"], "61", id="bad cron preview"),
    pytest.param(["cron", "@daily", "--after", "soonish"], '--after "soonish"', id="bad after"),
]


@pytest.mark.parametrize(("args", "message"), MISTAKES)
def test_user_mistake_is_one_sentence_on_stderr_and_writes_nothing(
    cli: Cli, session: str, args: list[str], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert tasks(cli, "--all") == []


FLAG_MISTAKES = [
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--timeout", "-5"],
        "error: --timeout -5 is too short; give 1 to 86400 seconds (up to 1 day)",
        id="negative timeout",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--misfire-grace", "-1"],
        "error: --misfire-grace -1 is negative; give 0 to 31622400 seconds (up to 366 days)",
        id="negative grace",
    ),
    pytest.param(
        [
            "task",
            "schedule",
            "work",
            "--prompt",
            "p",
            "--at",
            "+1h",
            "--misfire-grace",
            "99999999999999999999",
        ],
        "error: --misfire-grace 99999999999999999999 is too long; "
        "give at most 31622400 seconds (366 days)",
        id="huge grace",
    ),
    pytest.param(
        ["cron", "@daily", "-n", "0"],
        "error: -n 0 is out of range; give a count of fire times from 1 to 1000",
        id="zero count",
    ),
    pytest.param(
        ["cron", "@daily", "--count=5000"],
        "error: --count 5000 is out of range; give a count of fire times from 1 to 1000",
        id="huge count typed long",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--script", "."],
        'error: --script "." is a directory; give the path of a bash script file',
        id="script is a directory",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--bogus"],
        "error: no such option: --bogus; see `cronbox task schedule --help`",
        id="unknown option",
    ),
    pytest.param(
        ["task", "schedule", "work", "--at", "+1h"],
        "error: --prompt is missing; see `cronbox task schedule --help`",
        id="missing option",
    ),
    pytest.param(
        ["task", "schedule"],
        "error: the SESSION argument is missing; see `cronbox task schedule --help`",
        id="missing argument",
    ),
    pytest.param(
        ["task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--timeout", "soon"],
        'error: --timeout "soon" is not valid: input should be a valid integer',
        id="not a number",
    ),
    pytest.param(
        ["tsk", "list"], "error: no such command 'tsk'; did you mean 'task'?", id="typo command"
    ),
]


@pytest.mark.parametrize(("args", "line"), FLAG_MISTAKES)
def test_flag_mistake_is_one_error_line_naming_the_flag_as_typed(
    cli: Cli, session: str, args: list[str], line: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(line)
    assert result.stdout == ""
    assert tasks(cli, "--all") == []


def test_a_past_at_names_the_flag_the_value_and_both_local_times(cli: Cli, session: str) -> None:
    result = cli("task", "schedule", session, "--prompt", "p", "--at", "2001-01-01")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        'error: --at "2001-01-01" is in the past: it means 2001-01-01 00:00 EST, and now is '
    )
    assert line.endswith("; give a future time, or add --cron for a repeating task")
    schedule(cli, "--prompt", "p", "--at", FUTURE_WINTER, "--id", "t1")
    result = cli("task", "update", "t1", "--at", "2001-07-01T12:00")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        'error: --at "2001-07-01T12:00" is in the past: it means 2001-07-01 12:00 EDT'
    )
    assert tasks(cli)[0]["next_run"] == "2031-01-15T14:00:00.000Z"


def test_an_unreadable_at_names_the_flag(cli: Cli, session: str) -> None:
    result = cli("task", "schedule", session, "--prompt", "p", "--at", "soonish")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f'error: --at "soonish" is not a time; use ISO-8601 such as 2026-01-15T21:00:00 '
        f"(read in {HOST_TZ})"
    )
    schedule(cli, "--prompt", "p", "--at", FUTURE_WINTER, "--id", "t1")
    result = cli("task", "update", "t1", "--at", "soonish")
    assert result.exit_code == 2
    assert result.stderr.startswith('error: --at "soonish" is not a time')


def test_help_still_works_beside_the_one_line_usage_errors(cli: Cli) -> None:
    assert "Usage" in ok(cli("task", "schedule", "--help")).stdout
    bare = CliRunner().invoke(app, ["task"])
    assert "Schedule, inspect and change the tasks" in bare.output


# How Python hands undecodable argv bytes to the program (surrogateescape).
NOT_UTF8 = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
UNDECODABLE = [
    pytest.param(["send", "work", NOT_UTF8], "the TEXT argument", id="send text"),
    pytest.param(["session", "create", NOT_UTF8], "the NAME argument", id="session name"),
    pytest.param(["task", "schedule", "work", "--prompt", NOT_UTF8, "--at", "+1h"], "--prompt",
                 id="prompt"),
    pytest.param(["task", "schedule", "work", "--prompt", "p", "--at", NOT_UTF8], "--at", id="at"),
    pytest.param(["task", "schedule", "work", "--prompt", "p", "--cron", NOT_UTF8], "--cron",
                 id="cron"),
    pytest.param(["task", "schedule", NOT_UTF8, "--prompt", "p", "--at", "+1h"],
                 "the SESSION argument", id="session ref"),
    pytest.param(["task", "cancel", NOT_UTF8], "the TASK argument", id="task ref"),
    pytest.param(["session", "update", "work", "--timezone", NOT_UTF8], "--timezone",
                 id="timezone"),
    pytest.param(["cron", NOT_UTF8], "the EXPR argument", id="cron expr"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "label"), UNDECODABLE)
def test_text_that_is_not_utf8_is_refused_by_name_and_writes_nothing(
    cli: Cli, session: str, home: Path, args: list[str], label: str
) -> None:
    before = as_json(cli("session", "list", "--json"))
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f'error: {label} "caf\\xe9 \\xff" is not valid UTF-8 text; give it in UTF-8 '
        "(is the terminal or script using another encoding?)"
    ]
    assert as_json(cli("session", "list", "--json")) == before
    assert tasks(cli, "--all") == []


def test_invalid_host_timezone_names_the_value_and_its_source(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Mars/Olympus")
    result = cli("session", "list")
    assert result.exit_code == 2
    assert 'timezone "Mars/Olympus" (from the TZ environment variable)' in result.stderr


def test_invalid_setting_is_one_sentence_naming_the_variable(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_MIN_INTERVAL", "often")
    result = cli("session", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: CRONBOX_MIN_INTERVAL is not valid")


def test_contradicting_update_flags_are_refused(cli: Cli, session: str) -> None:
    schedule(cli, "--prompt", "p", "--cron", "0 9 * * *", "--id", "t1")
    result = cli("task", "update", "t1", "--cron", "0 10 * * *", "--clear-cron")
    assert result.exit_code == 2
    assert "contradict" in result.stderr
    assert tasks(cli)[0]["recurrence"] == "0 9 * * *"


# --- the installed entry point ----------------------------------------------------------


def run_module(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args, "--home", str(home)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_module_entry_point_lists_tasks_as_json(home: Path) -> None:
    assert run_module("session", "create", "work", home=home).returncode == 0
    done = run_module("task", "list", "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_module_entry_point_reports_a_mistake_without_traceback(home: Path) -> None:
    assert run_module("session", "create", "work", home=home).returncode == 0
    done = run_module("task", "schedule", "nosuch", "--prompt", "p", "--at", "+1h", home=home)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'error: no session named or with id "nosuch"; `cronbox session list` shows them'
    ]


def test_module_entry_point_refuses_undecodable_bytes_without_traceback(home: Path) -> None:
    assert run_module("session", "create", "work", home=home).returncode == 0
    for args in (
        [b"send", b"work", b"caf\xe9 \xff"],
        [b"session", b"create", b"n\xff"],
        [b"task", b"schedule", b"work", b"--prompt", b"caf\xe9", b"--at", b"+1h"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "host.cli", *args, "--home", str(home)],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ")
        assert "is not valid UTF-8 text" in err
    sessions = json.loads(run_module("session", "list", "--json", home=home).stdout)
    assert [s["name"] for s in sessions] == ["work"]
    assert json.loads(run_module("task", "list", "--all", "--json", home=home).stdout) == []
    inbox = Cronbox(home).inbound_rows(sessions[0]["id"])
    assert inbox == []


def test_module_entry_point_words_flag_mistakes_in_one_line(home: Path) -> None:
    assert run_module("session", "create", "work", home=home).returncode == 0
    base = ("task", "schedule", "work", "--prompt", "p")
    grace = run_module(*base, "--at", "+1m", "--misfire-grace", "99999999999999999999", home=home)
    assert (grace.returncode, grace.stderr.strip()) == (
        2,
        "error: --misfire-grace 99999999999999999999 is too long; "
        "give at most 31622400 seconds (366 days)",
    )
    past = run_module(*base, "--at", "2001-01-01", home=home)
    assert past.returncode == 2
    assert past.stderr.startswith('error: --at "2001-01-01" is in the past')
    unknown = run_module(*base, "--at", "+1m", "--bogus", home=home)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2,
        "error: no such option: --bogus; see `cronbox task schedule --help`",
    )
    assert json.loads(run_module("task", "list", "--all", "--json", home=home).stdout) == []


# --- commands that need an existing home ------------------------------------------------

READING_COMMANDS = [
    ["status"], ["session", "list"], ["task", "list"], ["task", "history", "t1"],
    ["task", "cancel", "t1"], ["task", "pause", "t1"], ["task", "resume", "t1"],
    ["task", "run", "t1"], ["task", "update", "t1", "--prompt", "p"],
    ["session", "update", "work", "--agent", "a"], ["session", "delete", "work"],
    ["send", "work", "hi"], ["task", "schedule", "work", "--prompt", "p", "--at", "+1h"],
    ["log", "work"], ["task", "output", "1"], ["send", "work", "hi", "--wait", "--timeout", "1"],
]  # fmt: skip


@pytest.mark.parametrize("args", READING_COMMANDS, ids=" ".join)
def test_a_command_on_a_missing_home_says_so_and_creates_nothing(
    cli: Cli, home: Path, args: list[str]
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: no cronbox home at {home}; create a session with cronbox session create, "
        "or check --home"
    ]
    assert not home.exists()


def test_status_on_a_mistyped_home_creates_nothing(home: Path) -> None:
    typo = home.parent / "typo"
    done = run_module("status", home=typo)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: no cronbox home at {typo}; create a session with cronbox session create, "
        "or check --home"
    )
    assert not typo.exists()
    assert run_module("session", "create", "work", home=typo).returncode == 0
    assert (typo / "cronbox.db").is_file()
    assert run_module("status", home=typo).returncode == 0


# --- task run and status ---------------------------------------------------------------


def test_task_run_queues_a_one_off_occurrence_without_disturbing_the_series(
    cli: Cli, session: str, home: Path
) -> None:
    task = schedule(cli, "--prompt", "brief", "--cron", "0 9 * * *", "--id", "brief")
    queued = as_json(cli("task", "run", "brief", "--json"))
    assert queued["series_id"] == "brief"
    assert queued["id"] != task["id"]
    [after] = tasks(cli)
    assert after["id"] == task["id"]
    assert after["next_run"] == task["next_run"], "the schedule is untouched"
    store = Cronbox(home)
    sid = store.get_session("work").id
    manual = next(r for r in store.inbound_rows(sid) if r.id == queued["id"])
    assert manual.recurrence is None
    assert manual.status.value == "pending"
    assert store.get_session("work").next_due_at == manual.process_after, "due at once"
    ok(cli("task", "cancel", "brief"))
    rows = {r.id: r.status.value for r in store.inbound_rows(sid)}
    # Cancelling a series stops everything of it that has not started, manual runs too.
    assert rows == {task["id"]: "cancelled", queued["id"]: "cancelled"}


def test_task_run_of_an_unknown_task_is_one_sentence(cli: Cli, session: str) -> None:
    result = cli("task", "run", "nope")
    assert result.exit_code == 2
    assert "no task with id or series id" in result.stderr
    assert "Traceback" not in result.output


def test_status_without_a_running_host_shows_due_counts_and_next_wake(
    cli: Cli, session: str
) -> None:
    schedule(cli, "--prompt", "later", "--at", FUTURE_WINTER)
    ok(cli("send", "work", "hi"))
    report = as_json(cli("status", "--json"))
    assert report["host"] is None
    assert report["live"] == []
    assert report["sessions"] == 1
    assert report["due_now"] == 1
    assert report["live_tasks"] == 1
    assert report["next_wake"] is not None and is_canonical(report["next_wake"])
    text = ok(cli("status")).stdout
    assert "host: not running" in text
    assert "due now: 1" in text


def test_an_unknown_agent_profile_is_refused_and_nothing_is_written(cli: Cli, home: Path) -> None:
    refused = cli("session", "create", "ghost", "--agent", "nosuchagent")
    assert refused.exit_code == 2
    assert 'unknown agent profile "nosuchagent"; use one of: echo, fail, scripted' in (
        refused.stderr
    )
    assert as_json(cli("session", "list", "--json")) == []
    ok(cli("session", "create", "real"))
    again = cli("session", "update", "real", "--agent", "nosuchagent")
    assert again.exit_code == 2
    assert as_json(cli("session", "list", "--json"))[0]["agent"] == "echo"
