"""The ``command`` provider: a real program, the rendered prompt on stdin, stdout the one
reply; killed after its timeout or once it prints more than the cap; secrets kept."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent_runner.prompt import render_row
from agent_runner.provider import Batch, BatchItem, RowOutcome, SessionContext
from agent_runner.providers.command import CommandProvider
from cronbox_shared.errors import ProviderError, RunnerConfigError
from cronbox_shared.models import MessageKind
from cronbox_shared.rows import InboxRow
from cronbox_shared.settings import RunnerSettings
from host.service import Cronbox
from tests.hosting import make_settings, replies_to, running_host, wait_for

LOOP_GUARD = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def row(n: int, trigger: int = 1) -> InboxRow:
    return InboxRow(
        id=f"chat-{n}", seq=2 * n, kind=MessageKind.CHAT, created_at="2026-01-15T08:00:00.000Z",
        process_after=None, scheduled_for=None, recurrence=None,
        timezone="UTC", series_id=None, tries=0, trigger=trigger,
        content={"text": f"message {n}", "sender": "ana"},
    )  # fmt: skip


def batch_in(session_dir: Path, *rows: InboxRow) -> Batch:
    (session_dir / "workspace").mkdir(exist_ok=True)
    local = datetime(2026, 1, 15, 9, 0, tzinfo=ZoneInfo("UTC"))
    items = tuple(BatchItem(r, render_row(r)) for r in rows)
    return Batch(items, SessionContext(session_dir, "UTC", local), "PROMPT\n" + "\n".join(
        i.text for i in items
    ))  # fmt: skip


def provider(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None,
             **fields: Any) -> CommandProvider:  # fmt: skip
    settings = RunnerSettings(session_dir=tmp_path, provider="command",
                              command=json.dumps(argv), **fields)  # fmt: skip
    return CommandProvider(settings, env if env is not None else {"PATH": "/usr/bin:/bin"})


@pytest.mark.anyio
async def test_the_prompt_goes_in_on_stdin_and_stdout_is_one_reply_for_the_batch(
    tmp_path: Path,
) -> None:
    agent = provider(tmp_path, ["sh", "-c", 'echo "got $(wc -l) lines"; pwd'])
    first, second = row(1), row(2)
    result = await agent.run(batch_in(tmp_path, first, second))
    reply = f"got 2 lines\n{tmp_path / 'workspace'}"
    assert result.outcome_for(second.id) == RowOutcome.success(reply)
    assert result.outcome_for(first.id) == RowOutcome.success(None)


@pytest.mark.anyio
async def test_a_command_past_its_timeout_is_killed_and_fails_the_batch(tmp_path: Path) -> None:
    agent = provider(tmp_path, ["sh", "-c", "sleep 30"], command_timeout=0.2)
    with pytest.raises(ProviderError, match=r"^command sh timed out after 0.2 s$"):
        await agent.run(batch_in(tmp_path, row(1)))


@pytest.mark.anyio
async def test_output_over_the_cap_is_cut_off_and_fails_the_batch(tmp_path: Path) -> None:
    settings = RunnerSettings(session_dir=tmp_path, provider="command",
                              command=json.dumps(["sh", "-c", "yes hello"]))  # fmt: skip
    agent = CommandProvider(settings, {"PATH": "/usr/bin:/bin"}, output_cap=1024)
    with pytest.raises(ProviderError, match=r"^command sh printed more than 1024 bytes$"):
        await agent.run(batch_in(tmp_path, row(1)))


@pytest.mark.anyio
async def test_a_failing_command_reports_its_status_and_last_stderr_line(tmp_path: Path) -> None:
    agent = provider(tmp_path, ["sh", "-c", "echo 'no model configured' >&2; exit 3"])
    with pytest.raises(
        ProviderError, match=r"^command sh exited with status 3: no model configured$"
    ):
        await agent.run(batch_in(tmp_path, row(1)))


@pytest.mark.anyio
async def test_the_command_gets_its_own_key_but_no_other_secret(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AGENT_KEY": "k1", "GITHUB_TOKEN": "t2"}
    agent = provider(
        tmp_path, ["sh", "-c", "echo \"${AGENT_KEY:-none} ${GITHUB_TOKEN:-none}\""], env,
        api_key_env="AGENT_KEY", secret_names=("AGENT_KEY", "GITHUB_TOKEN"),
    )  # fmt: skip
    result = await agent.run(batch_in(tmp_path, row(1)))
    assert result.outcome_for("chat-1").reply == "k1 none"


def test_a_command_setting_that_is_not_a_json_list_is_one_sentence(tmp_path: Path) -> None:
    settings = RunnerSettings(session_dir=tmp_path, provider="command", command="prog arg")
    with pytest.raises(RunnerConfigError, match='CRONBOX_COMMAND "prog arg" is not a JSON list'):
        CommandProvider(settings, {})


@pytest.mark.anyio
@pytest.mark.e2e
async def test_a_command_profile_answers_chat_through_a_real_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    home = tmp_path / "home"
    home.mkdir()
    (home / "agents.toml").write_text(
        '[agents.cli]\nprovider = "command"\n'
        'command = ["sh", "-c", "grep -o \\"chat from [a-z]*\\""]\ntimeout = 30\n'
    )
    settings = make_settings(home)
    store = Cronbox.from_settings(settings)
    session = store.create_session("cli", agent="cli")
    async with running_host(settings):
        ask = store.send_message(session.id, "hello there")
        answer = await wait_for(lambda: replies_to(store, session.id, ask.id), LOOP_GUARD)
    assert answer == ["chat from user"]
