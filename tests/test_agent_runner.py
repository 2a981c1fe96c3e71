"""The agent runner claims due rows, runs their gates and records every outcome in outbound.db.

Sessions are set up through the host's Cronbox on real SQLite files; the runner runs
in-process (or as ``python -m agent_runner``) against those files alone.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from agent_runner.prompt import render_batch, render_context, render_row
from agent_runner.provider import Batch, BatchItem, ProviderResult, RowOutcome, SessionContext
from agent_runner.providers import (
    UnknownProvider,
    get_provider,
    register_provider,
    unregister_provider,
)
from agent_runner.providers.echo import EchoProvider
from agent_runner.providers.failing import FAIL_MESSAGE
from agent_runner.runner import claim_limit, provider_needed, run_runner
from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import InvalidInput
from cronbox_shared.models import AckStatus, InboundMessage, MessageKind
from cronbox_shared.rows import InboxRow
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import Clock, ManualClock, SystemClock
from host.service import Cronbox

# Bounds that turn a hang into a failure; never a statement about how long things take.
HANG_GUARD = 20
SUBPROCESS_GUARD = 60

WAKE_WITH_DATA = 'echo \'{"wakeAgent": true, "data": {"city": "Oslo", "temp": -3}}\''
SKIP = "echo '{\"wakeAgent\": false}'"
BAD_JSON = "echo 'all good'"


class RecordingProvider:
    """Answers like echo and keeps every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.on_run: Any = None

    async def run(self, batch: Batch) -> ProviderResult:
        self.batches.append(batch)
        if self.on_run is not None:
            await self.on_run(batch)
        return await EchoProvider().run(batch)

    @property
    def seen_ids(self) -> list[list[str]]:
        return [batch.ids for batch in self.batches]


@pytest.fixture
def recorder() -> Iterator[RecordingProvider]:
    provider = RecordingProvider()
    register_provider("recording", lambda: provider)
    yield provider
    unregister_provider("recording")


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path / "home")


@pytest.fixture
def session_id(store: Cronbox) -> str:
    return store.create_session("demo").id


def config_for(store: Cronbox, session_id: str, **overrides: Any) -> RunnerSettings:
    base = RunnerSettings(
        session_dir=store.session_dir(session_id), idle_timeout=0.5, poll_interval=0.05
    )
    return dataclasses.replace(base, **overrides)


async def run(config: RunnerSettings, clock: Clock | None = None, **kwargs: Any) -> int:
    with anyio.fail_after(HANG_GUARD):
        return await run_runner(config, clock or SystemClock(), **kwargs)


def task(store: Cronbox, session_id: str, prompt: str, **fields: Any) -> str:
    request = {"prompt": prompt, "processAfter": "now", **fields}
    return store.schedule_task(session_id, request).id


def acks(store: Cronbox, session_id: str, *ids: str) -> dict[str, dict[str, Any]]:
    """The latest ack of each given row, by id."""
    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        return {a["message_id"]: a for a in sdb.acks_for(db, ids)}


def replies(store: Cronbox, session_id: str) -> dict[str, str]:
    """Chat replies in messages_out, by the row they answer."""
    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        rows = [sdb.outbound_from_row(r) for r in sdb.outbound_after(db, 0)]
    assert all(r.kind is MessageKind.CHAT and r.seq % 2 == 1 for r in rows)
    return {str(r.in_reply_to): str(r.content["text"]) for r in rows}


def pending(store: Cronbox, session_id: str) -> list[InboundMessage]:
    """Every pending row of the session's inbox, due or not."""
    with sdb.inbound(store.session_dir(session_id), readonly=True) as db:
        return sdb.due_rows(db, "9999-12-31T00:00:00.000Z")


def pre_ack(store: Cronbox, session_id: str, message_id: str, status: AckStatus) -> None:
    with sdb.outbound(store.session_dir(session_id)) as db, db.atomic():
        sdb.set_ack(db, message_id, 0, status, "2026-01-01T00:00:00.000Z")


