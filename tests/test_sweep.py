"""The sweep and the store's settlement: costs, isolation, timeouts, catch-up, fan-out."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.changes import ChangeWatch
from cronbox_shared.models import AckStatus, MessageKind, MessageStatus, RunOutcome
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.runtimes import ProcessRuntime, RunnerSpec
from host.runtimes.base import RunnerHandle
from host.service import Cronbox
from host.store.central import SqliteCentral
from host.sweep import LiveRunner, SweepConfig, Sweeper
from tests.hosting import fast_sweep, make_settings, running_host, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every session file opened from now on (the real opener, observed)."""
    paths: list[Path] = []
    real_open = sdb.open_db

    @contextmanager
    def spy(kind: Any, path: Path, migrations: Any, readonly: bool) -> Iterator[Any]:
        paths.append(path)
        with real_open(kind, path, migrations, readonly) as db:
            yield db

    monkeypatch.setattr(sdb, "open_db", spy)
    return paths


def ack(store: Cronbox, session_id: str, message_id: str, attempt: int, status: AckStatus) -> None:
    """Write an ack as the runner would (the test plays the container)."""
    with sdb.outbound(store.session_dir(session_id)) as db, db.atomic():
        sdb.set_ack(db, message_id, attempt, status, fmt(store.now()), None, "done")


async def test_idle_tick_opens_no_session_file(tmp_path: Path, opened: list[Path]) -> None:
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-01T00:00:00Z"))
    for i in range(20):
        session = store.create_session(f"idle-{i}")
        store.schedule_task(session.id, {"prompt": "later", "processAfter": "+1d"})
    sweeper = Sweeper(store, ProcessRuntime(), Delivery(store, []), SweepConfig(), store.clock)
    opened.clear()
    await sweeper.tick()
    assert opened == []
    assert sweeper.live == {}


async def test_a_broken_session_does_not_stop_the_others(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    broken = store.create_session("broken")
    store.schedule_task(broken.id, {"prompt": "doomed", "processAfter": "now"})
    (store.session_dir(broken.id) / sdb.INBOUND).write_bytes(b"this is not a database" * 100)
    good = store.create_session("good")
    task = store.schedule_task(good.id, {"prompt": "fine", "processAfter": "now"})
    async with running_host(settings):
        await wait_for(lambda: store.runs_for(task.id) and store.runs_for(task.id)[0].outcome)
    assert store.runs_for(task.id)[0].outcome is RunOutcome.OK


async def test_task_past_its_run_timeout_is_stopped_and_recorded_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("slowpoke")
    task = store.schedule_task(
        session.id,
        {"prompt": "too slow", "processAfter": "now", "script": "sleep 30", "timeout": 1},
    )
    async with running_host(settings, fast_sweep(settings)):
        await wait_for(lambda: store.runs_for(task.id) and store.runs_for(task.id)[0].outcome)
    [run] = store.runs_for(task.id)
    assert run.outcome is RunOutcome.TIMEOUT
    assert "timed out after 1 s" in (run.error or "")
    row = next(r for r in store.inbound_rows(session.id) if r.id == task.id)
    assert row.status is MessageStatus.FAILED


def test_finished_occurrence_gets_exactly_one_next_occurrence(tmp_path: Path) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock, default_timezone="Europe/Berlin")
    session = store.create_session("daily")
    task = store.schedule_task(session.id, {"prompt": "brief", "recurrence": "0 9 * * *"})
    assert task.next_run == "2026-01-16T08:00:00.000Z"
    clock.set("2026-01-16T08:00:05Z")
    ack(store, session.id, task.id, 0, AckStatus.COMPLETED)
    store.settle_acks(session.id, timedelta(minutes=10))
    store.settle_acks(session.id, timedelta(minutes=10))  # a second pass changes nothing
    rows = store.inbound_rows(session.id)
    assert [(r.id, r.status, r.scheduled_for, r.recurrence) for r in rows] == [
        (task.id, MessageStatus.COMPLETED, "2026-01-16T08:00:00.000Z", None),
        (f"{task.id}~1", MessageStatus.PENDING, "2026-01-17T08:00:00.000Z", "0 9 * * *"),
    ]
    assert store.get_session(session.id).next_due_at == "2026-01-17T08:00:00.000Z"
    [run] = store.runs_for(task.id)
    assert run.outcome is RunOutcome.OK
    assert run.scheduled_for == "2026-01-16T08:00:00.000Z"


