"""The store: sessions, task actions, idempotency and the due index, on real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import InvalidInput, TaskNotFound, TaskStateError
from cronbox_shared.models import InboundMessage, MessageKind, MessageStatus
from cronbox_shared.timeutil import ManualClock, fmt, parse_utc
from host.service import Cronbox, Limits
from host.status import host_status
from host.store.central import SqliteCentral
from host.store.records import AuditEntry, Session, TaskView, TokenCount
from host.views import TokensTodayOut

START = "2026-01-15T12:00:00.000Z"  # 07:00 in New York, 21:00 in Tokyo


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=clock)


@pytest.fixture
def session(store: Cronbox) -> Session:
    return store.create_session("work", timezone="America/New_York")


def inbound_row(store: Cronbox, session_id: str, message_id: str) -> InboundMessage:
    with sdb.inbound(store.session_dir(session_id), readonly=True) as db:
        row = sdb.get_inbound(db, message_id)
    assert row is not None, message_id
    return row


def inbound_count(store: Cronbox, session_id: str) -> int:
    with sdb.inbound(store.session_dir(session_id), readonly=True) as db:
        return int(db.table("messages_in").count)


def add_later_occurrence(store: Cronbox, session_id: str, series: str) -> str:
    """Finish the first occurrence of ``series`` and insert its successor, as the sweep would."""
    with sdb.inbound(store.session_dir(session_id)) as db, db.atomic():
        first = sdb.get_inbound(db, series)
        assert first is not None and first.process_after is not None
        later = fmt(parse_utc(first.process_after) + timedelta(days=1))
        sdb.insert_inbound(
            db,
            {
                "id": f"{series}~1",
                "kind": MessageKind.TASK.value,
                "created_at": fmt(store.now()),
                "updated_at": fmt(store.now()),
                "status": MessageStatus.PENDING.value,
                "process_after": later,
                "scheduled_for": later,
                "recurrence": first.recurrence,
                "timezone": first.timezone,
                "series_id": series,
                "trigger": 1,
                "content": first.content,
            },
        )
        sdb.update_inbound(db, series, status=MessageStatus.COMPLETED.value, recurrence=None)
    store.sync_session(session_id)
    return f"{series}~1"


def schedule(store: Cronbox, session: Session, task_id: str, **fields: Any) -> TaskView:
    request: dict[str, Any] = {"taskId": task_id, "prompt": f"do {task_id}", **fields}
    return store.schedule_task(session.id, request)


def due_index(store: Cronbox, session: Session) -> str | None:
    return store.get_session(session.id).next_due_at


# --- every action by task id, series id and a later occurrence id ---------------------

REF_KINDS = ["task id", "series id", "later occurrence id"]


def target(store: Cronbox, session: Session, ref_kind: str) -> tuple[str, str]:
    """Schedule a task and return (ref to act on, id of the live occurrence)."""
    if ref_kind == "task id":
        schedule(store, session, "once", processAfter="2026-01-16T09:00:00")
        return "once", "once"
    schedule(store, session, "daily", recurrence="0 9 * * *")
    live = add_later_occurrence(store, session.id, "daily")
    return ("daily" if ref_kind == "series id" else live), live


@pytest.mark.parametrize("ref_kind", REF_KINDS)
def test_cancel_reaches_the_live_occurrence(
    store: Cronbox, session: Session, ref_kind: str
) -> None:
    ref, live = target(store, session, ref_kind)
    view = store.cancel_task(ref)
    assert view.id == live
    assert view.status is MessageStatus.CANCELLED
    assert inbound_row(store, session.id, live).status is MessageStatus.CANCELLED
    assert store.list_tasks(session.id) == []
    assert due_index(store, session) is None


@pytest.mark.parametrize("ref_kind", REF_KINDS)
def test_pause_reaches_the_live_occurrence(store: Cronbox, session: Session, ref_kind: str) -> None:
    ref, live = target(store, session, ref_kind)
    view = store.pause_task(ref)
    assert (view.id, view.status) == (live, MessageStatus.PAUSED)
    assert inbound_row(store, session.id, live).status is MessageStatus.PAUSED
    assert due_index(store, session) is None


@pytest.mark.parametrize("ref_kind", REF_KINDS)
def test_resume_reaches_the_live_occurrence(
    store: Cronbox, session: Session, ref_kind: str
) -> None:
    ref, live = target(store, session, ref_kind)
    store.pause_task(ref)
    view = store.resume_task(ref)
    row = inbound_row(store, session.id, live)
    assert (view.id, view.status) == (live, MessageStatus.PENDING)
    assert row.status is MessageStatus.PENDING
    assert due_index(store, session) == row.process_after


@pytest.mark.parametrize("ref_kind", REF_KINDS)
def test_update_reaches_the_live_occurrence(
    store: Cronbox, session: Session, ref_kind: str
) -> None:
    ref, live = target(store, session, ref_kind)
    view = store.update_task({"taskId": ref, "prompt": "new words"})
    assert view.id == live
    assert view.prompt == "new words"
    assert inbound_row(store, session.id, live).prompt == "new words"


@pytest.mark.parametrize(
    "act",
    [
        lambda s, ref: s.cancel_task(ref),
        lambda s, ref: s.pause_task(ref),
        lambda s, ref: s.update_task({"taskId": ref, "prompt": "x"}),
    ],
    ids=["cancel", "pause", "update"],
)
def test_actions_leave_the_finished_occurrence_alone(
    store: Cronbox, session: Session, act: Callable[[Cronbox, str], TaskView]
) -> None:
    schedule(store, session, "daily", recurrence="0 9 * * *")
    before = inbound_row(store, session.id, "daily")
    add_later_occurrence(store, session.id, "daily")
    act(store, "daily")
    first = inbound_row(store, session.id, "daily")
    assert first.status is MessageStatus.COMPLETED
    assert first.content == before.content


def test_list_shows_one_row_per_series_the_live_occurrence(
    store: Cronbox, session: Session
) -> None:
    schedule(store, session, "daily", recurrence="0 9 * * *")
    live = add_later_occurrence(store, session.id, "daily")
    views = store.list_tasks(session.id, include_all=True)
    assert [(v.id, v.series_id) for v in views] == [(live, "daily")]
    assert store.get_task("daily").id == live
    assert store.get_task(live).id == live


@pytest.mark.parametrize(
    "act",
    [
        lambda s, ref: s.cancel_task(ref),
        lambda s, ref: s.pause_task(ref),
        lambda s, ref: s.resume_task(ref),
        lambda s, ref: s.update_task({"taskId": ref, "prompt": "x"}),
    ],
    ids=["cancel", "pause", "resume", "update"],
)
def test_actions_on_an_unknown_id_raise_task_not_found(
    store: Cronbox, session: Session, act: Callable[[Cronbox, str], TaskView]
) -> None:
    with pytest.raises(TaskNotFound, match='"nope"'):
        act(store, "nope")


def test_actions_are_scoped_to_the_given_session(store: Cronbox, session: Session) -> None:
    other = store.create_session("other")
    schedule(store, session, "mine", processAfter="+1h")
    with pytest.raises(TaskNotFound):
        store.cancel_task("mine", session_id=other.id)
    assert store.get_task("mine").status is MessageStatus.PENDING


# --- idempotent schedule ----------------------------------------------------------------


def test_scheduling_the_same_id_twice_creates_one_task(store: Cronbox, session: Session) -> None:
    first = schedule(store, session, "t1", processAfter="2026-01-16T09:00:00")
    second = schedule(store, session, "t1", processAfter="2026-01-16T09:00:00")
    assert second == first
    assert inbound_count(store, session.id) == 1
    assert len(store.list_tasks(session.id, include_all=True)) == 1
    actions = [e.action for e in store.audit_entries(session.id)]
    assert actions.count("task.schedule") == 1


def test_scheduling_an_id_used_by_another_session_is_rejected(
    store: Cronbox, session: Session
) -> None:
    other = store.create_session("other")
    schedule(store, session, "t1", processAfter="+1h")
    with pytest.raises(InvalidInput, match='task id "t1" is already used by another session'):
        schedule(store, other, "t1", processAfter="+1h")
    assert inbound_count(store, other.id) == 0
    assert store.list_tasks(other.id, include_all=True) == []


def test_schedule_returns_the_first_run_read_in_the_session_zone(
    store: Cronbox, session: Session
) -> None:
    view = schedule(store, session, "t1", processAfter="2026-01-15T21:00:00")
    assert view.next_run == "2026-01-16T02:00:00.000Z"
    assert view.timezone == "America/New_York"
    assert view.series_id == "t1"
    assert view.session == "work"


# --- cancel, pause, resume --------------------------------------------------------------


def test_cancel_ends_cancelled_and_list_hides_it_unless_asked(
    store: Cronbox, session: Session
) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    store.cancel_task("t1")
    assert inbound_row(store, session.id, "t1").status is MessageStatus.CANCELLED
    assert store.list_tasks(session.id) == []
    [view] = store.list_tasks(session.id, include_all=True)
    assert (view.id, view.status, view.next_run) == ("t1", MessageStatus.CANCELLED, None)
    assert store.audit_entries(session.id)[0].action == "task.cancel"


def test_cancelling_twice_is_a_clear_error(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    store.cancel_task("t1")
    with pytest.raises(TaskStateError) as info:
        store.cancel_task("t1")
    message = str(info.value)
    assert '"t1"' in message and "cancelled" in message
    assert message.count("\n") == 0


def test_a_paused_task_can_be_cancelled(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    store.pause_task("t1")
    assert store.cancel_task("t1").status is MessageStatus.CANCELLED


@pytest.mark.parametrize(
    ("setup", "act", "words"),
    [
        ([], "resume", "pending"),
        (["pause"], "pause", "paused"),
    ],
    ids=["resume-pending", "pause-paused"],
)
def test_pause_and_resume_refuse_the_wrong_state(
    store: Cronbox, session: Session, setup: list[str], act: str, words: str
) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    for step in setup:
        getattr(store, f"{step}_task")("t1")
    with pytest.raises(TaskStateError, match=words):
        getattr(store, f"{act}_task")("t1")


def test_pause_then_resume_keeps_the_time(store: Cronbox, session: Session) -> None:
    view = schedule(store, session, "t1", processAfter="2026-01-16T09:00:00")
    assert store.pause_task("t1").status is MessageStatus.PAUSED
    assert store.list_tasks(session.id)[0].status is MessageStatus.PAUSED
    resumed = store.resume_task("t1")
    assert resumed.status is MessageStatus.PENDING
    assert resumed.next_run == view.next_run


def test_resuming_a_past_due_recurring_task_moves_to_the_next_slot(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    view = schedule(store, session, "daily", recurrence="0 9 * * *")
    assert view.next_run == "2026-01-15T14:00:00.000Z"
    store.pause_task("daily")
    clock.set("2026-01-17T15:00:00.000Z")  # 10:00 in New York, past the 17th's slot
    resumed = store.resume_task("daily")
    assert resumed.next_run == "2026-01-18T14:00:00.000Z"
    assert inbound_row(store, session.id, "daily").scheduled_for == "2026-01-18T14:00:00.000Z"


def test_resuming_a_future_recurring_task_keeps_its_slot(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    schedule(store, session, "daily", recurrence="0 9 * * *")
    store.pause_task("daily")
    clock.advance(hours=1)
    assert store.resume_task("daily").next_run == "2026-01-15T14:00:00.000Z"


# --- update -----------------------------------------------------------------------------


def test_update_recurrence_recomputes_the_next_run_in_the_task_zone(
    store: Cronbox, session: Session
) -> None:
    schedule(store, session, "daily", recurrence="0 9 * * *")
    view = store.update_task({"taskId": "daily", "recurrence": "0 18 * * *"})
    assert view.recurrence == "0 18 * * *"
    assert view.next_run == "2026-01-15T23:00:00.000Z"  # today 18:00 in New York
    row = inbound_row(store, session.id, "daily")
    assert (row.process_after, row.scheduled_for) == (view.next_run, view.next_run)
    assert due_index(store, session) == view.next_run


def test_update_recurrence_of_a_later_occurrence_moves_that_occurrence(
    store: Cronbox, session: Session
) -> None:
    schedule(store, session, "daily", recurrence="0 9 * * *")
    live = add_later_occurrence(store, session.id, "daily")
    view = store.update_task({"taskId": "daily", "recurrence": "0 18 * * *"})
    assert view.id == live
    assert inbound_row(store, session.id, live).process_after == "2026-01-15T23:00:00.000Z"
    assert inbound_row(store, session.id, "daily").process_after == "2026-01-15T14:00:00.000Z"


def test_update_process_after_recomputes_the_next_run(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="2026-01-16T09:00:00")
    view = store.update_task({"taskId": "t1", "processAfter": "2026-01-20T09:00:00Z"})
    assert view.next_run == "2026-01-20T09:00:00.000Z"
    assert due_index(store, session) == "2026-01-20T09:00:00.000Z"


def test_update_prompt_only_leaves_the_time_alone(store: Cronbox, session: Session) -> None:
    before = schedule(store, session, "daily", recurrence="0 9 * * *")
    view = store.update_task({"taskId": "daily", "prompt": "something else"})
    assert view.next_run == before.next_run
    assert view.recurrence == "0 9 * * *"
    assert inbound_row(store, session.id, "daily").content == {
        "prompt": "something else",
        "script": None,
    }


def test_update_with_explicit_null_script_clears_it(store: Cronbox, session: Session) -> None:
    assert schedule(store, session, "t1", processAfter="+1h", script="echo hi").has_script
    view = store.update_task({"taskId": "t1", "script": None})
    assert not view.has_script
    assert inbound_row(store, session.id, "t1").script is None


def test_update_without_script_keeps_it(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="+1h", script="echo hi")
    store.update_task({"taskId": "t1", "prompt": "p"})
    assert inbound_row(store, session.id, "t1").script == "echo hi"


def test_update_with_null_prompt_is_rejected_and_writes_nothing(
    store: Cronbox, session: Session
) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    before = inbound_row(store, session.id, "t1")
    with pytest.raises(InvalidInput, match="prompt cannot be cleared"):
        store.update_task({"taskId": "t1", "prompt": None})
    assert inbound_row(store, session.id, "t1") == before
    assert store.audit_entries(session.id)[0].action == "task.schedule"


def test_clearing_recurrence_without_process_after_keeps_the_time(
    store: Cronbox, session: Session
) -> None:
    before = schedule(store, session, "daily", recurrence="0 9 * * *")
    view = store.update_task({"taskId": "daily", "recurrence": None})
    assert view.recurrence is None
    assert view.next_run == before.next_run
    assert inbound_row(store, session.id, "daily").recurrence is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"recurrence": "0 25 * * *"}, 'recurrence "0 25 * * *": hour 25 is out of range 0-23'),
        ({"recurrence": "@every 30s"}, "more often than the minimum of 60 seconds"),
        ({"processAfter": "soon-ish"}, 'processAfter "soon-ish" is not a time'),
        ({"processAfter": "2026-01-01T00:00:00Z"}, "is in the past"),
        ({"processAfter": None}, "this update would leave neither"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 65537}, "over the limit of 65,536 bytes"),
        ({"script": "x" * 65537}, "script is 65,537 bytes"),
        ({"prompt": 5}, "prompt"),
        ({"colour": "red"}, "colour"),
    ],
    ids=[
        "bad-cron",
        "too-frequent",
        "bad-time",
        "past-time",
        "clear-time-of-one-time-task",
        "blank-prompt",
        "big-prompt",
        "big-script",
        "wrong-type",
        "unknown-field",
    ],
)
def test_a_rejected_update_writes_nothing(
    store: Cronbox, session: Session, change: dict[str, Any], error: str
) -> None:
    schedule(store, session, "t1", processAfter="2026-01-16T09:00:00")
    before_row = inbound_row(store, session.id, "t1")
    before_view = store.get_task("t1")
    with pytest.raises(InvalidInput) as info:
        store.update_task({"taskId": "t1", **change})
    assert error in str(info.value)
    assert inbound_row(store, session.id, "t1") == before_row
    assert store.get_task("t1") == before_view
    assert store.audit_entries(session.id)[0].action == "task.schedule"


# --- the due index after every kind of write -------------------------------------------


def test_the_due_index_follows_every_kind_of_write(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    assert due_index(store, session) is None
    assert store.next_wake() is None

    schedule(store, session, "late", processAfter="2026-01-20T00:00:00Z")
    assert due_index(store, session) == "2026-01-20T00:00:00.000Z"

    schedule(store, session, "early", processAfter="2026-01-18T00:00:00Z")
    assert due_index(store, session) == "2026-01-18T00:00:00.000Z"

    schedule(store, session, "later", processAfter="2026-01-25T00:00:00Z")
    assert due_index(store, session) == "2026-01-18T00:00:00.000Z"

    store.pause_task("early")
    assert due_index(store, session) == "2026-01-20T00:00:00.000Z"

    store.resume_task("early")
    assert due_index(store, session) == "2026-01-18T00:00:00.000Z"

    store.cancel_task("early")
    assert due_index(store, session) == "2026-01-20T00:00:00.000Z"

    store.update_task({"taskId": "late", "processAfter": "2026-01-19T00:00:00Z"})
    assert due_index(store, session) == "2026-01-19T00:00:00.000Z"

    store.update_task({"taskId": "late", "processAfter": "2026-01-30T00:00:00Z"})
    assert due_index(store, session) == "2026-01-25T00:00:00.000Z"

    store.send_message(session.id, "hello")
    assert due_index(store, session) == START
    assert store.due_sessions(clock.now()) == [(session.id, START)]
    assert store.next_wake() == parse_utc(START)


def test_a_context_only_row_never_counts_as_due(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    store.send_message(session.id, "fyi", trigger=False)
    store.post_system_note(session.id, "note")
    assert inbound_count(store, session.id) == 2
    assert due_index(store, session) is None
    schedule(store, session, "t1", processAfter="2026-01-18T00:00:00Z")
    assert due_index(store, session) == "2026-01-18T00:00:00.000Z"
    clock.advance(days=1)
    assert store.due_sessions(clock.now()) == []


def test_a_trigger_zero_row_inserted_directly_never_counts(
    store: Cronbox, session: Session
) -> None:
    with sdb.inbound(store.session_dir(session.id)) as db, db.atomic():
        sdb.insert_inbound(
            db,
            {
                "id": "ctx",
                "kind": MessageKind.CHAT.value,
                "created_at": START,
                "status": MessageStatus.PENDING.value,
                "process_after": START,
                "timezone": "UTC",
                "trigger": 0,
                "content": {"text": "context", "sender": "user"},
            },
        )
    store.sync_session(session.id)
    assert due_index(store, session) is None
    store.reindex()
    assert due_index(store, session) is None


def test_due_sessions_are_those_due_by_now_earliest_first(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    other = store.create_session("other", timezone="UTC")
    idle = store.create_session("idle")
    schedule(store, session, "a", processAfter="2026-01-15T12:30:00Z")
    schedule(store, other, "b", processAfter="2026-01-15T12:10:00Z")
    assert store.due_sessions(clock.now()) == []
    assert store.next_wake() == parse_utc("2026-01-15T12:10:00Z")
    clock.set("2026-01-15T12:20:00Z")
    assert store.due_sessions(clock.now()) == [(other.id, "2026-01-15T12:10:00.000Z")]
    clock.set("2026-01-15T13:00:00Z")
    due = store.due_sessions(clock.now())
    assert [sid for sid, _ in due] == [other.id, session.id]
    assert idle.id not in dict(due)


def test_reindex_restores_a_corrupted_due_index(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="2026-01-18T00:00:00Z")
    schedule(store, session, "t2", processAfter="2026-01-19T00:00:00Z")
    with SqliteCentral(store.home).transaction() as db:
        db.execute(
            "UPDATE sessions SET next_due_at = ? WHERE id = ?",
            ["1999-01-01T00:00:00.000Z", session.id],
        )
    assert due_index(store, session) == "1999-01-01T00:00:00.000Z"
    assert store.reindex() == 1
    assert due_index(store, session) == "2026-01-18T00:00:00.000Z"
    assert [v.id for v in store.list_tasks(session.id)] == ["t1", "t2"]


def test_reindex_clears_a_due_index_with_nothing_pending(store: Cronbox, session: Session) -> None:
    with SqliteCentral(store.home).transaction() as db:
        db.execute(
            "UPDATE sessions SET next_due_at = ? WHERE id = ?",
            ["2026-01-15T00:00:00.000Z", session.id],
        )
    store.reindex()
    assert due_index(store, session) is None


# --- the session files ----------------------------------------------------------------


def test_inbound_seqs_are_even_and_increasing(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    store.send_message(session.id, "hi")
    schedule(store, session, "t2", recurrence="0 9 * * *")
    add_later_occurrence(store, session.id, "t2")
    store.post_system_note(session.id, "note")
    with sdb.inbound(store.session_dir(session.id), readonly=True) as db:
        seqs = [int(r["seq"]) for r in db.table("messages_in").rows_where(order_by="rowid")]
    assert len(seqs) == 5
    assert all(seq % 2 == 0 for seq in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_outbound_seqs_are_odd_and_increasing(store: Cronbox, session: Session) -> None:
    with sdb.outbound(store.session_dir(session.id)) as db:
        seqs = [
            sdb.insert_outbound(db, f"out-{i}", MessageKind.CHAT, {"text": str(i)}, START)
            for i in range(4)
        ]
    assert seqs == [1, 3, 5, 7]


def test_an_odd_seq_cannot_enter_inbound(store: Cronbox, session: Session) -> None:
    path = store.session_dir(session.id) / sdb.INBOUND
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO messages_in (id, seq, kind, created_at, status, timezone, content) "
                "VALUES ('x', 3, 'chat', ?, 'pending', 'UTC', '{}')",
                [START],
            )
    finally:
        conn.close()


@pytest.mark.parametrize("name", [sdb.INBOUND, sdb.OUTBOUND])
def test_session_dbs_use_journal_mode_delete(store: Cronbox, session: Session, name: str) -> None:
    directory = store.session_dir(session.id)
    schedule(store, session, "t1", processAfter="+1h")
    with sdb.outbound(directory):
        pass
    conn = sqlite3.connect(directory / name)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert mode == "delete"
    assert not (directory / f"{name}-wal").exists()


def test_stored_instants_are_canonical(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="in 2 hours")
    row = inbound_row(store, session.id, "t1")
    assert row.created_at == START
    assert row.process_after == "2026-01-15T14:00:00.000Z"
    assert store.get_session(session.id).created_at == START


def test_audit_log_records_who_did_what(store: Cronbox, session: Session) -> None:
    schedule(store, session, "t1", processAfter="+1h")
    store.pause_task("t1", actor="agent")
    entries = store.audit_entries(session.id)
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("agent", "task.pause", "t1"),
        ("cli", "task.schedule", "t1"),
        ("cli", "session.create", "work"),
    ]


def test_limits_are_per_store(tmp_path: Path, clock: ManualClock) -> None:
    store = Cronbox(tmp_path, clock=clock, limits=Limits(max_tasks_per_session=1))
    s = store.create_session("s")
    schedule(store, s, "a", processAfter="+1h")
    store.cancel_task("a")
    # A cancelled task is no longer live, so it frees its place.
    assert schedule(store, s, "b", processAfter="+1h").status is MessageStatus.PENDING


# --- model tokens ----------------------------------------------------------------------


def test_tokens_count_by_utc_day_and_a_series_sums_its_runs(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    task = store.schedule_task(session.id, {"prompt": "p", "recurrence": "0 9 * * *"})
    call = TokenCount(input_tokens=10, output_tokens=4)
    store.charge_tokens(session.id, [task.id], call)
    store.charge_tokens(session.id, [], call)  # a call naming no row counts for the day
    assert store.tokens_today(session.id) == TokenCount(input_tokens=20, output_tokens=8)
    assert store.series_tokens(task.id) == call
    [run] = store.runs_for(task.id)
    assert (run.series_id, run.scheduled_for, run.outcome) == (task.series_id, task.next_run, None)
    clock.advance(hours=12)  # 00:00 UTC: a new day (19:00 in the session's New York)
    assert store.tokens_today(session.id) == TokenCount()
    assert [(s.name, t) for s, t in store.token_use_today()] == [("work", TokenCount())]


def test_the_status_token_report_reads_only_sessions_it_lists_and_matches_a_full_read(
    store: Cronbox, clock: ManualClock
) -> None:
    """``status`` asks for the sessions that used tokens today or run a budgeted
    profile; its report is the one a read of every session gives."""
    (store.home / "agents.toml").write_text(
        '[agents.capped]\nprovider = "echo"\ndaily_token_budget = 100\n'
    )
    made = []
    for name, agent in (("spent", "echo"), ("idle", "echo"), ("capped", "capped")):
        made.append(store.create_session(name, agent=agent))
        clock.advance(minutes=1)  # oldest first: the order the report keeps
    spent, idle, capped = made
    store.charge_tokens(spent.id, [], TokenCount(input_tokens=3, output_tokens=1))
    assert [s.name for s, _ in store.token_use_today(set())] == ["spent"]
    assert [s.name for s, _ in store.token_use_today({"capped"})] == ["spent", "capped"]
    assert [s.name for s, _ in store.token_use_today()] == ["spent", "idle", "capped"]
    budgets = {name: p.daily_token_budget for name, p in store.agent_profiles().items()}
    full = TokensTodayOut.of(store.token_day(), store.token_use_today(), budgets)
    report = host_status(store)["tokens_today"]
    assert report == full.model_dump(mode="json")
    assert [(s["session_id"], s["daily_token_budget"]) for s in report["sessions"]] == [
        (spent.id, None), (capped.id, 100)
    ]  # fmt: skip
    assert idle.id not in {s["session_id"] for s in report["sessions"]}


def test_pruning_runs_drops_the_token_counts_of_the_days_before(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    store.charge_tokens(session.id, [], TokenCount(input_tokens=5))
    day = store.token_day()
    clock.advance(days=1)
    store.charge_tokens(session.id, [], TokenCount(input_tokens=7))
    store.central.prune_runs(fmt(store.now()))
    assert store.central.tokens_on(day) == {}
    assert store.tokens_today(session.id) == TokenCount(input_tokens=7)


def test_the_central_list_of_migrations_is_the_migrations_themselves() -> None:
    from sqlite_utils import Database

    from host.store.central import CENTRAL_MIGRATIONS
    from host.store.central_schema import central_migrations

    with sqlite3.connect(":memory:") as conn:
        pending = central_migrations.pending(Database(conn))
    # A new central migration's name goes into CENTRAL_MIGRATIONS too, or an old file
    # would be taken for up to date and never get it.
    assert tuple(m.name for m in pending) == CENTRAL_MIGRATIONS


def test_a_central_transaction_commits_whole_or_not_at_all_and_nests_as_a_savepoint(
    tmp_path: Path,
) -> None:
    central = SqliteCentral(tmp_path / "home")
    note = "INSERT INTO audit_log (at, actor, action) VALUES ('t', 'test', ?)"
    with central.transaction() as db:
        db.execute(note, ["kept"])
        with pytest.raises(RuntimeError), db.atomic():
            db.execute(note, ["inner, undone"])
            raise RuntimeError
        with db.atomic():
            db.execute(note, ["inner, kept"])
    with pytest.raises(RuntimeError), central.transaction() as db:
        db.execute(note, ["outer, undone"])
        raise RuntimeError
    with central.transaction() as db:
        actions = [r[0] for r in db.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["kept", "inner, kept"]
    with sqlite3.connect(central.path) as conn:  # and so another connection sees it
        assert [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")] == actions


def test_each_thread_reuses_its_central_connection_and_no_use_carries_a_transaction(
    tmp_path: Path,
) -> None:
    central = SqliteCentral(tmp_path)
    entry = AuditEntry(at="2026-01-15T09:00:00.000Z", actor="test", action="probe",
                       session_id=None, target="first")  # fmt: skip

    # A failure inside a transaction leaves nothing, and the next use starts clean.
    with pytest.raises(RuntimeError), central.transaction() as db:
        db.execute("INSERT INTO audit_log (at, actor, action, target) VALUES ('x', 'a', 'b', 'c')")
        raise RuntimeError("mid-way")
    # A use that opened a transaction and never ended it does not hand it on either.
    with central._open() as db:
        db.execute("BEGIN")
        db.execute("INSERT INTO audit_log (at, actor, action, target) VALUES ('x', 'a', 'b', 'd')")
    central.record_audit(entry)
    other = sqlite3.connect(tmp_path / "cronbox.db")
    try:
        assert other.execute("SELECT target FROM audit_log").fetchall() == [("first",)]
    finally:
        other.close()

    # Uses inside one another get connections of their own; threads each have theirs.
    with central._open() as outer, central._open() as inner:
        assert outer.conn is not inner.conn
    failures: list[BaseException] = []

    def reads() -> None:
        try:
            for _ in range(50):
                assert [e.target for e in central.audit_entries()] == ["first"]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reads) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
