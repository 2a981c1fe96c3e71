"""``python -m mcp_tools`` over real stdio with the mcp client, as the agent runner uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from agent_runner.mcp_client import open_toolbox
from agent_runner.provider import SessionContext
from cronbox_shared import sessiondb as sdb
from cronbox_shared.timeutil import fmt
from host.delivery import Delivery
from host.service import Cronbox
from host.store.records import Session
from tests.test_mcp_tools import CHAIN_ARGS

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

# Bounds that turn a hang into a failure; never a statement about how long things take.
SUBPROCESS_GUARD = 60

POLICY_ARGS = ["missedPolicy", "catchupLimit", "maxFailures", "jitter", "ignoreQuiet"]
ARGUMENTS = {
    "schedule_task": [
        "prompt",
        "processAfter",
        "recurrence",
        "script",
        "timezone",
        *POLICY_ARGS,
        *CHAIN_ARGS,
        "isolated",
    ],
    "list_tasks": ["status"],
    "cancel_task": ["taskId"],
    "pause_task": ["taskId"],
    "resume_task": ["taskId"],
    "update_task": [
        "taskId", "prompt", "processAfter", "recurrence", "script", *POLICY_ARGS, "isolated",
    ],
}  # fmt: skip
REQUIRED = {"schedule_task": ["prompt"], "list_tasks": []} | {
    name: ["taskId"] for name in ("cancel_task", "pause_task", "resume_task", "update_task")
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Cronbox:
    return Cronbox(tmp_path / "home")


@pytest.fixture
def session(store: Cronbox) -> Session:
    return store.create_session("agent", timezone="Europe/Berlin")


def server_env(store: Cronbox, session: Session, **extra: str) -> dict[str, str]:
    return {
        "CRONBOX_SESSION_DIR": str(store.session_dir(session.id)),
        "CRONBOX_TIMEZONE": session.timezone,
        **extra,
    }


@asynccontextmanager
async def stdio(env: dict[str, str]) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_tools"], env=env)
    with anyio.fail_after(SUBPROCESS_GUARD):
        async with Client(params) as client:
            yield client


async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(name, arguments)
    return bool(result.is_error), "\n".join(getattr(c, "text", "") for c in result.content)


def written(store: Cronbox, session: Session) -> list[dict[str, Any]]:
    directory = store.session_dir(session.id)
    if not (directory / sdb.OUTBOUND).exists():
        return []
    with sdb.outbound(directory, readonly=True) as db:
        return sdb.outbound_after(db, 0, 10_000) if sdb.outbound_ready(db) else []


async def test_tools_list_shows_the_six_tools_with_their_schemas(
    store: Cronbox, session: Session
) -> None:
    async with stdio(server_env(store, session)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == sorted(ARGUMENTS)
    for name, tool in tools.items():
        schema = tool.input_schema
        assert schema["type"] == "object"
        assert list(schema["properties"]) == ARGUMENTS[name]
        assert schema.get("required", []) == REQUIRED[name]
        for prop in schema["properties"].values():
            assert prop.get("description")
    status = tools["list_tasks"].input_schema["properties"]["status"]
    assert {"enum": ["pending", "paused"], "type": "string"} in status["anyOf"]


async def test_schedule_then_list_round_trips_through_the_host(
    store: Cronbox, session: Session
) -> None:
    when = fmt(store.now() + timedelta(hours=2))
    async with stdio(server_env(store, session)) as client:
        error, text = await call(
            client, "schedule_task", {"prompt": "stretch your legs", "processAfter": when}
        )
        assert not error, text
        task_id = text.split()[2]
        handled = await Delivery(store, []).deliver(session, store.undelivered(session.id))
        assert [h.status for h in handled] == ["applied"]
        error, listed = await call(client, "list_tasks", {})
    assert not error
    [line] = listed.splitlines()[1:]
    assert line.startswith(f"- {task_id} [pending]")
    assert f"= {when} UTC" in line and '"stretch your legs"' in line
    assert "waiting" not in line
    assert store.get_task(task_id, session_id=session.id).next_run == when


BAD = [
    pytest.param({"prompt": "p", "recurrence": "0 25 * * *"}, "hour 25 is out of range", id="cron"),
    pytest.param(
        {"prompt": "p", "processAfter": "+1h", "timezone": "Europe/Atlantis"},
        'timezone "Europe/Atlantis"',
        id="zone",
    ),
    pytest.param({"prompt": "p", "processAfter": "2020-01-01T09:00:00"}, "in the past", id="past"),
    pytest.param({"prompt": "x" * 102_400, "processAfter": "+1h"}, "64 KiB", id="100KiB"),
]


@pytest.mark.parametrize(("arguments", "says"), BAD)
async def test_bad_input_is_an_error_with_a_helpful_text_and_writes_nothing(
    store: Cronbox, session: Session, arguments: dict[str, Any], says: str
) -> None:
    async with stdio(server_env(store, session)) as client:
        error, text = await call(client, "schedule_task", arguments)
    assert error
    assert says in text
    assert written(store, session) == []


async def test_an_explicit_null_over_stdio_clears_the_script(
    store: Cronbox, session: Session
) -> None:
    task_id = store.schedule_task(
        session.id, {"prompt": "p", "recurrence": "@daily", "script": "echo '{}'"}
    ).id
    async with stdio(server_env(store, session)) as client:
        error, text = await call(client, "update_task", {"taskId": task_id, "script": None})
        error_empty, nothing = await call(client, "update_task", {"taskId": task_id})
    assert not error, text
    assert error_empty and "nothing to change" in nothing
    [row] = written(store, session)
    assert json.loads(row["content"]) == {
        "action": "update_task",
        "taskId": task_id,
        "script": None,
    }


async def test_the_runner_wiring_passes_the_session_and_the_hosts_limits_on(
    store: Cronbox, session: Session
) -> None:
    directory = store.session_dir(session.id)
    context = SessionContext(directory, session.timezone, store.now())
    every_2s = {"prompt": "p", "recurrence": "@every 2s"}
    with anyio.fail_after(SUBPROCESS_GUARD):
        async with open_toolbox(context, {"CRONBOX_MIN_INTERVAL": "60"}) as toolbox:
            assert {t.name for t in toolbox.tools} == set(ARGUMENTS)
            refused = await toolbox.call("schedule_task", every_2s)
            unknown = await toolbox.call("no_such_tool", {})
        async with open_toolbox(context, {"CRONBOX_MIN_INTERVAL": "1"}) as toolbox:
            accepted = await toolbox.call("schedule_task", every_2s)
    assert refused.is_error and "minimum of 60 seconds" in refused.text
    assert unknown.is_error
    assert not accepted.is_error and "(Europe/Berlin)" in accepted.text
    assert len(written(store, session)) == 1


def test_without_a_session_dir_the_server_exits_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_tools"],
        env={"PATH": "/usr/bin:/bin", "CRONBOX_SESSION_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_GUARD,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "holds no inbox/inbound.db" in done.stderr


NAIVE_BERLIN = {"prompt": "p", "processAfter": "2026-01-15T21:00:00", "recurrence": "@daily"}


async def test_without_a_configured_zone_a_naive_time_is_read_in_the_sessions_zone(
    store: Cronbox, session: Session
) -> None:
    store.send_message(session.id, "hello")  # a row the host writes in the session's zone
    # Without the host's zone record (a home from before it), the chat row tells the zone.
    with sdb.inbound(store.session_dir(session.id)) as db, db.atomic():
        db.execute("DELETE FROM session_info")
    env = {"CRONBOX_SESSION_DIR": str(store.session_dir(session.id))}
    async with stdio(env) as client:
        error, text = await call(client, "schedule_task", NAIVE_BERLIN)
    assert not error, text
    assert "21:00:00 CET (Europe/Berlin) = 2026-01-15T20:00:00.000Z UTC" in text
    assert "unknown" not in text
    [row] = written(store, session)
    content = json.loads(row["content"])
    assert (content["processAfter"], content["timezone"]) == (
        "2026-01-15T20:00:00.000Z",
        "Europe/Berlin",
    )


async def test_a_session_whose_zone_the_inbox_does_not_tell_reads_utc_and_says_so(
    store: Cronbox, session: Session
) -> None:
    # An inbox with neither the host's zone record nor a chat or system row.
    with sdb.inbound(store.session_dir(session.id)) as db, db.atomic():
        db.execute("DELETE FROM session_info")
    env = {"CRONBOX_SESSION_DIR": str(store.session_dir(session.id))}
    async with stdio(env) as client:
        error, text = await call(client, "schedule_task", NAIVE_BERLIN)
        error_named, named = await call(
            client, "schedule_task", {**NAIVE_BERLIN, "timezone": "Europe/Berlin"}
        )
    assert not error, text
    assert "= 2026-01-15T21:00:00.000Z UTC" in text
    assert "read in UTC; the session's zone is unknown" in text
    assert not error_named and "unknown" not in named


async def test_the_zone_the_host_recorded_is_read_without_any_message(
    store: Cronbox, session: Session
) -> None:
    env = {"CRONBOX_SESSION_DIR": str(store.session_dir(session.id))}
    async with stdio(env) as client:
        error, text = await call(client, "schedule_task", NAIVE_BERLIN)
    assert not error, text
    assert "21:00:00 CET (Europe/Berlin) = 2026-01-15T20:00:00.000Z UTC" in text