def test_failed_and_skipped_occurrences_still_continue_the_series(tmp_path: Path) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    session = store.create_session("stubborn")
    task = store.schedule_task(session.id, {"prompt": "p", "recurrence": "@hourly"})
    clock.set("2026-01-15T09:00:01Z")
    ack(store, session.id, task.id, 0, AckStatus.FAILED)
    store.settle_acks(session.id, timedelta(minutes=10))
    clock.set("2026-01-15T10:00:01Z")
    ack(store, session.id, f"{task.id}~1", 0, AckStatus.SKIPPED)
    store.settle_acks(session.id, timedelta(minutes=10))
    statuses = [(r.id, r.status) for r in store.inbound_rows(session.id)]
    assert statuses == [
        (task.id, MessageStatus.FAILED),
        (f"{task.id}~1", MessageStatus.SKIPPED),
        (f"{task.id}~2", MessageStatus.PENDING),
    ]
    outcomes = sorted((r.message_id, r.outcome) for r in store.runs_for(task.id))
    assert outcomes == [(task.id, RunOutcome.ERROR), (f"{task.id}~1", RunOutcome.SKIPPED)]


@pytest.mark.parametrize(
    ("grace", "status", "slot", "outcome"),
    [
        # Host down three days: one coalesced run at the latest slot.
        (None, MessageStatus.PENDING, "2026-01-18T09:00:00.000Z", None),
        # Within its misfire grace: still run.
        (8 * 3600, MessageStatus.PENDING, "2026-01-18T09:00:00.000Z", None),
        # Past its misfire grace: recorded missed, the series moves on.
        (3600, MessageStatus.SKIPPED, "2026-01-18T09:00:00.000Z", RunOutcome.MISSED),
    ],
)
def test_catch_up_after_downtime_coalesces_or_misses(
    tmp_path: Path, grace: int | None, status: MessageStatus, slot: str, outcome: RunOutcome | None
) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    session = store.create_session("sleepy")
    request: dict[str, Any] = {"prompt": "p", "recurrence": "0 9 * * *"}
    if grace is not None:
        request["misfireGrace"] = grace
    task = store.schedule_task(session.id, request)
    clock.set("2026-01-18T15:00:00Z")
    store.prepare_due(session.id)
    first = store.inbound_rows(session.id)[0]
    assert (first.status, first.scheduled_for) == (status, slot)
    runs = store.runs_for(task.id)
    assert [r.outcome for r in runs] == ([outcome] if outcome else [])
    if outcome is RunOutcome.MISSED:
        assert store.get_task(task.id).next_run == "2026-01-19T09:00:00.000Z"


def test_history_keeps_the_start_time_even_when_processing_was_never_seen(
    tmp_path: Path,
) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    session = store.create_session("quick")
    task = store.schedule_task(session.id, {"prompt": "p", "processAfter": "+1m"})
    clock.set("2026-01-15T08:01:00.250Z")
    ack(store, session.id, task.id, 0, AckStatus.PROCESSING)
    clock.set("2026-01-15T08:01:03.500Z")
    ack(store, session.id, task.id, 0, AckStatus.COMPLETED)  # before the host looked
    clock.set("2026-01-15T08:01:04Z")
    store.settle_acks(session.id, timedelta(minutes=10))
    [run] = store.runs_for(task.id)
    assert (run.started_at, run.finished_at) == (
        "2026-01-15T08:01:00.250Z",
        "2026-01-15T08:01:03.500Z",
    )


