"""Exact records across crashes: a crash between a session's inbox commit and the
central one (done here from outside: cronbox.db put back as it was before the second
commit, which is what a SIGKILL between the two leaves) loses no run record."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import AckStatus, DeliveryStatus, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.service import Cronbox
from tests.test_faults import _killed_mid_write


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


def test_a_hot_inbox_journal_left_by_a_killed_host_is_rolled_back_by_the_next_reader(
    tmp_path: Path,
) -> None:
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-15T08:00:00Z"))
    session = store.create_session("work")
    task = store.schedule_task(session.id, {"prompt": "once", "processAfter": "+1h"})
    inbound = store.session_dir(session.id) / sdb.INBOUND
    _killed_mid_write(inbound)
    # A read-only reader (the CLI, the host's views) is not stopped by the journal.
    assert [r.id for r in store.inbound_rows(session.id)] == [task.id]
    assert not Path(f"{inbound}-journal").exists()


@pytest.mark.anyio
async def test_a_cancel_applied_just_before_a_crash_is_not_applied_again_nor_rejected(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    store = Cronbox(home, clock=ManualClock("2026-01-15T08:00:00Z"))
    session = store.create_session("work")
    task = store.schedule_task(session.id, {"taskId": "t", "prompt": "p", "recurrence": "@hourly"})
    with sdb.outbound(store.session_dir(session.id)) as out:
        sdb.insert_outbound(
            out, "out-cancel", MessageKind.SYSTEM, {"action": "cancel_task", "taskId": "t"},
            fmt(store.now()),
        )  # fmt: skip
    before = tmp_path / "before.db"
    snapshot(home / "cronbox.db", before)
    [applied] = await Delivery(store, []).deliver(session, store.undelivered(session.id))
    assert applied.status is DeliveryStatus.APPLIED
    snapshot(before, home / "cronbox.db")  # killed before anything after the inbox commit

    restarted = Cronbox(home, clock=ManualClock("2026-01-15T08:00:05Z"))
    for sid in restarted.stale_sessions():
        restarted.sync_session(sid)
    # The action and its delivery record were one transaction: it is not read again.
    assert restarted.undelivered(session.id) == []
    assert await Delivery(restarted, []).deliver(session, restarted.undelivered(session.id)) == []
    assert restarted.get_task(task.series_id).status is MessageStatus.CANCELLED
    actions = [e.action for e in restarted.audit_entries(session.id, 100)]
    assert "outbound.reject" not in actions
    notes = [r for r in restarted.inbound_rows(session.id) if r.kind is MessageKind.SYSTEM]
    assert notes == [], "the agent is told nothing failed"
