"""End to end: scheduling policies with a real host and real runner subprocesses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from cronbox_shared.models import MessageKind, MessageStatus, RunOutcome
from cronbox_shared.policies import due_at
from cronbox_shared.timeutil import fmt, parse_utc
from host.service import Cronbox
from host.store.records import TaskView
from tests.hosting import acks, make_settings, replies, running_host, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

FAILING_GATE = "echo 'the feed is down' >&2; exit 3"
PASSING_GATE = "echo '{\"wakeAgent\": true}'"


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


def finished(store: Cronbox, task: str) -> list[RunOutcome]:
    return [r.outcome for r in reversed(store.runs_for(task)) if r.outcome is not None]


def rescheduled(store: Cronbox, task: str) -> Callable[[], TaskView | None]:
    """The task, once its next run is in the future again."""

    def check() -> TaskView | None:
        view = store.get_task(task)
        return view if view.next_run and parse_utc(view.next_run) > store.now() else None

    return check


def paused(store: Cronbox, task: str) -> TaskView | None:
    view = store.get_task(task)
    return view if view.status is MessageStatus.PAUSED else None


def behind_by_five_slots(store: Cronbox, session_id: str, policy: str) -> str:
    """An hourly series whose last five slots passed while no host ran (the first was
    4.5 hours ago); the next slot is half an hour from now."""
    first = store.now() - timedelta(hours=4, minutes=30)
    task = store.schedule_task(
        session_id,
        {"taskId": f"hourly-{policy}", "prompt": "hourly report", "recurrence": "@every 1h",
         "processAfter": fmt(first), "missedPolicy": policy},
    )  # fmt: skip
    return task.id


async def test_missed_all_runs_each_of_five_missed_slots_in_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("replay")
    task = behind_by_five_slots(store, session.id, "all")
    first = parse_utc(store.get_task(task).next_run or "")
    async with running_host(settings):
        await wait_for(lambda: len(finished(store, task)) >= 5)
        live: TaskView = await wait_for(rescheduled(store, task))
    runs = list(reversed(store.runs_for(task)))
    assert [r.outcome for r in runs] == [RunOutcome.OK] * 5
    slots = [parse_utc(r.scheduled_for or "") for r in runs]
    assert slots == [first + timedelta(hours=n) for n in range(5)]
    starts = [r.started_at or "" for r in runs]
    assert starts == sorted(starts)
    assert live.status is MessageStatus.PENDING
    assert parse_utc(live.next_run or "") == first + timedelta(hours=5)
    assert [r["in_reply_to"] for r in replies(store, session.id)] == [r.message_id for r in runs]


async def test_missed_skip_runs_none_of_five_missed_slots(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("skipper")
    task = behind_by_five_slots(store, session.id, "skip")
    first = parse_utc(store.get_task(task).next_run or "")
    async with running_host(settings) as sweeper:
        await wait_for(lambda: len(finished(store, task)) >= 5)
        live: TaskView = await wait_for(rescheduled(store, task))
        started = sweeper.started_total
    runs = list(reversed(store.runs_for(task)))
    assert [r.outcome for r in runs] == [RunOutcome.MISSED] * 5
    assert sorted(parse_utc(r.scheduled_for or "") for r in runs) == [
        first + timedelta(hours=n) for n in range(5)
    ]
    assert parse_utc(live.next_run or "") == first + timedelta(hours=5)
    assert started == 0, "nothing was due, so no runner was woken"
    assert replies(store, session.id) == []


async def test_a_series_failing_max_failures_times_is_paused_with_a_note_and_resumes_cleanly(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", failure_backoff=0.2)
    store = Cronbox.from_settings(settings)
    session = store.create_session("flaky")
    task = store.schedule_task(
        session.id,
        {"taskId": "feed", "prompt": "check the feed", "recurrence": "@every 1s",
         "script": FAILING_GATE, "maxFailures": 3},
    )  # fmt: skip
    async with running_host(settings):
        stopped = await wait_for(lambda: paused(store, task.id))
        notes = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.SYSTEM]
        [note] = notes
        # The note wakes the agent (trigger=1), which answers it.
        await wait_for(lambda: any(r["in_reply_to"] == note.id for r in replies(store, session.id)))
        assert finished(store, task.id) == [RunOutcome.ERROR] * 3

        store.update_task({"taskId": task.id, "script": PASSING_GATE})
        store.resume_task(task.id)
        await wait_for(lambda: finished(store, task.id)[3:4] == [RunOutcome.OK])
        resumed = store.get_task(task.id)
        store.pause_task(task.id)
    assert stopped.paused_reason is not None
    assert stopped.paused_reason.startswith("failed 3 times in a row: ")
    assert "the feed is down" in stopped.paused_reason
    assert note.trigger == 1
    assert stopped.paused_reason in note.prompt
    [entry] = [e for e in store.audit_entries(session.id) if e.actor == "cronbox"]
    assert (entry.action, entry.target) == ("task.pause", task.id)
    assert entry.detail == {"reason": stopped.paused_reason}
    assert resumed.status is MessageStatus.PENDING
    assert resumed.paused_reason is None
    live = [r for r in store.inbound_rows(session.id) if r.series_id == task.id][-1]
    assert live.failures == 0


async def test_jitter_stays_within_bounds_and_is_identical_across_a_host_restart(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("spread")
    task = store.schedule_task(
        session.id,
        {"taskId": "spread", "prompt": "tick", "recurrence": "@every 2s", "jitter": 1},
    )  # fmt: skip

    def occurrences() -> list[tuple[str, str]]:
        rows = [r for r in store.inbound_rows(session.id) if r.series_id == task.id]
        return [(r.scheduled_for or "", r.process_after or "") for r in rows]

    async with running_host(settings):
        await wait_for(lambda: len(finished(store, task.id)) >= 2)
    before = occurrences()
    async with running_host(settings):
        await wait_for(lambda: len(finished(store, task.id)) >= 4)
    after = occurrences()

    assert after[: len(before)] == before, "a restart moves no occurrence"
    offsets = set()
    for slot, due in after:
        offset = parse_utc(due) - parse_utc(slot)
        assert timedelta(0) <= offset < timedelta(seconds=1)
        assert parse_utc(due) == due_at(task.id, parse_utc(slot), 1)
        offsets.add(offset)
    assert len(offsets) > 1
    for run in store.runs_for(task.id):
        when = parse_utc(run.scheduled_for or "")
        assert parse_utc(run.started_at or "") >= due_at(task.id, when, 1), "never early"


async def test_with_the_pool_full_of_task_work_a_chat_is_served_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", max_containers=1)
    store = Cronbox.from_settings(settings)
    go = tmp_path / "go"
    busy = store.create_session("busy")
    waiting = [store.create_session(name) for name in ("task-a", "task-b")]
    talk = store.create_session("talk")
    now = store.now()
    hold = store.schedule_task(
        busy.id,
        {"prompt": "long job", "processAfter": fmt(now - timedelta(seconds=3)),
         "script": f"while [ ! -e {go} ]; do sleep 0.05; done; {PASSING_GATE}"},
    )  # fmt: skip
    for n, session in enumerate(waiting):
        store.schedule_task(
            session.id,
            {"prompt": "task work", "processAfter": fmt(now - timedelta(seconds=2 - n))},
        )
    async with running_host(settings) as sweeper:
        await wait_for(lambda: acks(store, busy.id, hold.id))
        store.send_message(talk.id, "are you there?")
        go.touch()
        await wait_for(lambda: len(sweeper.starts) >= 4)
        await wait_for(lambda: replies(store, talk.id))
    order = [s.session_id for s in sweeper.starts]
    assert order[:2] == [busy.id, talk.id]
    assert set(order[2:4]) == {s.id for s in waiting}


async def test_a_task_due_in_quiet_hours_runs_at_their_end_while_chat_is_answered_at_once(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("night", timezone="UTC")
    now = store.now()
    end = now + timedelta(seconds=8)
    window = f"{now - timedelta(seconds=10):%H:%M:%S}-{end:%H:%M:%S}"
    store.update_session(session.id, quiet=window)
    end = end.replace(microsecond=0)
    task = store.schedule_task(session.id, {"prompt": "nightly", "processAfter": "now"})
    assert store.get_task(task.id).next_run == fmt(end)
    async with running_host(settings):
        chat = store.send_message(session.id, "still up?")
        [reply] = await wait_for(
            lambda: [r for r in replies(store, session.id) if r["in_reply_to"] == chat.id]
        )
        assert store.runs_for(task.id) == [], "the task waits for the end of the window"
        await wait_for(lambda: finished(store, task.id))
    [run] = store.runs_for(task.id)
    assert run.outcome is RunOutcome.OK
    assert parse_utc(run.started_at or "") >= end
    assert parse_utc(reply["created_at"]) < end


async def test_a_backfill_runs_the_past_slots_in_order_and_leaves_the_schedule(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    session = store.create_session("history")
    task = store.schedule_task(session.id, {"prompt": "daily digest", "recurrence": "@hourly"})
    now = store.now()
    first = store.backfill(task.id, fmt(now - timedelta(hours=3)), fmt(now))
    async with running_host(settings):
        await wait_for(lambda: len(finished(store, task.id)) >= 3)
    runs = list(reversed(store.runs_for(task.id)))
    assert [r.outcome for r in runs] == [RunOutcome.OK] * 3
    slots = [parse_utc(r.scheduled_for or "") for r in runs]
    assert slots == sorted(slots)
    assert slots[0] == parse_utc(first.scheduled_for or "")
    assert all(now - timedelta(hours=3) <= s <= now for s in slots)
    assert all("~backfill-" in r.message_id for r in runs)
    starts = [r.started_at or "" for r in runs]
    finishes = [r.finished_at or "" for r in runs]
    assert all(f <= s for f, s in zip(finishes, starts[1:], strict=False)), "one after another"
    assert store.get_task(task.id).next_run == task.next_run


async def test_a_series_whose_agent_fails_max_failures_times_is_paused_and_resumes_cleanly(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", failure_backoff=0.2)
    store = Cronbox.from_settings(settings)
    session = store.create_session("broken", agent="fail")
    task = store.schedule_task(
        session.id,
        {"taskId": "digest", "prompt": "digest", "recurrence": "@every 1s", "maxFailures": 3},
    )  # fmt: skip
    async with running_host(settings) as sweeper:
        stopped = await wait_for(lambda: paused(store, task.id))
        [note] = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.SYSTEM]
        # The note wakes the agent (which fails at it too), and then the runner goes idle.
        await wait_for(
            lambda: store.message(session.id, note.id).status is not MessageStatus.PENDING
        )
        await wait_for(lambda: not sweeper.live)
        assert finished(store, task.id) == [RunOutcome.ERROR] * 3
        store.update_session(session.id, agent="echo")
        store.resume_task(task.id)
        await wait_for(lambda: finished(store, task.id)[3:4] == [RunOutcome.OK])
    assert stopped.paused_reason is not None
    assert stopped.paused_reason.startswith("failed 3 times in a row: ")
    assert "always fails" in stopped.paused_reason
    assert note.trigger == 1 and stopped.paused_reason in note.prompt
    runs = list(reversed(store.runs_for(task.id)))
    # Each failure pushed the next run back: 0.2 s, then 0.4 s, from the failure.
    for n, (failed, nxt) in enumerate(pairwise(runs[:3])):
        backoff = timedelta(seconds=0.2 * 2**n)
        assert parse_utc(nxt.scheduled_for or "") >= parse_utc(failed.finished_at or "") + backoff
    live = [r for r in store.inbound_rows(session.id) if r.series_id == task.id][-1]
    assert (live.failures, live.paused_reason) == (0, None)