async def test_restart_rederives_only_sessions_changed_behind_the_index(
    tmp_path: Path, opened: list[Path]
) -> None:
    clock = ManualClock("2026-01-15T08:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    sessions = [store.create_session(f"s{i}") for i in range(3)]
    for session in sessions:
        store.schedule_task(session.id, {"prompt": "later", "processAfter": "+1d"})
    crashed = sessions[1]
    # A host that died after committing to inbound.db but before the central update.
    with sdb.inbound(store.session_dir(crashed.id)) as db, db.atomic():
        sdb.insert_inbound(
            db,
            {"id": "orphan", "kind": "chat", "created_at": fmt(clock.now()),
             "status": "pending", "process_after": fmt(clock.now()),
             "timezone": "UTC", "trigger": 1, "content": {"text": "hi"}},
        )  # fmt: skip
    assert store.get_session(crashed.id).next_due_at != fmt(clock.now())
    sweeper = Sweeper(store, ProcessRuntime(), Delivery(store, []), SweepConfig(), clock)
    opened.clear()
    await sweeper.recover()
    assert {p.parent.parent.name for p in opened} == {crashed.id}
    assert store.get_session(crashed.id).next_due_at == fmt(clock.now())


async def test_an_idle_runner_is_stopped_beside_the_loop_so_passes_go_on(tmp_path: Path) -> None:
    """Stopping an evicted runner that ignores SIGTERM takes its whole grace; the sweep
    keeps passing meanwhile, and the waiting session starts once the slot is free."""
    settings = make_settings(tmp_path / "home", max_containers=1)
    store = Cronbox.from_settings(settings)
    idle = store.create_session("idle")
    waiting = store.create_session("waiting")
    ready = tmp_path / "ignoring-sigterm"
    stubborn = ProcessRuntime(
        argv=[sys.executable, "-c",
              "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"]
    )  # fmt: skip
    config = fast_sweep(settings, stop_grace=2.0)
    sweeper = Sweeper(store, stubborn, Delivery(store, []), config, store.clock)
    spec = RunnerSpec(idle.id, store.session_dir(idle.id).resolve(), store.home.resolve(), {})
    handle = await stubborn.start(spec)
    try:
        await wait_for(ready.exists, 20)
        runner = LiveRunner(handle=handle, session=idle, busy=False)
        sweeper.live[idle.id] = runner
        passes = 0
        real_tick = sweeper.tick

        async def counted() -> None:
            nonlocal passes
            passes += 1
            await real_tick()

        sweeper.tick = counted  # type: ignore[method-assign]
        store.send_message(waiting.id, "my turn")
        async with anyio.create_task_group() as tg:
            await tg.start(sweeper.run)
            await wait_for(lambda: runner.stopping, 10)
            stopping_at = passes
            # The stubborn runner is still alive, and the loop has not waited for it.
            await wait_for(lambda: passes >= stopping_at + 5, 10)
            assert await stubborn.is_running(handle)
            await wait_for(lambda: waiting.id in sweeper.live, 20)
            assert not await stubborn.is_running(handle)
            assert idle.id not in sweeper.live
            sweeper.stop_accepting()
    finally:
        for other in [handle, *(r.handle for r in sweeper.live.values())]:
            await stubborn.kill(other)


async def test_a_runner_that_fails_before_any_work_counts_tries_and_ends_the_rows_failed(
    tmp_path: Path,
) -> None:
    """No crash loop: a session whose runner cannot start (an agent profile that no longer
    exists) uses up the 5 tries of the rows it was woken for, then they end failed with
    the runner's own error, in history and in the host's problems."""
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    ghost = store.create_session("ghost")
    with SqliteCentral(store.home).transaction() as db:  # a profile that was removed since
        db.execute("UPDATE sessions SET agent = 'nosuchagent' WHERE id = ?", [ghost.id])
    chat = store.send_message(ghost.id, "hello")
    task = store.schedule_task(ghost.id, {"prompt": "p", "processAfter": "now"})
    async with running_host(settings) as sweeper:
        assert "nosuchagent" in sweeper.problems[ghost.id].reason  # reported at start
        await wait_for(lambda: store.get_session(ghost.id).next_due_at is None, 60)
        rows = {r.id: r for r in store.inbound_rows(ghost.id)}
        assert rows[chat.id].status is MessageStatus.FAILED
        assert rows[task.id].status is MessageStatus.FAILED
        assert rows[task.id].tries == 5
        assert sweeper.started_total == 5
        (run,) = store.runs_for(task.id)
        assert run.outcome is RunOutcome.ERROR
        assert "before taking any work" in (run.error or "")
        assert 'unknown agent provider "nosuchagent"' in (run.error or "")
        assert 'unknown agent provider "nosuchagent"' in sweeper.problems[ghost.id].reason
    # What `cronbox status` shows comes from the status the host published.
    (problem,) = json.loads((store.home / "host.json").read_text())["problems"]
    assert problem["session"] == "ghost"
    assert "before taking any work" in problem["reason"]


async def test_a_request_written_after_the_runner_exited_is_applied_without_a_wake(
    tmp_path: Path,
) -> None:
    """The agent's last tool call may land just as its runner goes idle and exits: the
    host applies it within a pass or two, without waiting for the session's next wake."""
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("late")
    store.send_message(session.id, "hello")
    async with running_host(settings) as sweeper:
        await wait_for(lambda: sweeper.started_total == 1 and not sweeper.live)
        assert session.id in sweeper.watched
        action = {"action": "schedule_task", "taskId": "late-one", "prompt": "p",
                  "processAfter": fmt(store.now() + timedelta(hours=1))}  # fmt: skip
        with sdb.outbound(store.session_dir(session.id)) as db:
            sdb.insert_outbound(db, "late-action", MessageKind.SYSTEM, action, fmt(store.now()))
        await wait_for(lambda: [t.series_id for t in store.list_tasks()] == ["late-one"], 20)
        assert sweeper.started_total == 1  # no runner was woken for it


async def test_a_pass_over_an_unchanged_outbox_opens_no_session_file(
    tmp_path: Path, opened: list[Path]
) -> None:
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-01T00:00:00Z"))
    session = store.create_session("quiet")
    with sdb.outbound(store.session_dir(session.id)) as db:
        sdb.insert_outbound(db, "out-1", MessageKind.CHAT, {"text": "hi"}, fmt(store.now()))
    sweeper = Sweeper(store, ProcessRuntime(), Delivery(store, []), SweepConfig(), store.clock)
    await sweeper._deliver(session)
    assert store.undelivered(session.id) == []
    opened.clear()
    await sweeper._deliver(session)
    assert opened == []
    with sdb.outbound(store.session_dir(session.id)) as db:  # the runner writes again
        sdb.insert_outbound(db, "out-2", MessageKind.CHAT, {"text": "again"}, fmt(store.now()))
    await sweeper._deliver(session)
    assert store.undelivered(session.id) == []


def test_a_pass_woken_by_outbox_writes_tends_the_runners_that_wrote_and_the_overdue(
    tmp_path: Path,
) -> None:
    clock = ManualClock("2026-01-01T00:00:00Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    wrote, quiet, new = (store.create_session(n) for n in ("wrote", "quiet", "new"))
    watch = ChangeWatch.open()
    assert watch is not None, "inotify is available on Linux"
    config = SweepConfig(live_poll=0.25)
    sweeper = Sweeper(store, ProcessRuntime(), Delivery(store, []), config, clock, changes=watch)
    try:
        for session in (wrote, quiet):
            handle = RunnerHandle(session.id, "1", clock.now())
            sweeper.live[session.id] = LiveRunner(handle, session, tended_at=clock.now())
        sweeper._watch_outbox_changes()
        assert sweeper._to_tend(clock.now()) == [wrote.id, quiet.id]  # the first pass: all

        sweeper.outboxes_written({wrote.id})
        assert sweeper._to_tend(clock.now()) == [wrote.id]
        clock.advance(0.1)
        assert sweeper._to_tend(clock.now()) == []  # a slot changed hands: nobody is due
        sweeper.live[new.id] = LiveRunner(RunnerHandle(new.id, "2", clock.now()), new)
        assert sweeper._to_tend(clock.now()) == [new.id]  # never tended yet
        clock.advance(0.25)
        assert sweeper._to_tend(clock.now()) == [wrote.id, quiet.id, new.id]  # overdue
        sweeper.wake()  # anything else that wakes the sweep (a CLI write): every runner
        assert sweeper._to_tend(clock.now()) == [wrote.id, quiet.id, new.id]

        # Without change signals every pass tends every runner, as it always did.
        polling = Sweeper(store, ProcessRuntime(), Delivery(store, []), config, clock)
        polling.live = dict(sweeper.live)
        polling._to_tend(clock.now())
        assert polling._to_tend(clock.now()) == [wrote.id, quiet.id, new.id]
    finally:
        watch.close()