# --- the poll loop ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_echo_replies_to_each_due_row_and_acks_it_completed(
    store: Cronbox, session_id: str
) -> None:
    chat = store.send_message(session_id, "hello there").id
    task_id = task(store, session_id, "summarise my open PRs")

    assert await run(config_for(store, session_id)) == 0

    found = acks(store, session_id, chat, task_id)
    assert {found[chat]["status"], found[task_id]["status"]} == {"completed"}
    assert found[chat]["output_preview"] == "echo: hello there"
    assert found[task_id]["attempt"] == 0
    assert found[task_id]["error"] is None
    assert replies(store, session_id) == {
        chat: "echo: hello there",
        task_id: "echo: summarise my open PRs",
    }


@pytest.mark.anyio
async def test_reply_ids_are_fresh_and_seqs_odd(store: Cronbox, session_id: str) -> None:
    store.send_message(session_id, "one")
    store.send_message(session_id, "two")

    await run(config_for(store, session_id))

    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        rows = sdb.outbound_after(db, 0)
    assert len({r["id"] for r in rows}) == 2
    assert all(r["id"].startswith("out-") and r["seq"] % 2 == 1 for r in rows)


@pytest.mark.anyio
async def test_future_row_is_not_picked_up(store: Cronbox, session_id: str) -> None:
    later = task(store, session_id, "not yet", processAfter="+1h")

    await run(config_for(store, session_id))

    assert acks(store, session_id, later) == {}
    assert replies(store, session_id) == {}


