"""The claude-code provider: the options it hands the Claude Agent SDK, and Claude Code's
bundled CLI end to end, offline, against the local Anthropic-speaking server through the
host's gateway (the CLI reaches it by a loopback relay), with its session resumed."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_runner.check import check_profile
from agent_runner.provider import SessionContext
from agent_runner.providers import get_provider
from agent_runner.providers.claude_code import (
    CONFIG_DIR,
    ClaudeCodeProvider,
    build_options,
    mcp_tool_names,
)
from cronbox_shared.agents import AgentProfile
from cronbox_shared.models import RunOutcome
from cronbox_shared.settings import RunnerSettings
from host.service import Cronbox
from mcp_tools.tasks import TOOL_NAMES
from tests.fake_models import call, fake_model, say
from tests.hosting import make_settings, replies_to, running_host, wait_for
from tests.test_e2e_models import KEY, KEY_VAR, LOOP_GUARD, finished_run

pytestmark = pytest.mark.anyio

WEEKDAYS_AT_9 = "0 9 * * MON-FRI"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_for(session_dir: Path, **extra: str) -> RunnerSettings:
    values: dict[str, Any] = {
        "session_dir": session_dir, "provider": "claude-code", "model": "claude-sonnet-4-5",
        "system": "You schedule things.", "max_turns": 5, "secret_names": ("GITHUB_TOKEN",),
        "allowed_tools": ("Read", "Bash(git status)"), **extra,
    }  # fmt: skip
    return RunnerSettings(**values)


def test_the_options_carry_the_sessions_mcp_server_its_tools_prompt_limits_and_resume(
    tmp_path: Path,
) -> None:
    (tmp_path / "workspace").mkdir()
    settings = settings_for(tmp_path, timezone="Europe/Berlin")
    context = SessionContext(tmp_path, "Europe/Berlin", datetime(2026, 1, 15, tzinfo=UTC))
    environ = {"PATH": "/usr/bin", "GITHUB_TOKEN": "ghp-secret", "HOME": "/root"}
    options = build_options(
        settings, context, base_url="http://127.0.0.1:9", key=None, resume="sess-1",
        environ=environ,
    )  # fmt: skip
    assert isinstance(options.mcp_servers, dict)
    server: dict[str, Any] = dict(options.mcp_servers["cronbox"])
    assert server["type"] == "stdio"
    assert (server["command"], server["args"]) == (sys.executable, ["-m", "mcp_tools"])
    assert server["env"]["CRONBOX_SESSION_DIR"] == str(tmp_path)
    assert server["env"]["CRONBOX_TIMEZONE"] == "Europe/Berlin"
    assert "ghp-secret" not in server["env"].values()
    assert options.strict_mcp_config
    assert options.allowed_tools == [
        *(f"mcp__cronbox__{n}" for n in TOOL_NAMES), "Read", "Bash(git status)",
    ]  # fmt: skip
    assert options.tools == ["Bash", "Read"]  # the only built-ins the model is shown
    assert len(mcp_tool_names()) == 6
    assert options.permission_mode == "dontAsk"
    assert options.system_prompt == "You schedule things."
    assert (options.max_turns, options.model) == (5, "claude-sonnet-4-5")
    assert options.resume == "sess-1"
    assert options.cwd == tmp_path / "workspace"
    assert options.env["GITHUB_TOKEN"] == ""  # blanked: the SDK passes its own env on
    assert options.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert options.env["ANTHROPIC_API_KEY"] == "held-by-the-host"
    assert options.env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "workspace" / CONFIG_DIR)
    assert options.setting_sources == []


def test_without_a_gateway_the_profiles_own_key_and_url_are_used(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_key_env=KEY_VAR, base_url="http://127.0.0.1:8")
    provider = ClaudeCodeProvider(settings, environ={KEY_VAR: KEY})
    assert provider.key == KEY
    assert isinstance(get_provider("claude-code", settings), ClaudeCodeProvider)


@pytest.mark.e2e
async def test_claude_code_schedules_through_mcp_and_resumes_its_session_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("CRONBOX_MIN_INTERVAL", "1")
    monkeypatch.setenv(KEY_VAR, KEY)
    home = tmp_path / "home"
    turns = [
        call("mcp__cronbox__schedule_task",
             {"prompt": "check the build", "recurrence": WEEKDAYS_AT_9}),
        say("Done: every weekday at 9."),
        say("You asked me to remind you to check the build."),
        say("Digest: all quiet."),
    ]  # fmt: skip
    with fake_model(turns) as fake:
        home.mkdir(parents=True)
        (home / "agents.toml").write_text(
            "[agents.claude]\n"
            'provider = "claude-code"\n'
            'model = "claude-sonnet-4-5"\n'
            f'base_url = "{fake.base}"\n'
            f'api_key_env = "{KEY_VAR}"\n'
            "max_turns = 6\n"
        )
        settings = make_settings(home)
        store = Cronbox.from_settings(settings)
        session = store.create_session("cc", agent="claude", timezone="Europe/Berlin")
        async with running_host(settings):
            ask = store.send_message(session.id, "remind me every weekday at 9 to check the build")
            answer = await wait_for(lambda: replies_to(store, session.id, ask.id), LOOP_GUARD)
            assert answer == ["Done: every weekday at 9."]
            [task] = store.list_tasks(session.id)
            assert (task.recurrence, task.timezone) == (WEEKDAYS_AT_9, "Europe/Berlin")
            again = store.send_message(session.id, "what did I ask you?")
            assert await wait_for(lambda: replies_to(store, session.id, again.id), LOOP_GUARD) == [
                "You asked me to remind you to check the build."
            ]
            assert finished_run(store, task.id) is None  # nothing ran the task itself
            digest = store.schedule_task(
                session.id, {"prompt": "write the digest", "processAfter": "now", "isolated": True}
            )
            done = await wait_for(lambda: finished_run(store, digest.id), LOOP_GUARD)
            assert done.outcome is RunOutcome.OK, done.error
    # The isolated task started afresh: none of the chat reached the model.
    isolated = str(fake.requests[3]["messages"])
    assert "write the digest" in isolated and "remind me" not in isolated
    # The model was shown the session's task tools and no built-in tool (none allowed).
    assert len(fake.requests) == 4
    for body in fake.requests:
        assert sorted(t["name"] for t in body["tools"]) == sorted(mcp_tool_names())
    prompts = [str(body["messages"]) for body in fake.requests]
    # The tool's answer went back, and the second wake resumed the first conversation.
    assert "Scheduled task" in prompts[1]
    assert "remind me every weekday at 9" in prompts[2] and "what did I ask you?" in prompts[2]
    # The key was added by the host's gateway; the CLI only ever held a placeholder.
    assert all(h.get("x-api-key") == KEY for h in fake.headers)


async def test_agent_check_asks_claude_code_once_without_tools(tmp_path: Path) -> None:
    with fake_model([say("OK")]) as fake:
        profile = AgentProfile(
            provider="claude-code", model="claude-sonnet-4-5", base_url=fake.base,
            api_key_env=KEY_VAR,
        )  # fmt: skip
        sentence = await check_profile(profile, {**os.environ, KEY_VAR: KEY})
    assert sentence == "claude-code answered: OK"
    [body] = fake.requests
    assert "tools" not in body or not body["tools"]
    assert fake.headers[0]["x-api-key"] == KEY
