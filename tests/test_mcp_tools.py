"""The task tools, in-process over the SDK's memory transport, against real session files.

The host side is the real Cronbox and Delivery, so "the host applies it" is the real apply
path; a ManualClock shared by the store and the tools keeps every time exact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from cronbox_shared import sessiondb as sdb
from cronbox_shared.errors import TimeInPast
from cronbox_shared.models import AckStatus, MessageKind, MessageStatus
from cronbox_shared.timeutil import ManualClock, fmt
from host.delivery import Delivery
from host.service import Cronbox, Limits, Receipt
from host.store.records import Session
from mcp_tools.config import ToolConfig
from mcp_tools.server import build_server

pytestmark = pytest.mark.anyio

# A Monday; 09:00 in Berlin, 03:00 in New York.
START = "2026-03-02T08:00:00.000Z"
HANG_GUARD = 20
POLICY_ARGS = {"missedPolicy", "catchupLimit", "maxFailures", "jitter", "ignoreQuiet"}
# A chained task, and the approval an agent may ask for (never give: no tool approves).
CHAIN_ARGS = ("afterTask", "afterOutcome", "whenOutput", "approval", "approvalTimeout", "onTimeout")
SIX_TOOLS = {
    "schedule_task": (
        {"prompt"},
        {
            "prompt",
            "processAfter",
            "recurrence",
            "script",
            "timezone",
            *POLICY_ARGS,
            *CHAIN_ARGS,
            "isolated",
        },
    ),
    "list_tasks": (set(), {"status"}),
    "cancel_task": ({"taskId"}, {"taskId"}),
    "pause_task": ({"taskId"}, {"taskId"}),
    "resume_task": ({"taskId"}, {"taskId"}),
    "update_task": (
        {"taskId"},
        {"taskId", "prompt", "processAfter", "recurrence", "script", "isolated", *POLICY_ARGS},
    ),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Cronbox:
    return Cronbox(tmp_path / "home", clock=clock, limits=Limits(min_interval=timedelta(minutes=1)))


@pytest.fixture
def session(store: Cronbox) -> Session:
    return store.create_session("agent", timezone="Europe/Berlin")


@pytest.fixture
def config(store: Cronbox, session: Session, clock: ManualClock) -> ToolConfig:
    return ToolConfig(
        session_dir=store.session_dir(session.id),
        timezone=session.timezone,
        min_interval=timedelta(minutes=1),
        max_tasks=50,
        clock=clock,
    )


@asynccontextmanager
async def connected(config: ToolConfig, mode: str = "auto") -> AsyncIterator[Client]:
    """A client on the server in this process: "auto" dispatches directly, "legacy" goes
    through the SDK's in-memory transport with JSON-RPC framing and the handshake."""
    with anyio.fail_after(HANG_GUARD):
        async with Client(build_server(config), mode=mode) as client:
            yield client


async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(name, arguments)
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    return bool(result.is_error), text


def written(config: ToolConfig) -> list[dict[str, Any]]:
    """Every row the tools wrote to outbound.db (content decoded)."""
    if not (config.session_dir / sdb.OUTBOUND).exists():
        return []
    with sdb.outbound(config.session_dir, readonly=True) as db:
        if not sdb.outbound_ready(db):
            return []
        rows = sdb.outbound_after(db, 0, 10_000)
    return [{**r, "content": json.loads(r["content"])} for r in rows]


async def apply(store: Cronbox, session: Session) -> list[str]:
    """Let the host handle everything the tools wrote; returns each row's status."""
    handled = await Delivery(store, []).deliver(session, store.undelivered(session.id))
    return [h.status for h in handled]


def task_id_in(text: str) -> str:
    return next(word for word in text.replace("(", " ").split() if word.startswith("task-"))


# --- listing -----------------------------------------------------------------------------


async def test_the_six_tools_are_listed_with_their_argument_names(config: ToolConfig) -> None:
    async with connected(config) as client:
        listed = (await client.list_tools()).tools
    assert {t.name for t in listed} == set(SIX_TOOLS)
    for tool in listed:
        required, properties = SIX_TOOLS[tool.name]
        assert set(tool.input_schema.get("required", [])) == required
        assert set(tool.input_schema["properties"]) == properties
        assert tool.description
    schedule = next(t for t in listed if t.name == "schedule_task")
    description = schedule.description or ""
    for must in ("0 9 * * MON-FRI", "@every 2h", "wakeAgent", "30 s", "twice a day", "offset"):
        assert must in description


