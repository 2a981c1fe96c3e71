"""End to end: a real host, real runner subprocesses, real SQLite files."""

from __future__ import annotations

import json
import logging
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from cronbox_shared import sessiondb as sdb
from cronbox_shared.models import MessageStatus, RunOutcome
from cronbox_shared.timeutil import fmt, parse_utc
from host.service import Cronbox
from tests.hosting import (
    acks,
    delivered_seqs,
    fast_sweep,
    kill_group,
    make_settings,
    replies,
    running_host,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


def finished_runs(store: Cronbox, task: str, n: int = 1) -> bool:
    runs = store.runs_for(task)
    return len([r for r in runs if r.outcome is not None]) >= n


async def test_one_time_task_starts_on_time_and_its_reply_is_delivered_once(
    tmp_path: Path, runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "home", runtime=runtime)
    store = Cronbox.from_settings(settings)
    session = store.create_session("alpha")
    due = store.now() + timedelta(seconds=2)
    task = store.schedule_task(session.id, {"prompt": "ping", "processAfter": fmt(due)})
    caplog.set_level(logging.INFO, logger="cronbox.reply")
    async with running_host(settings) as sweeper:
        await wait_for(lambda: finished_runs(store, task.id))
        await wait_for(lambda: delivered_seqs(store, session.id))
        [start] = [s for s in sweeper.starts if s.session_id == session.id]
    [run] = store.runs_for(task.id)
    assert run.outcome is RunOutcome.OK
    assert run.scheduled_for == fmt(due)
    # Never early; how late it starts is measured by scripts/bench/due_latency.py.
    assert start.due_at == parse_utc(fmt(due))
    assert start.lateness >= 0
    [reply] = replies(store, session.id)
    assert reply["in_reply_to"] == task.id
    assert delivered_seqs(store, session.id) == [reply["seq"]]
    printed = [r for r in caplog.records if r.name == "cronbox.reply"]
    assert len(printed) == 1
    assert "ping" in printed[0].getMessage()


async def test_recurring_task_fires_three_times_exactly_on_its_grid(
    tmp_path: Path, runtime: str
) -> None:
    settings = make_settings(tmp_path / "home", runtime=runtime)
    store = Cronbox.from_settings(settings)
    session = store.create_session("beta")
    task = store.schedule_task(session.id, {"prompt": "tick", "recurrence": "@every 2s"})
    first = parse_utc(task.next_run or "")
    async with running_host(settings):
        await wait_for(lambda: finished_runs(store, task.id, 3))
    runs = sorted(store.runs_for(task.id), key=lambda r: r.scheduled_for or "")[:3]
    assert [r.scheduled_for for r in runs] == [
        fmt(first + timedelta(seconds=2 * k)) for k in range(3)
    ]
    assert all(r.outcome is RunOutcome.OK for r in runs)
    live = store.get_task(task.id)
    assert live.status is MessageStatus.PENDING
    assert live.next_run is not None and live.next_run > (runs[-1].scheduled_for or "")


GATES = {
    "skip": """echo '{"wakeAgent": false}'""",
    "wake": """echo '{"wakeAgent": true, "data": {"open_prs": 42}}'""",
    "slow": "sleep 30",
    "badjson": "echo 'this is not json'",
    "flood": "head -c 2097152 /dev/zero | tr '\\0' x; echo",
}


async def test_gate_scripts_skip_wake_or_fail_with_their_reason(
    tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_GATE_TIMEOUT", "1")
    settings = make_settings(tmp_path / "home", runtime=runtime)
    store = Cronbox.from_settings(settings)
    session = store.create_session("gated")
    soon = fmt(store.now() + timedelta(seconds=1))
    ids = {
        name: store.schedule_task(
            session.id,
            {"taskId": f"gate-{name}", "prompt": f"task {name}", "processAfter": soon,
             "script": script},
        ).id
        for name, script in GATES.items()
    }  # fmt: skip
    async with running_host(settings):
        for task_id in ids.values():
            await wait_for(lambda t=task_id: finished_runs(store, t))  # type: ignore[misc]
    outcome = {name: store.runs_for(t)[0] for name, t in ids.items()}
    assert outcome["skip"].outcome is RunOutcome.SKIPPED
    assert outcome["wake"].outcome is RunOutcome.OK
    assert "42" in (outcome["wake"].output_preview or "")
    assert outcome["slow"].outcome is RunOutcome.ERROR
    assert "timed out" in (outcome["slow"].error or "")
    assert outcome["badjson"].outcome is RunOutcome.ERROR
    assert "not JSON" in (outcome["badjson"].error or "")
    assert outcome["flood"].outcome is RunOutcome.ERROR
    assert "exceeded 1 MiB" in (outcome["flood"].error or "")
    replied_to = {r["in_reply_to"] for r in replies(store, session.id)}
    assert replied_to == {ids["wake"]}, "only the woken task reached the agent"
    statuses = {r.id: r.status for r in store.inbound_rows(session.id)}
    assert statuses[ids["skip"]] is MessageStatus.SKIPPED
    assert statuses[ids["badjson"]] is MessageStatus.FAILED


async def test_runner_killed_mid_task_is_retried_then_failed_after_five_tries(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("crashy")
    task = store.schedule_task(
        session.id, {"prompt": "never finishes", "processAfter": "now", "script": "sleep 60"}
    )
    async with running_host(settings, fast_sweep(settings, retry_base=0.05)) as sweeper:
        for attempt in range(5):
            await wait_for(
                lambda a=attempt: any(  # type: ignore[misc]
                    x["attempt"] == a and x["status"] == "processing"
                    for x in acks(store, session.id, task.id)
                )
            )
            runner = await wait_for(lambda: sweeper.live.get(session.id))
            kill_group(int(runner.handle.ref))
            await wait_for(
                lambda a=attempt: (
                    next(  # type: ignore[misc]
                        r for r in store.inbound_rows(session.id) if r.id == task.id
                    ).tries
                    == a + 1
                )
            )
    row = next(r for r in store.inbound_rows(session.id) if r.id == task.id)
    assert row.status is MessageStatus.FAILED
    assert row.tries == 5
    [run] = store.runs_for(task.id)
    assert run.outcome is RunOutcome.ERROR
    assert run.tries == 5
    assert "runner exited" in (run.error or "")


async def test_a_runner_killed_while_it_holds_nothing_is_told_as_killed_not_finished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is retried (it held nothing), but the log says how it went."""
    caplog.set_level(logging.INFO, logger="cronbox.sweep")
    settings = make_settings(tmp_path / "home", idle_timeout=60.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("idle")
    async with running_host(settings) as sweeper:
        message = store.send_message(session.id, "hello")
        await wait_for(
            lambda: [r for r in replies(store, session.id) if r["in_reply_to"] == message.id]
        )
        runner = await wait_for(lambda: sweeper.live.get(session.id))
        await wait_for(lambda: not runner.claims and not runner.busy)
        kill_group(int(runner.handle.ref))
        # The runner leaves the pool before its death is told (the telling reads its
        # status and last words): wait for the telling, not for the pool.
        told = f"session idle: runner exited with status -{signal.SIGKILL}, holding no work"

        def sweep_said() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "cronbox.sweep"]

        finished = "session idle: runner finished"
        await wait_for(lambda: [m for m in sweep_said() if m.startswith((told, finished))])
    said = sweep_said()
    assert [m for m in said if m.startswith(told)], said
    assert finished not in said


async def test_pool_of_two_never_runs_more_than_two_and_serves_earliest_due_first(
    tmp_path: Path,
    runtime: str,
) -> None:
    settings = make_settings(tmp_path / "home", max_containers=2, idle_timeout=0.3, runtime=runtime)
    store = Cronbox.from_settings(settings)
    base = store.now() + timedelta(seconds=2)
    order = []
    for i in range(8):
        session = store.create_session(f"pool-{i}")
        # Created in scrambled order so session ids and creation order don't give it away.
        offset = (i * 5) % 8
        due = fmt(base + timedelta(milliseconds=10 * offset))
        view = store.schedule_task(
            session.id, {"prompt": f"p{i}", "processAfter": due, "script": "sleep 0.3; "
                         "echo '{\"wakeAgent\": true}'"}
        )  # fmt: skip
        # The stored time, not the requested one: a time already past is clamped to now.
        order.append((view.next_run, session.id))
    async with running_host(settings) as sweeper:
        await wait_for(lambda: len(sweeper.starts) >= 8 and not sweeper.live)
        starts = list(sweeper.starts)
        peak = sweeper.peak_live
    assert peak <= 2
    assert [s.session_id for s in starts[:8]] == [sid for _, sid in sorted(order)]


async def test_failing_provider_records_failed_and_recurring_series_continues(
    tmp_path: Path,
) -> None:
    # Failed occurrences back off (issue 12); a short first step keeps the test quick.
    settings = make_settings(tmp_path / "home", failure_backoff=0.1)
    store = Cronbox.from_settings(settings)
    session = store.create_session("broken", agent="fail")
    once = store.schedule_task(session.id, {"prompt": "one", "processAfter": "now"})
    series = store.schedule_task(session.id, {"prompt": "again", "recurrence": "@every 1s"})
    async with running_host(settings):
        await wait_for(lambda: finished_runs(store, once.id))
        await wait_for(lambda: finished_runs(store, series.id, 2))
    [run] = store.runs_for(once.id)
    assert run.outcome is RunOutcome.ERROR
    assert "always fails" in (run.error or "")
    row = next(r for r in store.inbound_rows(session.id) if r.id == once.id)
    assert row.status is MessageStatus.FAILED
    assert all(r.outcome is RunOutcome.ERROR for r in store.runs_for(series.id))
    assert store.get_task(series.id).status is MessageStatus.PENDING


async def test_chat_message_wakes_the_session_at_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("chatty")
    async with running_host(settings):
        message = store.send_message(session.id, "hello there")
        found = await wait_for(lambda: replies(store, session.id))
    assert found[0]["in_reply_to"] == message.id
    assert "hello there" in json.loads(found[0]["content"])["text"]


async def test_host_shutdown_leaves_no_claimed_row_without_a_retry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("stopper")
    task = store.schedule_task(
        session.id, {"prompt": "long", "processAfter": "now", "script": "sleep 60"}
    )
    sweep = fast_sweep(settings, stop_grace=0.5)
    async with running_host(settings, sweep):
        await wait_for(lambda: acks(store, session.id, task.id))
    row = next(r for r in store.inbound_rows(session.id) if r.id == task.id)
    assert row.status is MessageStatus.PENDING
    assert row.tries == 1


async def test_a_row_written_behind_the_index_before_a_crash_is_served_after_the_start(
    tmp_path: Path,
) -> None:
    """A host that died between committing to a session's inbound.db and updating the
    index left a due row the index does not know of: the restarted host re-derives that
    session from its files and serves the row."""
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    crashed = store.create_session("crashed")
    now = fmt(store.now())
    with sdb.inbound(store.session_dir(crashed.id)) as db, db.atomic():
        sdb.insert_inbound(
            db,
            {"id": "orphan", "kind": "chat", "created_at": now, "status": "pending",
             "process_after": now, "timezone": "UTC", "trigger": 1,
             "content": {"text": "still there?"}},
        )  # fmt: skip
    assert store.stale_sessions() == [crashed.id]
    assert store.get_session(crashed.id).next_due_at is None
    async with running_host(settings):
        [reply] = await wait_for(lambda: replies(store, crashed.id))
    assert reply["in_reply_to"] == "orphan"
    assert store.stale_sessions() == []
