"""The service layer beyond task actions: retention, sessions, leases and the one writer."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from cronbox_shared import outbox
from cronbox_shared import sessiondb as sdb
from cronbox_shared.agents import BUILTIN_AGENTS, check_agent
from cronbox_shared.errors import (
    InvalidTimezone,
    RunNotFound,
    SessionNotFound,
    TaskStateError,
    UnknownAgent,
)
from cronbox_shared.models import AckStatus, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.runtimes import ProcessRuntime
from host.service import Cronbox
from host.store.central import SqliteCentral
from host.sweep import SweepConfig, Sweeper
from host.writer import Writer


def run_once(app: Cronbox, clock: ManualClock, session_id: str, message_id: str) -> None:
    """Play the runner: complete ``message_id`` now, then settle."""
    with sdb.outbound(app.session_dir(session_id)) as db, db.atomic():
        sdb.set_ack(db, message_id, 0, AckStatus.COMPLETED, fmt(clock.now()), None, "ok")
    app.settle_acks(session_id, timedelta(minutes=10))


def test_a_settlement_with_no_news_commits_nothing_and_one_after_a_stale_view_repairs_it(
    app: Cronbox, clock: ManualClock
) -> None:
    session = app.create_session("quiet")
    task = app.schedule_task(session.id, {"prompt": "tick", "recurrence": "@hourly"})
    clock.set("2026-01-15T09:00:01Z")
    feed = app.watch_changes()
    try:
        run_once(app, clock, session.id, task.id)
        assert feed.changed()
        app.settle_acks(session.id, timedelta(minutes=10))  # hands the run journal over
        feed.changed()
        for _ in range(3):  # a runner still at work: its outbox holds nothing new
            app.settle_acks(session.id, timedelta(minutes=10))
            assert not feed.changed()
        assert [r.outcome for r in app.runs_for(task.id)] == [RunOutcome.OK]

        # A view another writer left behind this inbox's is brought up to date anyway.
        with SqliteCentral(app.home).transaction() as db:
            db.execute("UPDATE sessions SET next_due_at = NULL, inbound_version = -1")
        app.settle_acks(session.id, timedelta(minutes=10))
        assert feed.changed()
        assert app.get_session(session.id).next_due_at == "2026-01-15T10:00:00.000Z"
        assert app.central.inbound_version(session.id) == app.files.version(session.id)
    finally:
        feed.close()


def test_a_settlement_read_without_writing_is_the_one_a_commit_makes_and_none_when_it_must_write(
    app: Cronbox, clock: ManualClock
) -> None:
    timeout = timedelta(minutes=10)
    session = app.create_session("peek")
    task = app.schedule_task(session.id, {"prompt": "tick", "recurrence": "@hourly"})
    gated = app.schedule_task(session.id, {"prompt": "ask", "processAfter": "+90m",
                                           "approval": True})  # fmt: skip
    clock.set("2026-01-15T09:00:01Z")
    with sdb.outbound(app.session_dir(session.id)) as db, db.atomic():
        sdb.set_ack(db, task.id, 0, AckStatus.PROCESSING, fmt(clock.now()))
    # News (a claim): it must be written, so the read gives it back to the writer.
    assert app.settle_acks_unwritten(session.id, timeout) is None
    written = app.settle_acks(session.id, timeout)
    assert [c.message_id for c in written.claims] == [task.id]

    # No news while the runner works: the same plan, and nothing written anywhere.
    version, feed = app.files.version(session.id), app.watch_changes()
    try:
        peeked = app.settle_acks_unwritten(session.id, timeout)
        assert app.files.version(session.id) == version and not feed.changed()
    finally:
        feed.close()
    assert peeked is not None and [c.message_id for c in peeked.claims] == [task.id]
    assert peeked == app.settle_acks(session.id, timeout)

    # Time alone makes news: an approval-gated task falls due, and must start waiting.
    clock.set("2026-01-15T09:30:01Z")
    assert app.settle_acks_unwritten(session.id, timeout) is None
    assert app.settle_acks(session.id, timeout).gated == (gated.id,)
    assert app.settle_acks_unwritten(session.id, timeout) == app.settle_acks(session.id, timeout)

    # The claimed run ends: its history row holds the start only, so that is news too.
    with sdb.outbound(app.session_dir(session.id)) as db, db.atomic():
        sdb.set_ack(db, task.id, 0, AckStatus.COMPLETED, fmt(clock.now()), None, "done")
    assert app.settle_acks_unwritten(session.id, timeout) is None
    assert [f.message_id for f in app.settle_acks(session.id, timeout).finished] == [task.id]
    assert [r.outcome for r in app.runs_for(task.id)] == [RunOutcome.OK]


def test_a_new_session_is_made_with_its_outbox_migrated_and_empty(app: Cronbox) -> None:
    """So its first wake does not make one: the runner only opens it."""
    session = app.create_session("fresh")
    path = app.session_dir(session.id) / sdb.OUTBOUND
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert outbox.migrated(conn, outbox.OUTBOUND_MIGRATION_SET, outbox.OUTBOUND_MIGRATIONS)
        assert conn.execute("SELECT count(*) FROM messages_out").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM processing_ack").fetchone() == (0,)
    finally:
        conn.close()


def test_pruning_drops_old_finished_rows_but_keeps_each_series_and_the_history(
    app: Cronbox, clock: ManualClock
) -> None:
    session = app.create_session("busy")
    task = app.schedule_task(session.id, {"prompt": "tick", "recurrence": "@hourly"})
    once = app.schedule_task(session.id, {"prompt": "once", "processAfter": "+30m"})
    chat = app.send_message(session.id, "hi")
    run_once(app, clock, session.id, chat.id)
    for n in range(5):
        clock.set(f"2026-01-15T{9 + n:02d}:00:01Z")
        run_once(app, clock, session.id, task.id if n == 0 else f"{task.id}~{n}")
        if n == 0:
            run_once(app, clock, session.id, once.id)
    assert len(app.inbound_rows(session.id)) == 8

    clock.advance(days=8)
    removed = app.prune_finished(session.id, timedelta(days=7))

    rows = {r.id: r.status for r in app.inbound_rows(session.id)}
    # The live occurrence stays, and so does the newest row of the ended one-time task.
    assert rows == {f"{task.id}~5": MessageStatus.PENDING, once.id: MessageStatus.COMPLETED}
    assert removed == 6
    assert len(app.runs_for(task.id)) == 5
    assert app.get_task(once.id).status is MessageStatus.COMPLETED
    assert app.prune_finished(session.id, timedelta(days=7)) == 0


def test_pruning_keeps_recent_finished_rows(app: Cronbox, clock: ManualClock) -> None:
    session = app.create_session("recent")
    chat = app.send_message(session.id, "hi")
    run_once(app, clock, session.id, chat.id)
    clock.advance(days=6)
    assert app.prune_finished(session.id, timedelta(days=7)) == 0
    assert [r.id for r in app.inbound_rows(session.id)] == [chat.id]


def test_session_update_changes_agent_and_zone_and_is_audited(app: Cronbox) -> None:
    session = app.create_session("s", timezone="Europe/Berlin")
    updated = app.update_session("s", agent="scripted", timezone="Asia/Tokyo")
    assert (updated.agent, updated.timezone) == ("scripted", "Asia/Tokyo")
    assert app.audit_entries(session.id)[0].action == "session.update"
    with pytest.raises(InvalidTimezone):
        app.update_session("s", timezone="Mars/Olympus")
    assert app.get_session("s").timezone == "Asia/Tokyo"


def test_session_delete_moves_its_files_to_trash_and_keeps_history(
    app: Cronbox, clock: ManualClock
) -> None:
    session = app.create_session("gone")
    task = app.schedule_task(session.id, {"prompt": "p", "processAfter": "now"})
    run_once(app, clock, session.id, task.id)
    app.delete_session("gone")
    with pytest.raises(SessionNotFound):
        app.get_session("gone")
    assert not app.session_dir(session.id).exists()
    assert [p.name.startswith(session.id) for p in (app.home / "trash").iterdir()] == [True]
    assert app.list_tasks(include_all=True) == []
    assert app.audit_entries(session.id)[0].action == "session.delete"


def test_a_session_with_a_leased_runner_cannot_be_deleted(app: Cronbox) -> None:
    session = app.create_session("busy")
    app.acquire_lease(session.id, "host-a", "1234")
    with pytest.raises(TaskStateError, match="has a runner working"):
        app.delete_session("busy")
    app.release_lease(session.id, "999")  # another runner's lease: ignored
    assert [lease.runner_ref for lease in app.leases()] == ["1234"]
    app.release_lease(session.id, "1234")
    app.delete_session("busy")


@pytest.mark.anyio
async def test_restart_releases_leases_of_runners_that_are_gone(app: Cronbox) -> None:
    session = app.create_session("orphan")
    app.acquire_lease(session.id, "old-host:1", "999999")
    sweeper = Sweeper(app, ProcessRuntime(), Delivery(app, []), SweepConfig(), app.clock)
    await sweeper.recover()
    assert app.leases() == []


@pytest.mark.anyio
async def test_the_writer_runs_one_write_at_a_time_in_submission_order() -> None:
    writer = Writer()
    running = 0
    peak = 0
    order: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()

    def write(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(5)
        order.append(n)
        with lock:
            running -= 1
        return n

    results: list[int] = []

    async def submit(n: int) -> None:
        results.append(await writer(write, n))

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(submit, n)
            await anyio.lowlevel.checkpoint()  # keep submission order deterministic
        gate.set()
    assert peak == 1
    assert order == list(range(6))
    assert sorted(results) == list(range(6))


def test_history_does_not_change_what_a_series_action_reads(
    app: Cronbox, clock: ManualClock
) -> None:
    """The live occurrence is found by one indexed lookup, not by reading the history."""
    session = app.create_session("long")
    task = app.schedule_task(session.id, {"prompt": "p", "recurrence": "@hourly"})
    for n in range(30):
        clock.set(f"2026-01-{15 + (9 + n) // 24:02d}T{(9 + n) % 24:02d}:00:01Z")
        run_once(app, clock, session.id, task.id if n == 0 else f"{task.id}~{n}")
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM messages_in WHERE series_id = ? AND kind = 'task' "
            "ORDER BY seq DESC LIMIT 1",
            [task.id],
        ).fetchall()
    assert any("messages_in_series" in str(step) for step in plan)
    assert app.pause_task(task.id).id == f"{task.id}~30"
    assert [r.outcome for r in app.runs_for(task.id, limit=100)].count(RunOutcome.OK) == 30


def test_every_agent_profile_the_host_accepts_is_a_provider_the_runner_serves() -> None:
    from agent_runner.providers import get_provider

    for name in BUILTIN_AGENTS:
        assert get_provider(name) is not None
    with pytest.raises(UnknownAgent):
        check_agent("nosuchagent")


def test_cancelling_a_series_also_cancels_its_manual_runs_not_yet_started(app: Cronbox) -> None:
    session = app.create_session("manual")
    task = app.schedule_task(session.id, {"prompt": "p", "recurrence": "@daily"})
    run = app.run_now(task.id)
    app.cancel_task(task.id)
    statuses = {r.id: r.status for r in app.inbound_rows(session.id)}
    assert statuses == {task.id: MessageStatus.CANCELLED, run.id: MessageStatus.CANCELLED}
    assert app.get_session(session.id).next_due_at is None


def test_a_new_session_is_not_stale_so_a_restart_re_derives_nothing(app: Cronbox) -> None:
    app.create_session("fresh")
    assert app.stale_sessions() == []


def test_the_conversation_shows_messages_in_and_replies_out_in_time_order(
    app: Cronbox, clock: ManualClock
) -> None:
    session = app.create_session("talk")
    chat = app.send_message(session.id, "hello")
    app.schedule_task(session.id, {"prompt": "much later", "processAfter": "+1d"})
    clock.advance(2)
    task = app.schedule_task(session.id, {"prompt": "check the build", "processAfter": "now"})
    directory = app.session_dir(session.id)
    with sdb.outbound(directory) as db, db.atomic():
        sdb.set_ack(db, chat.id, 0, AckStatus.COMPLETED, fmt(clock.now()), None, "hi")
        sdb.insert_outbound(db, "out-1", MessageKind.CHAT, {"text": "hi there"},
                            fmt(clock.now()), in_reply_to=chat.id)  # fmt: skip
        sdb.insert_outbound(db, "out-bad", MessageKind.CHAT, {"text": ""}, fmt(clock.now()))
        sdb.set_ack(db, task.id, 0, AckStatus.FAILED, fmt(clock.now()), "build is red", None)
    app.settle_acks(session.id, timedelta(minutes=10))

    entries = app.conversation("talk")
    assert [(e.direction, e.kind, e.text) for e in entries] == [
        ("in", MessageKind.CHAT, "hello"),
        ("in", MessageKind.TASK, "check the build"),
        ("out", MessageKind.CHAT, "hi there"),
    ]
    assert entries[0].status is MessageStatus.COMPLETED
    assert (entries[1].outcome, entries[1].error) == (RunOutcome.ERROR, "build is red")
    assert entries[2].in_reply_to == chat.id
    assert app.replies(session.id, chat.id) == ["hi there"]
    assert len(app.conversation("talk", limit=1)) == 1
    (run,) = app.runs_for(task.id)
    assert app.run(run.id).error == "build is red"
    with pytest.raises(RunNotFound):
        app.run(run.id + 100)


def test_the_session_zone_is_recorded_in_its_inbox_for_the_mcp_server(app: Cronbox) -> None:
    session = app.create_session("zoned", timezone="Europe/Berlin")
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        assert sdb.session_zone(db) == "Europe/Berlin"
    app.update_session("zoned", timezone="Asia/Tokyo")
    with sdb.inbound(app.session_dir(session.id), readonly=True) as db:
        assert sdb.session_zone(db) == "Asia/Tokyo"