@pytest.mark.anyio
async def test_context_row_alone_does_not_wake_the_agent(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    store.post_system_note(session_id, "your last request was rejected")

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.batches == []
    with sdb.outbound(store.session_dir(session_id), readonly=True) as db:
        assert sdb.acks_for(db, [r.id for r in pending(store, session_id)]) == []


@pytest.mark.anyio
async def test_context_row_rides_along_with_a_trigger_row(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    store.post_system_note(session_id, "the webhook channel is down")
    chat = store.send_message(session_id, "anything new?").id
    note = next(r.id for r in pending(store, session_id) if r.kind is MessageKind.SYSTEM)

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.seen_ids == [[note, chat]]
    assert "[note from cronbox] the webhook channel is down" in recorder.batches[0].prompt
    found = acks(store, session_id, note, chat)
    assert {found[note]["status"], found[chat]["status"]} == {"completed"}


@pytest.mark.anyio
async def test_full_batch_of_context_rows_does_not_hide_the_trigger_row(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    for n in range(3):
        store.post_system_note(session_id, f"note {n}")
    chat = store.send_message(session_id, "wake up").id

    await run(config_for(store, session_id, provider="recording", max_batch=2))

    assert [len(ids) for ids in recorder.seen_ids] == [2, 2]
    assert recorder.seen_ids[-1][-1] == chat
    assert acks(store, session_id, chat)[chat]["status"] == "completed"


@pytest.mark.anyio
async def test_prompt_starts_with_timezone_and_local_time(
    tmp_path: Path, recorder: RecordingProvider
) -> None:
    clock = ManualClock("2026-01-15T08:00:00.000Z")
    store = Cronbox(tmp_path / "home", clock=clock)
    session_id = store.create_session("berlin", timezone="Europe/Berlin").id
    task_id = task(store, session_id, "morning briefing")

    config = config_for(store, session_id, provider="recording", timezone="Europe/Berlin")
    await run(config, clock)

    (batch,) = recorder.batches
    assert batch.prompt.splitlines()[0] == (
        "Timezone: Europe/Berlin. Local time: 2026-01-15 09:00 (Thursday)."
    )
    assert f"[scheduled task {task_id}] morning briefing" in batch.prompt
    assert batch.context.session_dir == store.session_dir(session_id)
    assert batch.context.timezone == "Europe/Berlin"


@pytest.mark.anyio
async def test_gate_false_skips_the_row_without_invoking_the_provider(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    gated = task(store, session_id, "only when it rains", script=f"echo checking; {SKIP}")

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.batches == []
    ack = acks(store, session_id, gated)[gated]
    assert ack["status"] == "skipped"
    assert ack["error"] is None
    assert "checking" in ack["output_preview"]
    assert replies(store, session_id) == {}


@pytest.mark.anyio
async def test_gate_true_puts_its_data_in_the_prompt(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    gated = task(store, session_id, "dress advice", script=WAKE_WITH_DATA)

    await run(config_for(store, session_id, provider="recording"))

    (batch,) = recorder.batches
    (item,) = batch.items
    assert item.gated
    assert item.gate_data == {"city": "Oslo", "temp": -3}
    assert 'Script data: {"city": "Oslo", "temp": -3}' in batch.prompt
    assert replies(store, session_id) == {
        gated: 'echo: dress advice [data: {"city": "Oslo", "temp": -3}]'
    }


@pytest.mark.anyio
async def test_gate_runs_in_the_workspace(store: Cronbox, session_id: str) -> None:
    workspace = store.session_dir(session_id) / sdb.WORKSPACE
    (workspace / "flag").write_text("yes")
    script = 'test -f flag && echo \'{"wakeAgent": true, "data": "found"}\''
    gated = task(store, session_id, "check the flag", script=script)

    await run(config_for(store, session_id))

    assert replies(store, session_id)[gated] == 'echo: check the flag [data: "found"]'


@pytest.mark.anyio
async def test_gate_error_fails_the_row_with_the_reason_and_skips_the_provider(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    gated = task(store, session_id, "never reached", script=BAD_JSON)

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.batches == []
    ack = acks(store, session_id, gated)[gated]
    assert ack["status"] == "failed"
    assert ack["error"].startswith("gate script")
    assert "not JSON: all good" in ack["error"]


@pytest.mark.anyio
async def test_gate_timeout_is_recorded_with_its_reason(store: Cronbox, session_id: str) -> None:
    gated = task(store, session_id, "slow gate", script="sleep 30")

    await run(config_for(store, session_id, gate_timeout=0.2))

    ack = acks(store, session_id, gated)[gated]
    assert ack["status"] == "failed"
    assert ack["error"] == "gate script timed out after 0.2 s"


@pytest.mark.anyio
async def test_skipped_gate_leaves_the_rest_of_the_batch_to_the_provider(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    gated = task(store, session_id, "skip me", script=SKIP)
    chat = store.send_message(session_id, "still answer me").id

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.seen_ids == [[chat]]
    found = acks(store, session_id, gated, chat)
    assert (found[gated]["status"], found[chat]["status"]) == ("skipped", "completed")


@pytest.mark.anyio
async def test_context_row_is_held_back_when_its_trigger_row_was_skipped(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    store.post_system_note(session_id, "fyi")
    gated = task(store, session_id, "skip me", script=SKIP)
    note = next(r.id for r in pending(store, session_id) if r.kind is MessageKind.SYSTEM)

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.batches == []
    found = acks(store, session_id, gated, note)
    assert found[gated]["status"] == "skipped"
    assert note not in found  # released: it rides along with the next trigger row


@pytest.mark.anyio
async def test_failing_provider_fails_every_row_with_its_error(
    store: Cronbox, session_id: str
) -> None:
    chat = store.send_message(session_id, "hi").id
    task_id = task(store, session_id, "do it")

    await run(config_for(store, session_id, provider="fail"))

    found = acks(store, session_id, chat, task_id)
    for ack in found.values():
        assert ack["status"] == "failed"
        assert ack["error"] == FAIL_MESSAGE
    assert replies(store, session_id) == {}


@pytest.mark.anyio
async def test_row_left_out_by_the_provider_is_failed_not_completed(
    store: Cronbox, session_id: str
) -> None:
    class Partial:
        async def run(self, batch: Batch) -> ProviderResult:
            first = batch.items[0].message.id
            return ProviderResult({first: RowOutcome.success("done")})

    register_provider("partial", Partial)
    try:
        first = store.send_message(session_id, "one").id
        second = store.send_message(session_id, "two").id
        await run(config_for(store, session_id, provider="partial"))
    finally:
        unregister_provider("partial")

    found = acks(store, session_id, first, second)
    assert found[first]["status"] == "completed"
    assert found[second]["status"] == "failed"
    assert "no result" in found[second]["error"]


@pytest.mark.anyio
async def test_ack_filter_applies_before_the_batch_limit(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    done = [store.send_message(session_id, f"old {n}").id for n in range(2)]
    for message_id in done:
        pre_ack(store, session_id, message_id, AckStatus.COMPLETED)
    new = [store.send_message(session_id, f"new {n}").id for n in range(2)]

    await run(config_for(store, session_id, provider="recording", max_batch=2))

    assert recorder.seen_ids == [new]
    assert set(replies(store, session_id)) == set(new)


@pytest.mark.anyio
async def test_rows_beyond_the_batch_limit_come_in_later_batches(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    ids = [store.send_message(session_id, f"m{n}").id for n in range(5)]

    await run(config_for(store, session_id, provider="recording", max_batch=2))

    assert recorder.seen_ids == [ids[0:2], ids[2:4], ids[4:5]]


@pytest.mark.anyio
async def test_stale_processing_acks_are_cleared_at_start(store: Cronbox, session_id: str) -> None:
    chat = store.send_message(session_id, "left behind by a crash").id
    pre_ack(store, session_id, chat, AckStatus.PROCESSING)

    await run(config_for(store, session_id))

    assert acks(store, session_id, chat)[chat]["status"] == "completed"


@pytest.mark.anyio
async def test_heartbeat_is_touched(store: Cronbox, session_id: str) -> None:
    heartbeat = store.session_dir(session_id) / sdb.HEARTBEAT
    heartbeat.touch()
    os.utime(heartbeat, (0, 0))

    await run(config_for(store, session_id))

    assert heartbeat.stat().st_mtime > 0


@pytest.mark.anyio
async def test_heartbeat_is_touched_while_the_provider_works(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    heartbeat = store.session_dir(session_id) / sdb.HEARTBEAT

    async def slow(batch: Batch) -> None:
        os.utime(heartbeat, (0, 0))
        with anyio.fail_after(5):
            # A file's mtime has no change event, so poll it.
            while heartbeat.stat().st_mtime == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)

    recorder.on_run = slow
    store.send_message(session_id, "take your time")

    await run(config_for(store, session_id, provider="recording"))

    assert len(recorder.batches) == 1


@pytest.mark.anyio
async def test_exits_by_itself_after_the_idle_timeout(store: Cronbox, session_id: str) -> None:
    assert await run(config_for(store, session_id, idle_timeout=0.2)) == 0


@pytest.mark.anyio
async def test_stop_finishes_the_current_batch_first(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    stop = anyio.Event()

    async def stop_midway(batch: Batch) -> None:
        stop.set()

    recorder.on_run = stop_midway
    chat = store.send_message(session_id, "last one").id

    assert (
        await run(config_for(store, session_id, provider="recording", idle_timeout=60), stop=stop)
        == 0
    )

    assert acks(store, session_id, chat)[chat]["status"] == "completed"


@pytest.mark.anyio
async def test_unknown_provider_is_refused_before_touching_files(
    store: Cronbox, session_id: str
) -> None:
    outbox = store.session_dir(session_id) / sdb.OUTBOX
    before = {p.name: p.read_bytes() for p in outbox.iterdir()}
    assert (store.session_dir(session_id) / sdb.OUTBOUND).name in before
    with pytest.raises(UnknownProvider, match=r'"nope".*echo, fail'):
        await run(config_for(store, session_id, provider="nope"))
    # The outbox the session was made with, byte for byte, and nothing beside it.
    assert {p.name: p.read_bytes() for p in outbox.iterdir()} == before


# --- gates run beside the loop --------------------------------------------------------

SLOW_WAKE = "sleep 20; echo '{\"wakeAgent\": true}'"


def status_of(store: Cronbox, session_id: str, message_id: str) -> str | None:
    """The row's latest ack status; None before it has one (or the runner made its outbox)."""
    session_dir = store.session_dir(session_id)
    if not (session_dir / sdb.OUTBOUND).exists():
        return None
    with sdb.outbound(session_dir, readonly=True) as db:
        if not sdb.outbound_ready(db):
            return None
        found = sdb.acks_for(db, [message_id])
    return str(found[-1]["status"]) if found else None


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll the session's files (they have no change event) until ``check`` holds."""
    with anyio.fail_after(HANG_GUARD):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@asynccontextmanager
async def runner_in_background(
    config: RunnerSettings, stop: anyio.Event | None = None
) -> AsyncIterator[None]:
    """Run the runner beside the test body; cancel it (and its gates) at the end."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(run_runner, config, SystemClock(), stop))
        yield
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_chat_sent_while_a_gate_sleeps_is_answered_before_the_gate_ends(
    store: Cronbox, session_id: str
) -> None:
    gated = task(store, session_id, "slow check", script=SLOW_WAKE)

    async with runner_in_background(config_for(store, session_id)):
        await wait_until(lambda: status_of(store, session_id, gated) == "processing")
        chat = store.send_message(session_id, "are you there?").id
        await wait_until(lambda: status_of(store, session_id, chat) == "completed")

        assert status_of(store, session_id, gated) == "processing"
        assert replies(store, session_id) == {chat: "echo: are you there?"}


@pytest.mark.anyio
async def test_ungated_rows_claimed_with_a_slow_gate_do_not_wait_for_it(
    store: Cronbox, session_id: str
) -> None:
    gated = task(store, session_id, "slow check", script=SLOW_WAKE)
    plain = task(store, session_id, "no gate here")
    chat = store.send_message(session_id, "sent just after").id

    async with runner_in_background(config_for(store, session_id)):
        await wait_until(lambda: status_of(store, session_id, plain) == "completed")
        await wait_until(lambda: status_of(store, session_id, chat) == "completed")

        assert status_of(store, session_id, gated) == "processing"


@pytest.mark.anyio
async def test_two_slow_gates_run_at_the_same_time(store: Cronbox, session_id: str) -> None:
    workspace = store.session_dir(session_id) / sdb.WORKSPACE
    first, second = (
        task(store, session_id, f"gate {n}", script=f"touch started-{n}; {SLOW_WAKE}")
        for n in (1, 2)
    )

    async with runner_in_background(config_for(store, session_id)):
        await wait_until(
            lambda: (workspace / "started-1").exists() and (workspace / "started-2").exists()
        )

        found = acks(store, session_id, first, second)
        assert {found[first]["status"], found[second]["status"]} == {"processing"}


@pytest.mark.anyio
async def test_a_gate_that_wakes_later_hands_its_row_over_with_its_data(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    workspace = store.session_dir(session_id) / sdb.WORKSPACE
    script = f"while [ ! -f go ]; do sleep 0.05; done; {WAKE_WITH_DATA}"
    gated = task(store, session_id, "dress advice", script=script)
    stop = anyio.Event()

    async with runner_in_background(config_for(store, session_id, provider="recording"), stop):
        await wait_until(lambda: status_of(store, session_id, gated) == "processing")
        chat = store.send_message(session_id, "meanwhile").id
        await wait_until(lambda: status_of(store, session_id, chat) == "completed")
        assert status_of(store, session_id, gated) == "processing"

        (workspace / "go").touch()
        await wait_until(lambda: status_of(store, session_id, gated) == "completed")
        stop.set()

    assert recorder.seen_ids == [[chat], [gated]]
    (item,) = recorder.batches[1].items
    assert item.gated
    assert item.gate_data == {"city": "Oslo", "temp": -3}
    assert replies(store, session_id)[gated] == (
        'echo: dress advice [data: {"city": "Oslo", "temp": -3}]'
    )


@pytest.mark.anyio
async def test_a_gate_that_times_out_beside_a_chat_fails_with_its_reason(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    gated = task(store, session_id, "slow gate", script="sleep 30")
    chat = store.send_message(session_id, "answer me anyway").id

    await run(config_for(store, session_id, provider="recording", gate_timeout=0.5))

    assert recorder.seen_ids == [[chat]]
    found = acks(store, session_id, gated, chat)
    assert found[chat]["status"] == "completed"
    assert found[gated]["status"] == "failed"
    assert found[gated]["error"] == "gate script timed out after 0.5 s"


@pytest.mark.anyio
async def test_context_row_waits_for_its_gated_trigger_row_and_rides_along(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    store.post_system_note(session_id, "fyi")
    gated = task(store, session_id, "dress advice", script=f"sleep 0.3; {WAKE_WITH_DATA}")
    note = next(r.id for r in pending(store, session_id) if r.kind is MessageKind.SYSTEM)

    await run(config_for(store, session_id, provider="recording"))

    assert recorder.seen_ids == [[note, gated]]
    found = acks(store, session_id, note, gated)
    assert {found[note]["status"], found[gated]["status"]} == {"completed"}


@pytest.mark.anyio
async def test_stop_lets_a_running_gate_finish_and_its_row_be_answered(
    store: Cronbox, session_id: str, recorder: RecordingProvider
) -> None:
    workspace = store.session_dir(session_id) / sdb.WORKSPACE
    script = f"while [ ! -f go ]; do sleep 0.05; done; {WAKE_WITH_DATA}"
    gated = task(store, session_id, "dress advice", script=script)
    stop = anyio.Event()
    codes: list[int] = []

    async def runner() -> None:
        codes.append(await run(config_for(store, session_id, provider="recording"), stop=stop))

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await wait_until(lambda: status_of(store, session_id, gated) == "processing")
        stop.set()
        (workspace / "go").touch()

    assert codes == [0]
    assert recorder.seen_ids == [[gated]]
    assert status_of(store, session_id, gated) == "completed"


# --- pure parts ------------------------------------------------------------------------


def message(kind: MessageKind, content: dict[str, Any], trigger: int = 1) -> InboxRow:
    return InboxRow(
        id=f"{kind.value}-1", seq=2, kind=kind, created_at="2026-01-15T08:00:00.000Z",
        process_after=None, scheduled_for=None,
        recurrence=None, timezone="UTC", series_id="series-1" if kind is MessageKind.TASK
        else None, tries=0, trigger=trigger, content=content,
    )  # fmt: skip


def test_context_line_names_zone_local_time_and_weekday() -> None:
    local = datetime(2026, 1, 15, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert render_context("Europe/Berlin", local) == (
        "Timezone: Europe/Berlin. Local time: 2026-01-15 09:00 (Thursday)."
    )


@pytest.mark.parametrize(
    ("row", "gate", "expected"),
    [
        (message(MessageKind.CHAT, {"text": "hi", "sender": "ana"}), None, "[chat from ana] hi"),
        (message(MessageKind.CHAT, {"text": "hi"}), None, "[chat from user] hi"),
        (message(MessageKind.TASK, {"prompt": "brief me"}), None,
         "[scheduled task series-1] brief me"),
        (message(MessageKind.TASK, {"prompt": "brief me"}), {"n": 2},
         '[scheduled task series-1] brief me\nScript data: {"n": 2}'),
        (message(MessageKind.TASK, {"prompt": "brief me"}), ("none",),
         "[scheduled task series-1] brief me\nScript data: null"),
        (message(MessageKind.SYSTEM, {"text": "fyi", "sender": "cronbox"}, trigger=0), None,
         "[note from cronbox] fyi"),
    ],
)  # fmt: skip
def test_render_row(row: InboxRow, gate: Any, expected: str) -> None:
    if gate is None:
        assert render_row(row) == expected
    else:
        data = None if gate == ("none",) else gate
        assert render_row(row, gated=True, gate_data=data) == expected


def test_render_batch_puts_context_first() -> None:
    assert render_batch("ctx", ["a", "b"]) == "ctx\n\na\n\nb"


CHAT = message(MessageKind.CHAT, {"text": "x"})
NOTE = message(MessageKind.SYSTEM, {"text": "y"}, trigger=0)


@pytest.mark.parametrize(
    ("claimed", "survivors", "expected"),
    [
        ([CHAT], [CHAT], True),
        ([NOTE, CHAT], [NOTE, CHAT], True),
        ([NOTE, CHAT], [NOTE], False),  # the trigger row was skipped by its gate
        ([CHAT], [], False),
        ([NOTE, NOTE], [NOTE, NOTE], True),  # a full batch of context ahead of a trigger
        ([], [NOTE], False),  # held while its trigger row's gate runs, nothing new claimed
        ([], [NOTE, CHAT], True),  # a gate woke its row: the held context rides along
    ],
)
def test_provider_needed(
    claimed: list[InboxRow], survivors: list[InboxRow], expected: bool
) -> None:
    assert provider_needed(claimed, survivors) is expected


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        ([], 10),
        ([CHAT, CHAT], 8),  # ready rows go in the next batch: claim what fills it
        ([NOTE, NOTE], 10),  # held context rows must not make fresh context look full
    ],
)
def test_claim_limit(ready: list[InboxRow], expected: int) -> None:
    assert claim_limit(ready, 10) == expected


@pytest.mark.anyio
async def test_echo_truncates_long_prompts_to_200_chars(tmp_path: Path) -> None:
    row = message(MessageKind.CHAT, {"text": "x" * 500})
    context = SessionContext(tmp_path, "UTC", datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")))
    batch = Batch((BatchItem(row, render_row(row)),), context, "p")

    result = await get_provider("echo").run(batch)

    assert result.outcome_for(row.id) == RowOutcome.success("echo: " + "x" * 200)


def test_row_outcome_refuses_a_failure_without_error() -> None:
    with pytest.raises(ValueError, match="needs the error"):
        RowOutcome(ok=False)


def test_config_reads_the_environment(tmp_path: Path) -> None:
    config = RunnerSettings.from_env(
        {"CRONBOX_SESSION_DIR": str(tmp_path), "CRONBOX_TIMEZONE": "Europe/Berlin",
         "CRONBOX_MAX_BATCH": "3", "CRONBOX_IDLE_TIMEOUT": "2.5"}
    )  # fmt: skip
    assert config == RunnerSettings(
        session_dir=tmp_path, timezone="Europe/Berlin", max_batch=3, idle_timeout=2.5
    )


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({}, "CRONBOX_SESSION_DIR is not set"),
        ({"CRONBOX_SESSION_DIR": "/no/such/dir"}, "is not a directory"),
        ({"CRONBOX_POLL_INTERVAL": "soon"}, 'CRONBOX_POLL_INTERVAL "soon"'),
        ({"CRONBOX_MAX_BATCH": "0"}, 'CRONBOX_MAX_BATCH "0"'),
        ({"CRONBOX_TIMEZONE": "Mars/Base"}, "Mars/Base"),
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, env: dict[str, str], match: str) -> None:
    if env and "CRONBOX_SESSION_DIR" not in env:
        env = {"CRONBOX_SESSION_DIR": str(tmp_path), **env}
    with pytest.raises(InvalidInput, match=match):
        RunnerSettings.from_env(env)


# --- python -m agent_runner ------------------------------------------------------------


def runner_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRONBOX_")}
    return {**base, **env}


@pytest.mark.anyio
async def test_module_completes_a_due_chat_message_and_exits_0(
    store: Cronbox, session_id: str
) -> None:
    chat = store.send_message(session_id, "hello from the subprocess").id
    env = runner_env(
        CRONBOX_SESSION_DIR=str(store.session_dir(session_id)),
        CRONBOX_IDLE_TIMEOUT="1",
        CRONBOX_POLL_INTERVAL="0.1",
    )

    with anyio.fail_after(SUBPROCESS_GUARD):
        done = await anyio.run_process([sys.executable, "-m", "agent_runner"], env=env, check=False)

    assert done.returncode == 0, done.stderr.decode()
    assert acks(store, session_id, chat)[chat]["status"] == "completed"
    assert replies(store, session_id) == {chat: "echo: hello from the subprocess"}
    assert "batch of 1 row(s): 1 completed" in done.stderr.decode()


@pytest.mark.anyio
async def test_module_exits_0_on_sigterm(store: Cronbox, session_id: str) -> None:
    heartbeat = store.session_dir(session_id) / sdb.HEARTBEAT
    env = runner_env(
        CRONBOX_SESSION_DIR=str(store.session_dir(session_id)), CRONBOX_IDLE_TIMEOUT="600"
    )
    with anyio.fail_after(SUBPROCESS_GUARD):
        async with await anyio.open_process(
            [sys.executable, "-m", "agent_runner"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ) as process:  # fmt: skip
            # The heartbeat appears once the signal handler is installed; no event tells us.
            while not heartbeat.exists():  # noqa: ASYNC110
                await anyio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


@pytest.mark.anyio
async def test_module_without_session_dir_exits_2_with_one_line() -> None:
    with anyio.fail_after(SUBPROCESS_GUARD):
        done = await anyio.run_process(
            [sys.executable, "-m", "agent_runner"], env=runner_env(), check=False
        )

    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert lines == ["agent_runner: CRONBOX_SESSION_DIR is not set; set it to the session "
                     "directory that holds inbox/inbound.db"]  # fmt: skip
    assert done.stdout == b""