# --- schedule_task -------------------------------------------------------------------------


async def test_schedule_task_writes_one_action_that_the_host_applies(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    async with connected(config) as client:
        args = {"prompt": "water the plants", "processAfter": "2026-03-02T21:00:00"}
        error, text = await call(client, "schedule_task", args)
    assert not error, text
    task_id = task_id_in(text)
    # A naive time is read in the session's zone; the answer gives it both ways.
    assert "2026-03-02T20:00:00.000Z" in text
    assert "21:00:00 CET (Europe/Berlin)" in text
    assert "Runs once" in text
    [row] = written(config)
    assert row["kind"] == MessageKind.SYSTEM.value and row["seq"] % 2 == 1
    assert row["content"] == {
        "action": "schedule_task", "taskId": task_id, "prompt": "water the plants",
        "processAfter": "2026-03-02T20:00:00.000Z", "timezone": "Europe/Berlin",
    }  # fmt: skip
    assert await apply(store, session) == ["applied"]
    task = store.get_task(task_id, session_id=session.id)
    assert task.next_run == "2026-03-02T20:00:00.000Z"
    assert task.status is MessageStatus.PENDING
    [entry] = [e for e in store.audit_entries(session.id) if e.action == "task.schedule"]
    assert entry.actor == f"agent:{session.id}"


async def test_a_relative_time_is_sent_as_the_instant_of_the_call(
    config: ToolConfig, store: Cronbox, session: Session, clock: ManualClock
) -> None:
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", {"prompt": "p", "processAfter": "+10m"})
    assert not error, text
    clock.advance(5)  # the host applies it a little later: the run does not move
    await apply(store, session)
    assert store.get_task(task_id_in(text)).next_run == "2026-03-02T08:10:00.000Z"


async def test_recurring_task_reports_its_first_run_and_rule_in_words(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    args = {"prompt": "summarise open PRs", "recurrence": "0 9 * * MON-FRI",
            "timezone": "America/New_York"}  # fmt: skip
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", args)
    assert not error, text
    assert "2026-03-02T14:00:00.000Z" in text
    assert "09:00:00 EST (America/New_York)" in text
    assert "Monday through Friday" in text and '"0 9 * * MON-FRI"' in text
    assert "Tip" not in text  # once a day needs no gate script
    await apply(store, session)
    task = store.get_task(task_id_in(text))
    assert (task.recurrence, task.timezone) == ("0 9 * * MON-FRI", "America/New_York")


async def test_a_frequent_task_without_a_gate_script_gets_the_cost_tip(config: ToolConfig) -> None:
    async with connected(config) as client:
        _, plain = await call(client, "schedule_task", {"prompt": "p", "recurrence": "@every 2h"})
        _, gated = await call(
            client, "schedule_task",
            {"prompt": "p", "recurrence": "@every 2h", "script": "echo '{\"wakeAgent\": false}'"},
        )  # fmt: skip
    assert "gate script" in plain and "Tip" in plain
    assert "Tip" not in gated and "Gate script: yes" in gated


KIB_100 = "x" * (100 * 1024)

BAD_SCHEDULES = [
    pytest.param({"prompt": "  ", "processAfter": "+1h"}, "prompt is empty", id="empty-prompt"),
    pytest.param({"prompt": KIB_100, "processAfter": "+1h"}, "over the limit", id="100KiB-prompt"),
    pytest.param(
        {"prompt": "p", "processAfter": "+1h", "script": KIB_100}, "script is", id="100KiB-script"
    ),
    pytest.param(
        {"prompt": "p", "recurrence": "0 25 * * *"}, "hour 25 is out of range 0-23", id="bad-cron"
    ),
    pytest.param(
        {"prompt": "p", "processAfter": "+1h", "timezone": "Mars/Olympus_Mons"},
        "not a known IANA zone",
        id="unknown-zone",
    ),
    pytest.param(
        {"prompt": "p", "processAfter": "2026-03-01T08:00:00Z"}, "is in the past", id="past-once"
    ),
    pytest.param({"prompt": "p"}, "needs processAfter", id="no-time"),
    pytest.param(
        {"prompt": "p", "recurrence": "@every 30s"}, "more often than the minimum", id="too-often"
    ),
    pytest.param({"prompt": "p", "processAfter": "soonish"}, "is not a time", id="bad-time"),
]


@pytest.mark.parametrize(("arguments", "says"), BAD_SCHEDULES)
async def test_a_bad_schedule_is_a_tool_error_that_says_how_to_fix_it_and_writes_nothing(
    config: ToolConfig, arguments: dict[str, Any], says: str
) -> None:
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", arguments)
    assert error
    assert says in text
    assert len(text) < 1000  # a sentence, not an echo of the input
    assert written(config) == []


async def test_a_bad_cron_error_shows_valid_examples(config: ToolConfig) -> None:
    async with connected(config) as client:
        _, text = await call(client, "schedule_task", {"prompt": "p", "recurrence": "every day"})
    assert "0 9 * * MON-FRI" in text and "@every 2h" in text
    assert written(config) == []


async def test_scheduling_past_the_live_task_limit_is_refused(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    limited = replace(config, max_tasks=2)
    async with connected(limited) as client:
        assert not (await call(client, "schedule_task", {"prompt": "a", "processAfter": "+1h"}))[0]
        await apply(store, session)
        # The second is not applied yet, and still counts.
        assert not (await call(client, "schedule_task", {"prompt": "b", "processAfter": "+1h"}))[0]
        error, text = await call(client, "schedule_task", {"prompt": "c", "processAfter": "+1h"})
    assert error and "limit" in text
    assert len(written(config)) == 2


# --- list_tasks ----------------------------------------------------------------------------


async def test_list_tasks_shows_one_line_per_series_with_next_run_and_words(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    async with connected(config) as client:
        _, daily = await call(
            client, "schedule_task", {"prompt": "daily digest", "recurrence": "0 18 * * *"}
        )
        _, once = await call(client, "schedule_task", {"prompt": "call mum", "processAfter": "+1h"})
        _, waiting = await call(client, "list_tasks", {})
        await apply(store, session)
        _, listed = await call(client, "list_tasks", {})
    assert waiting.count("waiting for the host") == 2
    lines = listed.splitlines()[1:]
    assert len(lines) == 2 and "waiting" not in listed
    # Soonest first: the one-time task in an hour, then the 18:00 digest.
    assert task_id_in(lines[0]) == task_id_in(once)
    assert task_id_in(lines[1]) == task_id_in(daily)
    assert "[pending]" in lines[1] and "18:00:00 CET (Europe/Berlin)" in lines[1]
    assert '"0 18 * * *"' in lines[1] and "at 18:00" in lines[1]
    assert '"daily digest"' in lines[1]


async def test_list_tasks_names_a_recurring_task_by_its_series_id_and_filters_by_status(
    config: ToolConfig, store: Cronbox, session: Session, clock: ManualClock
) -> None:
    series = store.schedule_task(session.id, {"prompt": "tick", "recurrence": "@hourly"}).id
    finish_occurrence(store, session, clock, series)
    live = store.get_task(series)
    assert live.id != series  # the live occurrence has its own id
    other = store.schedule_task(session.id, {"prompt": "other", "processAfter": "+3h"}).id
    store.pause_task(other)
    async with connected(config) as client:
        _, pending = await call(client, "list_tasks", {"status": "pending"})
        _, paused = await call(client, "list_tasks", {"status": "paused"})
        _, both = await call(client, "list_tasks", {})
        error, _ = await call(client, "list_tasks", {"status": "completed"})
    assert pending.splitlines()[1].startswith(f"- {series} [pending]")
    assert live.id not in pending
    assert other not in pending and f"- {other} [paused]" in paused
    assert len(both.splitlines()) == 3
    assert error


async def test_list_tasks_with_nothing_scheduled_says_so(config: ToolConfig) -> None:
    async with connected(config) as client:
        error, text = await call(client, "list_tasks", {})
    assert not error and text == "No pending or paused tasks."


def finish_occurrence(store: Cronbox, session: Session, clock: ManualClock, series: str) -> None:
    """Run a recurring task's live occurrence to completion, as a runner would."""
    live = store.get_task(series)
    clock.set(live.next_run or START)
    with sdb.outbound(store.session_dir(session.id)) as db, db.atomic():
        sdb.set_ack(db, live.id, 0, AckStatus.COMPLETED, fmt(clock.now()), None, "done")
    store.settle_acks(session.id, timedelta(minutes=10))


# --- cancel / pause / resume -----------------------------------------------------------------


async def test_cancel_by_series_id_stops_next_occurrence(
    config: ToolConfig, store: Cronbox, session: Session, clock: ManualClock
) -> None:
    series = store.schedule_task(session.id, {"prompt": "tick", "recurrence": "@hourly"}).id
    finish_occurrence(store, session, clock, series)
    live_id = store.get_task(series).id
    async with connected(config) as client:
        error, text = await call(client, "cancel_task", {"taskId": series})
    assert not error and "whole recurring series" in text
    assert written(config)[-1]["content"] == {"action": "cancel_task", "taskId": series}
    assert await apply(store, session) == ["applied"]
    rows = {r.id: r for r in store.inbound_rows(session.id)}
    assert rows[live_id].status is MessageStatus.CANCELLED
    assert store.get_task(series).status is MessageStatus.CANCELLED
    [entry] = [e for e in store.audit_entries(session.id) if e.action == "task.cancel"]
    assert entry.actor == f"agent:{session.id}"


async def test_pause_and_resume_round_trip_even_before_the_host_applied_the_schedule(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    async with connected(config) as client:
        _, text = await call(client, "schedule_task", {"prompt": "p", "recurrence": "@daily"})
        task_id = task_id_in(text)
        assert not (await call(client, "pause_task", {"taskId": task_id}))[0]
        _, listed = await call(client, "list_tasks", {"status": "paused"})
        assert task_id in listed
        error, again = await call(client, "pause_task", {"taskId": task_id})
        assert error and "already paused" in again
        assert await apply(store, session) == ["applied", "applied"]
        assert store.get_task(task_id).status is MessageStatus.PAUSED
        error, resumed = await call(client, "resume_task", {"taskId": task_id})
        assert not error and "next run" in resumed
        error, twice = await call(client, "resume_task", {"taskId": task_id})
        assert error and "not paused" in twice
    assert await apply(store, session) == ["applied"]
    assert store.get_task(task_id).status is MessageStatus.PENDING


@pytest.mark.parametrize("tool", ["cancel_task", "pause_task", "resume_task", "update_task"])
async def test_an_unknown_task_id_is_a_clear_error_and_writes_nothing(
    config: ToolConfig, tool: str
) -> None:
    arguments = {"taskId": "task-doesnotexist"}
    if tool == "update_task":
        arguments["prompt"] = "new"
    async with connected(config) as client:
        error, text = await call(client, tool, arguments)
    assert error
    assert 'no task with id "task-doesnotexist"' in text and "list_tasks" in text
    assert written(config) == []


async def test_another_sessions_task_is_unknown_here(config: ToolConfig, store: Cronbox) -> None:
    other = store.create_session("other")
    foreign = store.schedule_task(other.id, {"prompt": "theirs", "processAfter": "+1h"}).id
    async with connected(config) as client:
        error, text = await call(client, "cancel_task", {"taskId": foreign})
    assert error and "no task with id" in text
    assert written(config) == []


async def test_cancelling_a_task_that_is_no_longer_live_is_refused(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task_id = store.schedule_task(session.id, {"prompt": "p", "processAfter": "+1h"}).id
    store.cancel_task(task_id)
    async with connected(config) as client:
        error, text = await call(client, "cancel_task", {"taskId": task_id})
        error_update, _ = await call(client, "update_task", {"taskId": task_id, "prompt": "x"})
    assert error and "already ended (it is cancelled)" in text
    assert error_update
    assert written(config) == []


# --- update_task ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_update_tells_an_explicit_null_from_a_left_out_argument(
    config: ToolConfig, store: Cronbox, session: Session, mode: str
) -> None:
    task_id = store.schedule_task(
        session.id,
        {"prompt": "check the build", "recurrence": "@hourly", "script": "echo '{}'"},
    ).id  # fmt: skip
    async with connected(config, mode) as client:
        error, text = await call(client, "update_task", {"taskId": task_id, "script": None})
    assert not error, text
    assert written(config)[-1]["content"] == {
        "action": "update_task", "taskId": task_id, "script": None,
    }  # fmt: skip
    await apply(store, session)
    [row] = [r for r in store.inbound_rows(session.id) if r.id == task_id]
    assert row.script is None
    assert row.prompt == "check the build" and row.recurrence == "@hourly"


async def test_update_reschedules_with_an_absolute_instant(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task_id = store.schedule_task(session.id, {"prompt": "p", "processAfter": "+1h"}).id
    async with connected(config) as client:
        error, text = await call(
            client, "update_task", {"taskId": task_id, "processAfter": "+2h", "prompt": "q"}
        )
    assert not error, text
    assert "2026-03-02T10:00:00.000Z" in text
    content = written(config)[-1]["content"]
    assert content["processAfter"] == "2026-03-02T10:00:00.000Z" and content["prompt"] == "q"
    await apply(store, session)
    task = store.get_task(task_id)
    assert (task.next_run, task.prompt) == ("2026-03-02T10:00:00.000Z", "q")


BAD_UPDATES = [
    pytest.param({}, "nothing to change", id="no-change"),
    pytest.param({"prompt": None}, "cannot be cleared", id="clear-prompt"),
    pytest.param({"prompt": ""}, "prompt is empty", id="empty-prompt"),
    pytest.param({"recurrence": "0 25 * * *"}, "hour 25 is out of range 0-23", id="bad-cron"),
    pytest.param({"processAfter": "2026-03-01T00:00:00Z"}, "is in the past", id="past"),
    pytest.param({"script": KIB_100}, "script is", id="100KiB-script"),
    pytest.param({"recurrence": "@every 10s"}, "more often than the minimum", id="too-often"),
]


@pytest.mark.parametrize(("change", "says"), BAD_UPDATES)
async def test_a_bad_update_is_a_tool_error_and_writes_nothing(
    config: ToolConfig, store: Cronbox, session: Session, change: dict[str, Any], says: str
) -> None:
    task_id = store.schedule_task(session.id, {"prompt": "p", "processAfter": "+1h"}).id
    async with connected(config) as client:
        error, text = await call(client, "update_task", {"taskId": task_id, **change})
    assert error
    assert says in text
    assert written(config) == []


async def test_a_change_of_recurrence_moves_the_next_run_before_the_host_applies_it(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task_id = store.schedule_task(session.id, {"prompt": "p", "recurrence": "0 18 * * *"}).id
    noon = "12:00:00 CET (Europe/Berlin) = 2026-03-02T11:00:00.000Z UTC"
    async with connected(config) as client:
        assert not (await call(client, "pause_task", {"taskId": task_id}))[0]
        error, text = await call(
            client, "update_task", {"taskId": task_id, "recurrence": "0 12 * * *"}
        )
        assert not error, text
        _, listed = await call(client, "list_tasks", {})
        error, resumed = await call(client, "resume_task", {"taskId": task_id})
    assert not error, resumed
    [line] = listed.splitlines()[1:]
    assert f"next: Mon 2026-03-02 {noon}" in line and '"0 12 * * *"' in line
    assert "18:00" not in line
    assert noon in resumed
    await apply(store, session)
    assert store.get_task(task_id).next_run == "2026-03-02T11:00:00.000Z"


async def test_an_update_to_one_time_and_back_is_projected_as_the_host_applies_it(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task_id = store.schedule_task(session.id, {"prompt": "p", "recurrence": "0 18 * * *"}).id
    async with connected(config) as client:
        await call(client, "update_task", {"taskId": task_id, "processAfter": "+2h"})
        _, moved = await call(client, "list_tasks", {})
        await call(client, "update_task", {"taskId": task_id, "processAfter": None})
        _, back = await call(client, "list_tasks", {})
    assert "= 2026-03-02T10:00:00.000Z UTC" in moved
    assert "= 2026-03-02T17:00:00.000Z UTC" in back
    await apply(store, session)
    assert store.get_task(task_id).next_run == "2026-03-02T17:00:00.000Z"


# --- how times and argument errors read ---------------------------------------------------


async def test_a_time_in_utc_names_the_zone_once(config: ToolConfig) -> None:
    args = {"prompt": "p", "processAfter": "2026-03-02T21:00:00", "timezone": "UTC"}
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", args)
        _, listed = await call(client, "list_tasks", {})
    assert not error, text
    assert "First run: Mon 2026-03-02 21:00:00 = 2026-03-02T21:00:00.000Z UTC." in text
    assert "(UTC)" not in text
    [line] = listed.splitlines()[1:]
    assert line.count("UTC") == 1
    # Another zone still shows its local time, its name, and the UTC instant.
    async with connected(config) as client:
        _, berlin = await call(client, "schedule_task", {"prompt": "p", "processAfter": "+1h"})
    assert "Mon 2026-03-02 10:00:00 CET (Europe/Berlin) = 2026-03-02T09:00:00.000Z UTC" in berlin


BAD_TYPES: dict[str, list[tuple[dict[str, Any], str]]] = {
    "schedule_task": [
        ({"prompt": 123, "processAfter": "+1h"}, "prompt must be text, not a number"),
        ({"prompt": "p", "processAfter": 5}, "processAfter must be text, not a number"),
        ({"prompt": "p", "recurrence": ["@daily"]}, "recurrence must be text, not a list"),
        ({"prompt": "p", "processAfter": "+1h", "script": {}}, "script must be text, not an obj"),
        ({"prompt": "p", "processAfter": "+1h", "timezone": True}, "timezone must be text, not"),
        ({"processAfter": "+1h"}, "prompt is required"),
        ({"prompt": None, "processAfter": "+1h"}, "prompt must be text, not null"),
    ],
    "list_tasks": [
        ({"status": "bogus"}, 'status "bogus" is not one of the choices; use "pending" or '),
        ({"status": 1}, 'status must be "pending" or "paused", not a number'),
        ({"status": ["pending"]}, 'status must be "pending" or "paused", not a list'),
    ],
    "cancel_task": [
        ({"taskId": 123}, "taskId must be text, not a number"),
        ({}, "taskId is required"),
        ({"taskId": None}, "taskId must be text, not null"),
    ],
    "pause_task": [
        ({"taskId": 1.5}, "taskId must be text, not a number"),
        ({}, "taskId is required"),
    ],
    "resume_task": [
        ({"taskId": ["task-1"]}, "taskId must be text, not a list"),
        ({}, "taskId is required"),
    ],
    "update_task": [
        ({"taskId": "task-1", "prompt": 123}, "prompt must be text, not a number"),
        ({"taskId": "task-1", "recurrence": 5}, "recurrence must be text, not a number"),
        ({"taskId": "task-1", "processAfter": False}, "processAfter must be text, not false"),
        ({"prompt": "p"}, "taskId is required"),
    ],
}


@pytest.mark.parametrize("tool", sorted(BAD_TYPES))
async def test_an_argument_of_the_wrong_type_is_a_sentence_without_a_pydantic_report(
    config: ToolConfig, tool: str
) -> None:
    async with connected(config) as client:
        for arguments, says in BAD_TYPES[tool]:
            error, text = await call(client, tool, arguments)
            assert error, (arguments, text)
            assert text.startswith(f"Error executing tool {tool}: ")
            assert says in text, (arguments, text)
            assert "pydantic" not in text and "http" not in text and "validation error" not in text
            assert "\n" not in text
    assert written(config) == []


# --- the session's zone ---------------------------------------------------------------------


def test_the_zone_is_left_to_the_inbox_only_when_the_runner_was_not_told_one(
    config: ToolConfig,
) -> None:
    directory = str(config.session_dir)
    told = ToolConfig.from_env({"CRONBOX_SESSION_DIR": directory, "CRONBOX_TIMEZONE": "UTC"})
    untold = ToolConfig.from_env({"CRONBOX_SESSION_DIR": directory, "CRONBOX_TIMEZONE": " "})
    assert (told.timezone, untold.timezone) == ("UTC", None)


async def test_the_inbox_tells_the_sessions_zone_by_its_newest_chat_row_not_a_tasks_zone(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    untold = replace(config, timezone=None)
    store.send_message(session.id, "hello")
    store.schedule_task(
        session.id, {"prompt": "p", "processAfter": "+1h", "timezone": "America/New_York"}
    )
    async with connected(untold) as client:
        error, text = await call(client, "schedule_task", {"prompt": "p", "recurrence": "@daily"})
    assert not error, text
    assert "(Europe/Berlin)" in text and "unknown" not in text
    store.update_session(session.id, timezone="Asia/Tokyo")
    store.send_message(session.id, "and now from Tokyo")
    async with connected(untold) as client:
        _, tokyo = await call(client, "schedule_task", {"prompt": "p", "recurrence": "@daily"})
    assert "(Asia/Tokyo)" in tokyo


# --- scheduling policies -------------------------------------------------------------------


async def test_schedule_task_takes_the_policies_and_the_host_applies_them(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    arguments = {"prompt": "report", "recurrence": "0 * * * *", "missedPolicy": "all",
                 "catchupLimit": 5, "maxFailures": 3, "jitter": 120}  # fmt: skip
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", arguments)
        assert not error, text
        assert "Policies: missed runs: all (up to 5), pauses after 3 failures in a row" in text
        assert "jitter under 120 s" in text
        assert await apply(store, session) == ["applied"]
        _, listed = await call(client, "list_tasks", {})
    [row] = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.TASK]
    assert (row.missed_policy, row.catchup_limit, row.max_failures, row.jitter) == (
        "all", 5, 3, 120,
    )  # fmt: skip
    assert "policies: missed runs: all (up to 5), pauses after 3 failures in a row" in listed


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"processAfter": "+1h", "missedPolicy": "skip"}, "apply only to a recurring task"),
        ({"recurrence": "@hourly", "missedPolicy": "never"}, "missedPolicy"),
        ({"recurrence": "@hourly", "catchupLimit": 5}, "catchupLimit applies only with"),
        ({"recurrence": "@hourly", "missedPolicy": "all", "catchupLimit": 0}, "catchupLimit"),
        ({"recurrence": "@hourly", "jitter": 3600}, "is not shorter than the 3600 s"),
        ({"recurrence": "@hourly", "maxFailures": -1}, "maxFailures"),
    ],
)
async def test_a_bad_policy_is_a_tool_error_and_writes_nothing(
    config: ToolConfig, arguments: dict[str, Any], says: str
) -> None:
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", {"prompt": "p", **arguments})
    assert error
    assert says in text
    assert written(config) == []


async def test_list_tasks_shows_why_a_task_is_paused_and_its_failure_streak(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task = store.schedule_task(session.id, {"prompt": "p", "recurrence": "@hourly"})
    store.pause_task(task.id, note="waiting for the new API key")
    async with connected(config) as client:
        _, listed = await call(client, "list_tasks", {})
    assert "[paused: waiting for the new API key]" in listed


async def test_update_task_changes_a_policy_and_null_puts_it_back_at_its_default(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    task = store.schedule_task(
        session.id, {"prompt": "p", "recurrence": "@hourly", "missedPolicy": "skip"}
    )
    async with connected(config) as client:
        error, text = await call(client, "update_task", {"taskId": task.id, "maxFailures": 2})
        assert not error, text
        error, text = await call(client, "update_task", {"taskId": task.id, "missedPolicy": None})
        assert not error, text
        assert await apply(store, session) == ["applied", "applied"]
    [row] = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.TASK]
    assert (row.missed_policy, row.max_failures) == (None, 2)


async def test_a_one_time_task_the_host_applies_late_runs_at_once_instead_of_being_refused(
    config: ToolConfig, store: Cronbox, session: Session, clock: ManualClock
) -> None:
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", {"prompt": "p", "processAfter": "+2m"})
        assert not error, text
    clock.advance(minutes=10)  # the runner's outbox reached the host late
    assert await apply(store, session) == ["applied"]
    [row] = [r for r in store.inbound_rows(session.id) if r.kind is MessageKind.TASK]
    assert row.process_after == fmt(clock.now())


def test_a_request_is_judged_by_when_it_was_asked_at_most_a_day_back(
    store: Cronbox, session: Session, clock: ManualClock
) -> None:
    late = {"prompt": "p", "processAfter": fmt(clock.now() - timedelta(minutes=5))}
    with pytest.raises(TimeInPast):
        store.schedule_task(session.id, late)
    asked = Receipt(1, "m1", asked_at=clock.now() - timedelta(minutes=6))
    view = store.schedule_task(session.id, late, receipt=asked)
    assert view.next_run == fmt(clock.now())
    too_old = {"prompt": "p", "processAfter": fmt(clock.now() - timedelta(days=2))}
    with pytest.raises(TimeInPast):
        store.schedule_task(
            session.id, too_old, receipt=Receipt(3, "m3", asked_at=clock.now() - timedelta(days=3))
        )


async def test_a_step_larger_than_its_field_is_scheduled_with_a_note(config: ToolConfig) -> None:
    async with connected(config) as client:
        error, text = await call(
            client, "schedule_task", {"prompt": "p", "recurrence": "0 */30 * * *"}
        )
    assert not error, text
    assert 'Note: The hour step "*/30" is larger than its range (0-23)' in text


async def test_schedule_task_past_the_sessions_wake_budget_is_a_tool_error(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    store.update_session(session.id, max_wakes_per_day=10)
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", {"prompt": "p", "recurrence": "@hourly"})
        assert error
        assert "would wake the agent 24 times a day" in text
        assert "over its limit of 10 wakes a day" in text
        error, text = await call(
            client, "schedule_task",
            {"prompt": "p", "recurrence": "@hourly", "script": "echo '{\"wakeAgent\": false}'"},
        )  # fmt: skip
        assert not error, text
    assert len(written(config)) == 1


async def test_schedule_task_answers_with_the_first_run_after_jitter_and_quiet_hours(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    args = {"prompt": "p", "recurrence": "0 * * * *", "jitter": 600, "missedPolicy": "skip"}
    async with connected(config) as client:
        _, text = await call(client, "schedule_task", args)
        task_id = task_id_in(text)
        _, listed = await call(client, "list_tasks", {})
        assert await apply(store, session) == ["applied"]
    view = store.get_task(task_id)
    assert view.next_run is not None and f"= {view.next_run} UTC" in text
    assert "delayed by its jitter" in text
    assert f"= {view.next_run} UTC" in listed
    assert "missed runs: skip" in listed

    store.update_session(session.id, quiet="00:00-23:59")  # in Berlin
    async with connected(config) as client:
        _, held = await call(client, "schedule_task", {"prompt": "p", "processAfter": "+1h"})
        assert await apply(store, session) == ["applied"]
    assert "delayed by the session's quiet hours" in held
    assert f"= {store.get_task(task_id_in(held)).next_run} UTC" in held


async def test_schedule_task_chains_after_a_task_and_may_ask_for_approval(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    store.schedule_task(session.id, {"taskId": "build", "prompt": "build", "processAfter": "+1h"})
    arguments = {"prompt": "ship {{parent.output}}", "afterTask": "build", "afterOutcome": "ok",
                 "whenOutput": "regex:^echo: b", "approval": True, "approvalTimeout": "2h",
                 "onTimeout": "reject"}  # fmt: skip
    async with connected(config) as client:
        error, text = await call(client, "schedule_task", arguments)
        assert not error, text
        assert "Runs each time task build finishes with outcome ok" in text
        assert "you cannot approve it yourself" in text
        assert await apply(store, session) == ["applied"]
        _, listed = await call(client, "list_tasks", {})
        refused, why = await call(
            client, "schedule_task", {**arguments, "whenOutput": "regex:(a+)+"}
        )
    [row] = [r for r in store.inbound_rows(session.id) if r.after_task == "build"]
    assert row.status is MessageStatus.WAITING
    assert (row.when_output, row.approval, row.approval_timeout, row.on_timeout) == (
        "regex:^echo: b", True, 7200, "reject",
    )  # fmt: skip
    assert task_id_in(text) in listed
    assert refused and "repeats a group that itself repeats" in why
    assert len(written(config)) == 1  # the refused call wrote nothing


async def test_an_agent_can_make_a_task_isolated_and_shared_again(
    config: ToolConfig, store: Cronbox, session: Session
) -> None:
    async with connected(config) as client:
        args = {"prompt": "digest", "recurrence": "0 9 * * *", "isolated": True}
        error, text = await call(client, "schedule_task", args)
        assert not error, text
        task_id = task_id_in(text)
        assert written(config)[0]["content"]["isolated"] is True
        assert await apply(store, session) == ["applied"]
        [row] = store.inbound_rows(session.id)
        assert row.isolated
        _, listing = await call(client, "list_tasks", {})
        assert "isolated (no chat history)" in listing
        error, text = await call(client, "update_task", {"taskId": task_id, "isolated": False})
        assert not error, text
        assert await apply(store, session) == ["applied"]
    [row] = store.inbound_rows(session.id)
    assert not row.isolated
