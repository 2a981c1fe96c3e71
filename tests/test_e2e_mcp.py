"""The full loop: a real host, real runners with the ``scripted`` agent, real MCP over stdio.

A chat message tells the agent which tool calls to make; the runner's provider starts
``python -m mcp_tools``, makes them, and the host applies the resulting actions.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cronbox_shared.models import MessageStatus, RunOutcome
from cronbox_shared.timeutil import fmt
from host.service import Cronbox
from tests.hosting import delivered_seqs, make_settings, replies, running_host, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

# Bounds that turn a hang into a failure; never a statement about how long things take.
LOOP_GUARD = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("CRONBOX_MIN_INTERVAL", "1")


def tool_calls(*calls: tuple[str, dict[str, Any]]) -> str:
    """The chat text that makes the scripted agent call these tools."""
    return json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in calls]})


def reply_to(store: Cronbox, session_id: str, message_id: str) -> str | None:
    found = [r["content"] for r in replies(store, session_id) if r["in_reply_to"] == message_id]
    return json.loads(found[0])["text"] if found else None


def finished(store: Cronbox, task_id: str) -> bool:
    return any(r.outcome is not None for r in store.runs_for(task_id))


async def test_agent_schedules_a_task_that_fires_and_cancels_a_series_by_its_id(
    tmp_path: Path, runtime: str
) -> None:
    settings = make_settings(tmp_path / "home", min_interval=1.0, runtime=runtime)
    store = Cronbox.from_settings(settings)
    session = store.create_session("mcp", agent="scripted")
    series = store.schedule_task(session.id, {"prompt": "tick", "recurrence": "@every 2s"}).id
    async with running_host(settings):
        # 1. The agent schedules a task for three seconds from now.
        ask = store.send_message(
            session.id,
            tool_calls(("schedule_task", {"prompt": "ring the bell", "processAfter": "+3s"})),
        ).id
        answer = await wait_for(lambda: reply_to(store, session.id, ask), LOOP_GUARD)
        assert "[error]" not in answer, answer
        match = re.search(r"Scheduled task (task-[0-9a-f]+).*?= (\S+) UTC", answer, re.S)
        assert match, answer
        task_id, first_run = match.groups()
        # 2. The host applies it, and it fires on time with its reply delivered.
        await wait_for(lambda: finished(store, task_id), LOOP_GUARD)
        await wait_for(lambda: reply_to(store, session.id, task_id), LOOP_GUARD)
        bell = next(r for r in replies(store, session.id) if r["in_reply_to"] == task_id)
        await wait_for(lambda: bell["seq"] in delivered_seqs(store, session.id), LOOP_GUARD)

        # 3. The agent cancels the recurring series by its series id.
        assert finished(store, series)  # it has been ticking all along
        cancel = store.send_message(session.id, tool_calls(("cancel_task", {"taskId": series})))
        cancelled = await wait_for(lambda: reply_to(store, session.id, cancel.id), LOOP_GUARD)
        assert "[error]" not in cancelled and "whole recurring series" in cancelled
        await wait_for(lambda: store.get_task(series).status is MessageStatus.CANCELLED, LOOP_GUARD)
        runs_at_cancel = len(store.runs_for(series))
        # 4. No further occurrence runs: a later marker task completes, the series stays put.
        due = fmt(store.now() + timedelta(seconds=3))
        marker = store.schedule_task(session.id, {"prompt": "marker", "processAfter": due}).id
        await wait_for(lambda: finished(store, marker), LOOP_GUARD)

    [run] = store.runs_for(task_id)
    assert run.outcome is RunOutcome.OK
    assert run.scheduled_for == first_run
    assert "echo: ring the bell" in (reply_to(store, session.id, task_id) or "")
    assert len(store.runs_for(series)) == runs_at_cancel
    live = [r for r in store.inbound_rows(session.id) if r.series_id == series and r.status.live]
    assert live == []
    agent = f"agent:{session.id}"
    audit = {(e.action, e.target): e.actor for e in store.audit_entries(session.id, limit=1000)}
    assert audit[("task.schedule", task_id)] == agent
    assert audit[("task.cancel", series)] == agent


async def test_a_refused_tool_call_reaches_the_agent_as_an_error_and_nothing_is_applied(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", min_interval=1.0)
    store = Cronbox.from_settings(settings)
    session = store.create_session("mcp", agent="scripted")
    async with running_host(settings):
        ask = store.send_message(
            session.id,
            tool_calls(
                ("schedule_task", {"prompt": "p", "recurrence": "0 25 * * *"}),
                ("cancel_task", {"taskId": "task-unknown"}),
                ("list_tasks", {}),
            ),
        ).id
        answer = await wait_for(lambda: reply_to(store, session.id, ask), LOOP_GUARD)
    lines = answer.splitlines()
    assert lines[0].startswith("schedule_task [error]:") and "hour 25 is out of range" in answer
    assert any(line.startswith("cancel_task [error]:") for line in lines)
    assert "list_tasks: No pending or paused tasks." in answer
    assert store.list_tasks(session.id) == []
