"""The host's background jobs: schedules, backup and restore, retention cleanup, stale checks."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import anyio.lowlevel
import httpx2
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import InvalidInput
from cronbox_shared.timeutil import ManualClock, fmt, parse_utc
from host.jobs import (
    HomeNotEmpty,
    Retention,
    Schedule,
    backup_home,
    cleanup_home,
    list_jobs,
    next_run,
    restore_home,
    run_here,
    stale_report,
)
from host.liveness import Claim
from host.service import Cronbox
from host.store.central import SqliteCentral
from tests.cli_harness import cli_for
from tests.hosting import base_url, ephemeral_socket, make_settings, replies, running_host, wait_for

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def t(text: str) -> datetime:
    return parse_utc(text)


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


# --- schedules (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "last", "now", "tz", "expected"),
    [
        # an interval job that never ran runs now; then every minute after its last run
        (Schedule(every=timedelta(minutes=1)), None, "2026-01-15T08:00:00Z", UTC,
         "2026-01-15T08:00:00Z"),
        (Schedule(every=timedelta(minutes=1)), "2026-01-15T08:00:00Z", "2026-01-15T08:00:30Z",
         UTC, "2026-01-15T08:01:00Z"),
        # a host that was down runs it once now, not once per missed minute
        (Schedule(every=timedelta(minutes=1)), "2026-01-15T08:00:00Z", "2026-01-15T09:00:00Z",
         UTC, "2026-01-15T09:00:00Z"),
        # a daily job that never ran waits for its time of day, in the host's zone
        (Schedule(at=time(3)), None, "2026-01-15T08:00:00Z", UTC, "2026-01-16T03:00:00Z"),
        (Schedule(at=time(3)), None, "2026-01-15T01:00:00Z", BERLIN, "2026-01-15T02:00:00Z"),
        # the next day's slot after its last run
        (Schedule(at=time(3)), "2026-01-15T03:00:00Z", "2026-01-15T10:00:00Z", UTC,
         "2026-01-16T03:00:00Z"),
        # missed while the host was down: once, now
        (Schedule(at=time(3)), "2026-01-10T03:00:00Z", "2026-01-15T10:00:00Z", UTC,
         "2026-01-15T10:00:00Z"),
    ],
)  # fmt: skip
def test_a_job_runs_next_at_its_slot_after_its_last_run_or_now_when_that_passed(
    schedule: Schedule, last: str | None, now: str, tz: ZoneInfo, expected: str
) -> None:
    assert next_run(schedule, t(last) if last else None, t(now), tz) == t(expected)


@dataclass
class _Handle:
    ref: str
    started_at: datetime


@dataclass
class _Session:
    name: str


@dataclass
class _Runner:
    handle: _Handle
    session: _Session
    claims: list[Claim]


def test_the_stale_check_reports_silent_runners_rows_past_their_timeout_and_open_circuits() -> None:
    now = t("2026-01-15T08:10:00Z")
    live = {
        "s-quiet": _Runner(_Handle("pid-1", now - timedelta(minutes=5)), _Session("quiet"), []),
        "s-busy": _Runner(
            _Handle("pid-2", now - timedelta(minutes=5)), _Session("busy"),
            [Claim("m-late", now - timedelta(seconds=120), timedelta(seconds=60)),
             Claim("m-fine", now - timedelta(seconds=30), timedelta(seconds=60))],
        ),
        "s-new": _Runner(_Handle("pid-3", now - timedelta(seconds=5)), _Session("new"), []),
    }  # fmt: skip
    heartbeats = {"s-quiet": now - timedelta(seconds=40), "s-busy": now - timedelta(seconds=1)}
    found = stale_report(live, heartbeats, ["http://hook/"], now, timedelta(seconds=15))
    assert [(f["kind"], f.get("session") or f.get("webhook")) for f in found] == [
        ("stuck_row", "busy"), ("silent_runner", "quiet"), ("open_circuit", "http://hook/"),
    ]  # fmt: skip
    assert "m-late" in found[0]["reason"] and "40 s" in found[1]["reason"]


# --- retention: backups and cleanup --------------------------------------------------------------


def test_backups_keep_exactly_the_newest_n_archives(tmp_path: Path) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    settings = make_settings(tmp_path / "home", backup_keep=3)
    store = Cronbox.from_settings(settings, clock=clock)
    store.create_session("alpha")
    made = []
    for _ in range(5):
        job = run_here(store, settings, "backup")
        assert job.last_ok, job.last_result
        made.append(clock.now().strftime("cronbox-%Y-%m-%d_%H-%M-%S.tar.gz"))
        clock.advance(1)
    kept = sorted(p.name for p in (tmp_path / "home" / "backups").iterdir())
    assert kept == made[-3:]


def test_cleanup_removes_exactly_the_rows_past_their_age_and_audits_the_counts(
    tmp_path: Path,
) -> None:
    clock = ManualClock("2026-06-01T00:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    session = store.create_session("alpha")
    now = clock.now()
    days = [91, 90.5, 89, 1]
    with SqliteCentral(store.home).transaction() as db:
        for n, age in enumerate(days):
            at = fmt(now - timedelta(days=age))
            db.execute(
                "INSERT INTO runs (session_id, message_id, started_at, finished_at, outcome, "
                "tries) VALUES (?, ?, ?, ?, 'ok', 1)", [session.id, f"m{n}", at, at],
            )  # fmt: skip
        db.execute(  # an old run that never finished stays
            "INSERT INTO runs (session_id, message_id, started_at, tries) VALUES (?, 'open', ?, 1)",
            [session.id, fmt(now - timedelta(days=200))],
        )
        for age in (181, 179):
            db.execute(
                "INSERT INTO audit_log (at, actor, action) VALUES (?, 'test', 'old')",
                [fmt(now - timedelta(days=age))],
            )
    # Chat rows finished 8, 7.5 and 6 days ago, and one 30 days old never finished.
    chats = [store.send_message(session.id, f"chat {n}").id for n in range(4)]
    with sdb.inbound(store.session_dir(session.id)) as inbox, inbox:
        for message_id, age in zip(chats, [8, 7.5, 6], strict=False):
            inbox.execute(
                "UPDATE messages_in SET status = 'completed', updated_at = ? WHERE id = ?",
                [fmt(now - timedelta(days=age)), message_id],
            )
        inbox.execute(
            "UPDATE messages_in SET created_at = ? WHERE id = ?",
            [fmt(now - timedelta(days=30)), chats[3]],
        )
    result = cleanup_home(store, Retention(90, 180, timedelta(days=7)))
    assert result == "deleted 2 runs, 1 audit entries, 2 finished inbox rows"
    assert [r.id for r in store.inbound_rows(session.id)] == chats[2:]
    left = store.runs_of(session.id, ["m0", "m1", "m2", "m3", "open"])
    assert sorted(left) == ["m2", "m3", "open"]
    ages = [e.at for e in store.audit_entries(limit=1000) if e.action == "old"]
    assert ages == [fmt(now - timedelta(days=179))]
    [entry] = [e for e in store.audit_entries() if e.action == "cleanup"]
    assert entry.detail == {"runs": 2, "audit_entries": 1, "inbox_rows": 2}
    # 0 keeps forever
    assert cleanup_home(store, Retention(0, 0, timedelta(days=7))).startswith("deleted 0 runs, 0")


def test_restore_refuses_a_home_that_is_not_empty_and_an_archive_that_is_not_a_backup(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    store.create_session("alpha")
    run_here(store, settings, "backup")
    [archive] = (tmp_path / "home" / "backups").iterdir()
    with pytest.raises(HomeNotEmpty, match="is not empty"):
        restore_home(archive, tmp_path / "home")
    odd = tmp_path / "odd.tar.gz"
    with tarfile.open(odd, "w:gz") as tar:
        tar.add(archive, arcname="../escape")
    with pytest.raises(InvalidInput, match="not a cronbox backup"):
        restore_home(odd, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(InvalidInput, match="no backup archive"):
        restore_home(tmp_path / "missing.tar.gz", tmp_path / "new")


def test_the_cli_lists_runs_and_restores_jobs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = cli_for(home)
    assert cli("session", "create", "alpha").exit_code == 0
    listed = cli("jobs", "--json")
    assert listed.exit_code == 0, listed.output
    jobs = {j["name"]: j for j in json.loads(listed.stdout)}
    assert set(jobs) == {"backup", "cleanup", "stale-check"}
    assert (jobs["backup"]["schedule"], jobs["backup"]["last_run_at"]) == ("daily at 03:00", None)
    done = cli("backup", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["last_ok"] is True
    assert cli("jobs", "run", "cleanup").stdout.startswith("cleanup ok: deleted 0 runs")
    refused = cli("jobs", "run", "stale-check")
    assert refused.exit_code == 2 and "running host" in refused.stderr
    unknown = cli("jobs", "run", "nope")
    assert unknown.exit_code == 2 and 'no background job named "nope"' in unknown.stderr
    [archive] = (home / "backups").iterdir()
    again = cli("restore", str(archive))
    assert again.exit_code == 2 and "is not empty" in again.stderr
    restored = cli_for(tmp_path / "copy")("restore", str(archive))
    assert restored.exit_code == 0, restored.output
    copy = cli_for(tmp_path / "copy")("session", "list", "--json")
    assert [s["name"] for s in json.loads(copy.stdout)] == ["alpha"]
    table = cli("jobs")
    assert "backup" in table.stdout and "daily at 03:00" in table.stdout


# --- a backup while the host is busy, restored into a home that runs -----------------------------


def snapshot_of(store: Cronbox) -> dict[str, Any]:
    sessions = store.list_sessions()
    return {
        "tasks": [t.id for t in sorted(store.list_tasks(include_all=True), key=lambda v: v.id)],
        "runs": {s.id: sorted(store.runs_of(s.id, [r.id for r in store.inbound_rows(s.id)]))
                 for s in sessions},
        "replies": {s.id: [r["seq"] for r in replies(store, s.id)] for s in sessions},
    }  # fmt: skip


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_backup_taken_while_the_host_works_restores_to_a_home_that_runs(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("alpha")
    sock = ephemeral_socket()
    async with (
        running_host(settings, http_socket=sock) as sweeper,
        httpx2.AsyncClient(base_url=base_url(sock)) as client,
    ):
        sent = 0

        async def keep_writing() -> None:
            nonlocal sent
            while True:
                await client.post("/api/sessions/alpha/messages", json={"text": f"m{sent}"})
                await client.post(
                    "/api/tasks",
                    json={"session": "alpha", "taskId": f"t{sent:03d}", "prompt": "p",
                          "recurrence": "@daily"},
                )  # fmt: skip
                sent += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as busy:
            busy.start_soon(keep_writing)
            await wait_for(lambda: len(replies(store, session.id)) >= 3)
            taken = await client.post("/api/scheduler", json={"action": "trigger", "job": "backup"})
            after = sent
            await wait_for(lambda: sent >= after + 2)  # the work goes on after the snapshot

            def backup_and_look() -> tuple[str, dict[str, Any]]:
                return backup_home(store, 10), snapshot_of(store)

            # The same backup as one write of the host's writer, with the source read in
            # that same write: what it held at the snapshot, while the work goes on.
            exact, at_snapshot = await sweeper.writer(backup_and_look)
            after = sent
            await wait_for(lambda: sent >= after + 2)
            busy.cancel_scope.cancel()
        assert taken.status_code == 200, taken.text
        assert taken.json()["last_ok"] is True, taken.json()
        jobs = (await client.get("/api/scheduler")).json()
        assert [j["name"] for j in jobs] == ["backup", "cleanup", "stale-check"]
        nope = await client.post("/api/scheduler", json={"action": "trigger", "job": "nope"})
        assert nope.status_code == 404
        bad = await client.post("/api/scheduler", json={"action": "explode", "job": "backup"})
        assert bad.status_code == 400
    source = snapshot_of(store)
    made = {p.name: p for p in (tmp_path / "home" / "backups").iterdir()}
    second = made.pop(exact.split(":")[0].removeprefix("backups/"))
    [first] = made.values()
    # Restored, the exact backup holds the source's tasks and runs at its snapshot, and
    # the replies the runner had written by then (it writes beside the host's writer),
    # every one the host had delivered among them.
    assert restore_home(second, tmp_path / "exact") == 1
    again = snapshot_of(Cronbox.from_settings(make_settings(tmp_path / "exact")))
    assert (again["tasks"], again["runs"]) == (at_snapshot["tasks"], at_snapshot["runs"])
    assert at_snapshot["tasks"] != source["tasks"]  # the work went on after it
    held = again["replies"][session.id]
    assert held == source["replies"][session.id][: len(held)]
    assert len(held) <= len(at_snapshot["replies"][session.id])  # read just after it
    with sdb.inbound(tmp_path / "exact" / "sessions" / session.id, readonly=True) as db:
        assert sdb.delivered_seqs(db, list(range(1, 20_001, 2))) <= set(held)
    archive = first
    copy = tmp_path / "copy"
    assert restore_home(archive, copy) == 1
    restored = Cronbox.from_settings(make_settings(copy))
    before = snapshot_of(restored)
    # Consistent: the central view equals what the restored session files say...
    restored.reindex()
    assert snapshot_of(restored) == before
    # ...and it is the source as it was at one instant: a prefix of what came after.
    n = len(before["tasks"])
    assert 1 <= n < len(source["tasks"])
    assert before["tasks"] == source["tasks"][:n]
    assert set(before["runs"][session.id]) <= set(source["runs"][session.id])
    got = before["replies"][session.id]
    assert got == source["replies"][session.id][: len(got)]
    with sdb.inbound(restored.session_dir(session.id), readonly=True) as db:
        assert sdb.delivered_seqs(db, list(range(1, 20_001, 2))) <= set(got)
    # The restored home runs.
    async with running_host(make_settings(copy)):
        message = restored.send_message("alpha", "are you back?")
        await wait_for(lambda: restored.replies(session.id, message.id))
    assert run_here(restored, make_settings(copy), "cleanup").last_ok
    assert [j.name for j in list_jobs(restored, make_settings(copy))] == [
        "backup",
        "cleanup",
        "stale-check",
    ]


@pytest.mark.anyio
@pytest.mark.e2e
async def test_cronbox_jobs_run_goes_through_the_running_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = make_settings(home)
    Cronbox.from_settings(settings).create_session("alpha")
    async with running_host(settings, http_socket=ephemeral_socket()):

        def published() -> Any:
            try:
                return json.loads((home / "host.json").read_text()).get("http")
            except (OSError, ValueError):
                return None

        await wait_for(published)
        result = await anyio.to_thread.run_sync(
            lambda: cli_for(home)("jobs", "run", "stale-check", "--json")
        )
        assert result.exit_code == 0, result.output
        job = json.loads(result.stdout)
        assert (job["name"], job["last_ok"], job["last_result"]) == (
            "stale-check", True, "nothing stuck",
        )  # fmt: skip
        status = await anyio.to_thread.run_sync(lambda: cli_for(home)("status", "--json"))
        assert json.loads(status.stdout)["stale"] == []


def test_a_disabled_job_has_no_next_run_but_can_still_be_run_by_hand(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", jobs_disabled="backup, stale-check")
    store = Cronbox.from_settings(settings)
    jobs = {j.name: j for j in list_jobs(store, settings)}
    assert (jobs["backup"].enabled, jobs["backup"].next_run_at) == (False, None)
    assert not jobs["stale-check"].enabled
    assert jobs["cleanup"].enabled and jobs["cleanup"].next_run_at is not None
    assert run_here(store, settings, "backup").last_ok


def test_two_backups_within_one_second_both_count_and_the_newer_is_kept(tmp_path: Path) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    settings = make_settings(tmp_path / "home", backup_keep=1)
    store = Cronbox.from_settings(settings, clock=clock)
    assert run_here(store, settings, "backup").last_ok
    newer = run_here(store, settings, "backup")  # the same second: its name gets "-1"
    assert newer.last_result and "cronbox-2026-01-15_08-00-00-1.tar.gz" in newer.last_result
    kept = [p.name for p in (tmp_path / "home" / "backups").iterdir()]
    assert kept == ["cronbox-2026-01-15_08-00-00-1.tar.gz"]
