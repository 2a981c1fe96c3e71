"""Exact records across crashes: a crash between a session's inbox commit and the
central one (done here from outside: cronbox.db put back as it was before the second
commit, which is what a SIGKILL between the two leaves) loses no run record."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.service import Cronbox


def snapshot(db: Path, to: Path) -> None:
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)


def test_a_run_settled_just_before_a_crash_is_in_the_history_after_restart(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    store = Cronbox(home, clock=ManualClock("2026-01-15T08:00:00Z"))
    session = store.create_session("work")
    task = store.schedule_task(session.id, {"prompt": "once", "processAfter": "now"})
    with sdb.outbound(store.session_dir(session.id)) as out:
        sdb.set_ack(out, task.id, 0, AckStatus.COMPLETED, fmt(store.now()), None, "done")
    before = tmp_path / "before.db"
    snapshot(home / "cronbox.db", before)
    store.settle_acks(session.id, timedelta(minutes=10))
    assert [r.outcome for r in store.runs_for(task.id)] == [RunOutcome.OK]
    snapshot(before, home / "cronbox.db")  # the central commit never happened
    assert store.runs_for(task.id) == []

    restarted = Cronbox(home, clock=ManualClock("2026-01-15T08:01:00Z"))
    assert restarted.stale_sessions() == [session.id]
    for sid in restarted.stale_sessions():
        restarted.sync_session(sid)
    [run] = restarted.runs_for(task.id)
    assert run.outcome is RunOutcome.OK
    assert run.output_preview == "done"
    assert restarted.stale_sessions() == []
    # Merged again, the record is not doubled.
    restarted.sync_session(session.id)
    assert len(restarted.runs_for(task.id)) == 1
