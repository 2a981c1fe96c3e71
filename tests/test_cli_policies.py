"""Issue 12 through the ``cronbox`` CLI: policy flags, pause notes, failure pauses."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, MessageKind
from cronbox_shared.policies import due_at
from cronbox_shared.tasks import wakes_per_day
from cronbox_shared.timeutil import ManualClock, fmt, parse_utc, zone
from host.service import Cronbox
from host.views import iso_local
from tests.cli_harness import Cli, as_json, cli_for, fresh_home, ok


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
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return " ".join(line.strip(" │╭╮╰╯─") for line in lines)


def task_rows(home: Path) -> list[Any]:
    store = Cronbox(home)
    sid = store.get_session("work").id
    return [r for r in store.inbound_rows(sid) if r.kind is MessageKind.TASK]


def fail(home: Path, message_id: str, error: str, at: str | None = None) -> None:
    """Play the runner: fail ``message_id`` with ``error`` (at ``at``, default now), then
    settle as the host does."""
    store = Cronbox(home, clock=ManualClock(parse_utc(at)) if at else None)
    sid = store.get_session("work").id
    with sdb.outbound(store.session_dir(sid)) as db, db.atomic():
        sdb.set_ack(db, message_id, 0, AckStatus.FAILED, fmt(store.now()), error, None)
    store.settle_acks(sid, timedelta(minutes=10))


def test_task_schedule_takes_the_policy_flags(cli: Cli, session: str, home: Path) -> None:
    view = as_json(cli(
        "task", "schedule", "work", "--prompt", "p", "--cron", "0 * * * *", "--id", "rep",
        "--missed", "all", "--catchup-limit", "6", "--max-failures", "2", "--jitter", "90",
        "--json",
    ))  # fmt: skip
    [row] = task_rows(home)
    assert (row.missed_policy, row.catchup_limit, row.max_failures, row.jitter) == (
        "all", 6, 2, 90,
    )  # fmt: skip
    # task list shows the jittered time: the slot plus this task's jitter for it.
    assert view["next_run"] == fmt(due_at("rep", parse_utc(row.scheduled_for or ""), 90))
    ok(cli("task", "update", "rep", "--missed", "skip", "--jitter", "0"))
    [row] = task_rows(home)
    assert (row.missed_policy, row.catchup_limit, row.jitter) == ("skip", None, 0)
    assert row.process_after == row.scheduled_for


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--at", "+1h", "--missed", "skip"], "apply only to a recurring task"),
        (["--cron", "@hourly", "--missed", "sometimes"], "'sometimes' is not one of"),
        (["--cron", "@hourly", "--catchup-limit", "5"], "catchupLimit applies only with"),
        (["--cron", "@hourly", "--missed", "all", "--catchup-limit", "0"], "out of range"),
        (["--cron", "@hourly", "--max-failures", "-1"], "--max-failures -1 is out of range"),
        (["--cron", "@hourly", "--jitter", "3600"], "jitter of 3600 s is not shorter"),
    ],
)
def test_a_bad_policy_flag_is_one_sentence_and_writes_nothing(
    cli: Cli, session: str, home: Path, flags: list[str], says: str
) -> None:
    text = refused(cli("task", "schedule", "work", "--prompt", "p", *flags))
    assert says in text
    assert task_rows(home) == []


def test_task_pause_with_a_note_shows_it_until_the_resume(cli: Cli, session: str) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@hourly", "--id", "t"))
    paused = ok(cli("task", "pause", "t", "--note", "waiting for the new key"))
    assert "paused: waiting for the new key" in paused.stdout
    [view] = as_json(cli("task", "list", "--json"))
    assert view["paused_reason"] == "waiting for the new key"
    assert "waiting for" in ok(cli("task", "list")).stdout
    ok(cli("task", "resume", "t"))
    [view] = as_json(cli("task", "list", "--json"))
    assert view["paused_reason"] is None
    assert "note" in refused(cli("task", "pause", "t", "--note", "x" * 501))


def test_a_series_paused_by_failures_shows_the_reason_and_resumes_with_a_fresh_count(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@every 1h", "--at", "now",
           "--id", "t", "--max-failures", "2"))  # fmt: skip
    fail(home, "t", "gate exited 3")
    [view] = as_json(cli("task", "list", "--json"))
    assert (view["status"], view["paused_reason"]) == ("pending", None)
    second = task_rows(home)[-1]
    assert second.failures == 1
    # The next occurrence is the first slot at or after the failure plus 2 minutes: the
    # hourly slot itself, an hour after the first.
    fail(home, second.id, "gate exited 3", at=second.process_after)
    [view] = as_json(cli("task", "list", "--json"))
    assert view["status"] == "paused"
    assert view["paused_reason"] == "failed 2 times in a row: gate exited 3"
    assert "failed 2 times in a row" in ok(cli("task", "list")).stdout
    store = Cronbox(home)
    [note] = [r for r in store.inbound_rows(store.get_session("work").id)
              if r.kind is MessageKind.SYSTEM]  # fmt: skip
    assert note.trigger == 1
    audit = [e for e in store.audit_entries() if e.action == "task.pause"]
    assert [(e.actor, e.detail) for e in audit] == [
        ("cronbox", {"reason": "failed 2 times in a row: gate exited 3"})
    ]
    ok(cli("task", "resume", "t"))
    live = task_rows(home)[-1]
    assert (live.status, live.failures, live.paused_reason) == ("pending", 0, None)


def test_a_manual_run_never_shifts_the_schedule_nor_counts_as_a_failure(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@hourly", "--id", "t"))
    [before] = task_rows(home)
    manual = as_json(cli("task", "run", "t", "--json"))
    fail(home, manual["id"], "boom")
    live = [r for r in task_rows(home) if r.id == before.id]
    assert [(r.process_after, r.scheduled_for, r.failures) for r in live] == [
        (before.process_after, before.scheduled_for, 0)
    ]


def test_cron_preview_shows_the_jittered_times_of_a_task(cli: Cli) -> None:
    after = "2026-03-09T08:00:00Z"
    plain = as_json(cli("cron", "@hourly", "-n", "3", "--after", after, "--timezone", "UTC",
                        "--json"))  # fmt: skip
    jittered = as_json(cli("cron", "@hourly", "-n", "3", "--after", after, "--timezone", "UTC",
                           "--jitter", "600", "--id", "rep", "--json"))  # fmt: skip
    utc = zone("UTC")
    assert jittered == [iso_local(due_at("rep", parse_utc(p), 600), utc) for p in plain]
    assert jittered != plain
    assert "--id" in refused(cli("cron", "@hourly", "--jitter", "60"))


def test_session_quiet_hours_are_set_shown_in_status_and_refused_when_malformed(
    cli: Cli, session: str, home: Path
) -> None:
    updated = ok(cli("session", "update", "work", "--quiet", "22:00-07:00"))
    assert "quiet hours 22:00-07:00" in updated.stdout
    [listed] = as_json(cli("session", "list", "--json"))
    assert listed["quiet"] == "22:00-07:00"
    report = as_json(cli("status", "--json"))
    [quiet] = report["quiet"]
    assert (quiet["session"], quiet["window"], quiet["timezone"]) == ("work", "22:00-07:00", "UTC")
    assert "quiet hours of session work: 22:00-07:00 (UTC)" in ok(cli("status")).stdout
    assert "is not a window" in refused(cli("session", "update", "work", "--quiet", "late"))
    assert as_json(cli("session", "list", "--json"))[0]["quiet"] == "22:00-07:00"
    ok(cli("session", "update", "work", "--quiet", "off"))
    assert as_json(cli("status", "--json"))["quiet"] == []


@pytest.mark.parametrize(
    ("on", "off", "column", "shown"),
    [
        ("--ignore-quiet", "--respect-quiet", "ignore_quiet", "quiet hours: ignored"),
        ("--isolated", "--shared", "isolated", "isolated (fresh each run)"),
    ],
)
def test_a_task_flag_is_shown_and_update_turns_it_off_and_on_again(
    cli: Cli, session: str, home: Path, on: str, off: str, column: str, shown: str
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "@hourly", "--id", "t", on))
    assert getattr(task_rows(home)[0], column)
    assert shown in ok(cli("task", "show", "t")).stdout
    ok(cli("task", "update", "t", off))
    assert not getattr(task_rows(home)[0], column)
    ok(cli("task", "update", "t", on))
    assert getattr(task_rows(home)[0], column)


def test_task_backfill_queues_the_first_past_slot_and_refuses_bad_windows(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 * * * *", "--id", "t"))
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h", "--id", "once"))
    store = Cronbox(home)
    now = store.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    start, end = fmt(hour - timedelta(hours=5, minutes=30)), fmt(hour - timedelta(minutes=30))
    for args, says in [
        (["t", "--from", end, "--to", start], "is not after --from"),
        (["t", "--from", start, "--to", "+1h"], "is in the future"),
        (["t", "--from", fmt(hour - timedelta(minutes=50)),
          "--to", fmt(hour - timedelta(minutes=40))], "no slot of this task falls between"),
        (["t", "--from", "2026-01-01T00:00Z", "--to", fmt(hour - timedelta(days=30))],
         "more than 100 slots"),
        (["once", "--from", start, "--to", end], "runs once, so it has no slots to backfill"),
        (["t", "--from", "yesterday", "--to", end], "--from"),
    ]:  # fmt: skip
        assert says in refused(cli("task", "backfill", *args)), args
    assert len(task_rows(home)) == 2
    queued = as_json(cli("task", "backfill", "t", "--from", start, "--to", end, "--json"))
    assert queued["slots"] == [fmt(hour - timedelta(hours=h)) for h in (5, 4, 3, 2, 1)]
    assert "still running" in refused(cli("task", "backfill", "t", "--from", start, "--to", end))
    audit = [e for e in store.audit_entries() if e.action == "task.backfill"]
    assert [e.detail for e in audit] == [{"from": queued["slots"][0], "to": queued["slots"][-1],
                                          "slots": 5}]  # fmt: skip


def test_task_show_prints_policies_next_ten_runs_and_last_runs(
    cli: Cli, session: str, home: Path
) -> None:
    ok(cli("task", "schedule", "work", "--prompt", "hourly digest", "--cron", "0 * * * *",
           "--id", "t", "--missed", "skip", "--jitter", "60",
           "--misfire-grace", "300"))  # fmt: skip
    shown = as_json(cli("task", "show", "t", "--json"))
    assert len(shown["next_runs"]) == 10
    slots = [parse_utc(r["slot"]) for r in shown["next_runs"]]
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(slots))
    assert [r["at"] for r in shown["next_runs"]] == [fmt(due_at("t", s, 60)) for s in slots]
    assert (
        shown["policies"]["policies"]
        == "missed runs: skip, pauses after 8 failures in a row, jitter under 60 s"
    )
    assert shown["runs"] == []
    text = ok(cli("task", "show", "t")).stdout
    assert "next 10 runs:" in text
    assert "missed runs: skip" in text
    assert "misfire grace: 300 s" in text
    manual = as_json(cli("task", "run", "t", "--json"))
    fail(home, manual["id"], "boom")
    shown = as_json(cli("task", "show", "t", "--json"))
    assert [r["message_id"] for r in shown["runs"]] == [manual["id"]]
    assert "last 1 runs:" in ok(cli("task", "show", "t")).stdout


def test_a_step_larger_than_its_field_is_accepted_with_a_warning_on_stderr(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate.sh"
    gate.write_text("echo '{\"wakeAgent\": false}'\n")
    done = ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "*/90 * * * *",
                  "--script", str(gate)))  # fmt: skip
    assert 'warning: the minute step "*/90" is larger than its range' in done.stderr
    assert "hint" not in done.stderr
    preview = ok(cli("cron", "*/90 * * * *", "-n", "2"))
    assert "so it fires only at minute 0" in preview.stderr


def test_an_ungated_task_firing_more_than_twice_a_day_gets_the_cost_hint(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    frequent = ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 */6 * * *"))
    assert "hint: this task runs more than twice a day without a gate script" in frequent.stderr
    gate = tmp_path / "gate.sh"
    gate.write_text("echo '{\"wakeAgent\": false}'\n")
    gated = ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 */6 * * *",
                   "--script", str(gate)))  # fmt: skip
    assert "hint" not in gated.stderr
    daily = ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 9,18 * * *"))
    assert "hint" not in daily.stderr


def test_a_session_wake_budget_refuses_a_task_that_would_exceed_it(
    cli: Cli, session: str, home: Path, tmp_path: Path
) -> None:
    shown = ok(cli("session", "update", "work", "--max-wakes-per-day", "30"))
    assert "at most 30 wakes a day" in shown.stdout
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "0 * * * *", "--id", "hourly"))
    text = refused(cli("task", "schedule", "work", "--prompt", "p", "--cron", "*/30 * * * *"))
    assert "this task would wake the agent 48 times a day" in text
    assert "already do 24, over its limit of 30 wakes a day" in text
    assert [r.id for r in task_rows(home)] == ["hourly"]
    gate = tmp_path / "gate.sh"
    gate.write_text("echo '{\"wakeAgent\": false}'\n")
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "*/30 * * * *",
           "--script", str(gate)))  # fmt: skip
    ok(cli("task", "schedule", "work", "--prompt", "p", "--at", "+1h"))
    assert "out of range" in refused(cli("session", "update", "work", "--max-wakes-per-day", "-1"))
    ok(cli("session", "update", "work", "--max-wakes-per-day", "0"))
    ok(cli("task", "schedule", "work", "--prompt", "p", "--cron", "*/30 * * * *"))


@pytest.mark.parametrize(
    ("recurrence", "gated", "expected"),
    [
        (None, False, 1),
        ("0 * * * *", False, 24),
        ("*/30 * * * *", False, 48),
        ("0 9 * * *", False, 1),
        ("*/5 * * * *", True, 0),
        ("* * * * *", False, 101),  # counted up to the cap only
    ],
)
def test_wakes_per_day_counts_the_runs_that_wake_the_agent_in_the_next_day(
    recurrence: str | None, gated: bool, expected: int
) -> None:
    now = parse_utc("2026-03-09T08:00:30.000Z")
    assert wakes_per_day(recurrence, gated, zone("UTC"), now, 101) == expected
