"""Natural-language scheduling end to end: a real host and runner, the official SDKs
against local servers that speak the vendors' wire protocols, the real MCP server.

The fake model is scripted per call; what the runner sends it (prompts, tool results)
and what the host ends up with (the task, its runs, the replies) are checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cronbox_shared.models import RunOutcome
from host.config import Settings
from host.service import Cronbox
from host.store.records import Session
from tests.fake_models import FakeModel, Turn, call, fail, fake_model, say
from tests.hosting import make_settings, replies_to, running_host, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

LOOP_GUARD = 60.0
KEY_VAR = "FAKE_MODEL_KEY"
KEY = "sk-test-0123456789"
WEEKDAYS_AT_9 = "0 9 * * MON-FRI"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("CRONBOX_MIN_INTERVAL", "1")
    monkeypatch.setenv(KEY_VAR, KEY)


@pytest.fixture(params=["openai", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=[False, True], ids=["whole", "streamed"])
def stream(request: pytest.FixtureRequest) -> bool:
    """Whether the profile streams the model's answers (``stream = true``)."""
    value: bool = request.param
    return value


def write_profile(home: Path, provider: str, base: str, **extra: Any) -> None:
    base_url = f"{base}/v1" if provider == "openai" else base
    lines = [
        "[agents.model]",
        f'provider = "{provider}"',
        'model = "test-model"',
        f'base_url = "{base_url}"',
        f'api_key_env = "{KEY_VAR}"',
        'system = "You schedule things."',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    home.mkdir(parents=True, exist_ok=True)
    (home / "agents.toml").write_text("\n".join(lines) + "\n")


def model_session(
    home: Path, provider: str, base: str, name: str, timezone: str | None = None, **extra: Any
) -> tuple[Settings, Cronbox, Session]:
    """A home whose profile ``model`` speaks to the fake at ``base``, and a session on it."""
    write_profile(home, provider, base, **extra)
    settings = make_settings(home)
    store = Cronbox.from_settings(settings)
    return settings, store, store.create_session(name, agent="model", timezone=timezone)


def tool_results(fake: FakeModel, request: int) -> list[str]:
    """The tool results the runner sent with one request (0-based), as text."""
    texts = []
    for message in fake.requests[request]["messages"]:
        if message["role"] == "tool":
            texts.append(message["content"])
        elif message["role"] == "user" and isinstance(message["content"], list):
            texts += [
                f"error: {b['content']}" if b.get("is_error") else b["content"]
                for b in message["content"]
                if b.get("type") == "tool_result"
            ]
    return texts


def finished_run(store: Cronbox, task_id: str) -> Any:
    runs = [r for r in store.runs_for(task_id) if r.outcome is not None]
    return runs[0] if runs else None


async def test_a_chat_becomes_a_weekday_task_whose_runs_call_the_model_with_its_prompt(
    tmp_path: Path, provider: str, stream: bool
) -> None:
    home = tmp_path / "home"
    turns = [
        call("schedule_task", {"prompt": "check the build", "recurrence": WEEKDAYS_AT_9}),
        say("Done: every weekday at 9 I will remind you to check the build."),
        say("Reminder: check the build."),
    ]
    with fake_model(turns) as fake:
        settings, store, session = model_session(
            home, provider, fake.base, "nl", timezone="Europe/Berlin", stream=stream
        )
        async with running_host(settings) as sweeper:
            ask = store.send_message(session.id, "remind me every weekday at 9 to check the build")
            answer = await wait_for(lambda: replies_to(store, session.id, ask.id), LOOP_GUARD)
            assert answer == ["Done: every weekday at 9 I will remind you to check the build."]
            [task] = store.list_tasks(session.id)
            assert (task.recurrence, task.timezone, task.prompt) == (
                WEEKDAYS_AT_9, "Europe/Berlin", "check the build",
            )  # fmt: skip
            # The tool's own answer went back to the model before it answered.
            assert "Scheduled task" in tool_results(fake, 1)[0]

            run = store.run_now(task.id)
            reminded = await wait_for(lambda: replies_to(store, session.id, run.id), LOOP_GUARD)
            assert reminded == ["Reminder: check the build."]
            done = await wait_for(lambda: finished_run(store, task.id), LOOP_GUARD)
            assert done.outcome is RunOutcome.OK
            assert sweeper.gateways is not None  # every call went through it, and was counted
            assert sweeper.gateways.tokens_today(session.id) == 3 * (11 + 7)
    assert all(bool(body.get("stream")) is stream for body in fake.requests)
    first, _, third = fake.user_texts()
    assert "[chat from" in first and "remind me every weekday at 9" in first
    assert "Timezone: Europe/Berlin." in first
    assert "[scheduled task" in third and "check the build" in third
    # The key reached the vendor, through the SDK's own header.
    assert all(KEY in h.get("authorization", "") + h.get("x-api-key", "") for h in fake.headers)
    system = fake.requests[0].get("system") or fake.requests[0]["messages"][0]["content"]
    assert system == "You schedule things."
    offered = {t.get("name") or t["function"]["name"] for t in fake.requests[0]["tools"]}
    assert offered >= {"schedule_task", "list_tasks", "cancel_task"}


async def test_a_bad_cron_goes_back_to_the_model_which_corrects_it(
    tmp_path: Path, provider: str
) -> None:
    home = tmp_path / "home"
    turns = [
        call("schedule_task", {"prompt": "stand up", "recurrence": "61 9 * * *"}),
        call("schedule_task", {"prompt": "stand up", "recurrence": "30 9 * * *"}),
        say("Scheduled for 09:30 daily."),
    ]
    with fake_model(turns) as fake:
        settings, store, session = model_session(home, provider, fake.base, "cron")
        async with running_host(settings):
            ask = store.send_message(session.id, "stand-up reminder every day at 9:30")
            answer = await wait_for(lambda: replies_to(store, session.id, ask.id), LOOP_GUARD)
            assert answer == ["Scheduled for 09:30 daily."]
            [task] = store.list_tasks(session.id)
            assert task.recurrence == "30 9 * * *"
    [refusal] = tool_results(fake, 1)
    assert refusal.startswith("error:") and "61" in refusal


async def test_an_api_error_fails_the_run_with_the_vendors_text(
    tmp_path: Path, provider: str, stream: bool
) -> None:
    home = tmp_path / "home"
    with fake_model([fail(404, "model 'test-model' not found")], repeat_last=True) as fake:
        settings, store, session = model_session(home, provider, fake.base, "err", stream=stream)
        task = store.schedule_task(session.id, {"prompt": "p", "recurrence": WEEKDAYS_AT_9})
        async with running_host(settings):
            store.run_now(task.id)
            run = await wait_for(lambda: finished_run(store, task.id), LOOP_GUARD)
    assert run.outcome is RunOutcome.ERROR
    assert run.error == "the model API answered 404: model 'test-model' not found"


async def test_a_model_still_calling_tools_at_max_turns_fails_the_run_with_that_reason(
    tmp_path: Path, provider: str
) -> None:
    home = tmp_path / "home"
    looping = [call("list_tasks", {})]
    with fake_model(looping, repeat_last=True) as fake:
        settings, store, session = model_session(home, provider, fake.base, "loop", max_turns=3)
        task = store.schedule_task(session.id, {"prompt": "p", "recurrence": WEEKDAYS_AT_9})
        async with running_host(settings):
            store.run_now(task.id)
            run = await wait_for(lambda: finished_run(store, task.id), LOOP_GUARD)
    assert run.outcome is RunOutcome.ERROR
    assert "after 3 model call(s) (max_turns)" in (run.error or "")
    assert len(fake.requests) == 3


async def test_the_runner_holds_no_key_and_its_gate_scripts_never_see_it(tmp_path: Path) -> None:
    """The host's gateway adds the key: neither it nor its variable's name is in the
    runner's world (a gate script's environment reaches the model here), nor in any file."""
    home = tmp_path / "home"
    with fake_model([say("seen")]) as fake:
        settings, store, session = model_session(home, "openai", fake.base, "keys")
        script = "jq -nc --arg env \"$(env)\" '{wakeAgent: true, data: $env}'"
        task = store.schedule_task(
            session.id, {"prompt": "p", "recurrence": WEEKDAYS_AT_9, "script": script}
        )
        async with running_host(settings):
            store.run_now(task.id)
            run = await wait_for(lambda: finished_run(store, task.id), LOOP_GUARD)
    assert run.outcome is RunOutcome.OK, run.error
    [prompt] = fake.user_texts()
    assert "CRONBOX_GATEWAY=gateway/model.sock" in prompt  # the script's env did arrive
    assert KEY not in prompt and KEY_VAR not in prompt
    assert KEY in fake.headers[0]["authorization"]  # added by the gateway
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_the_daily_token_budget_stops_a_session_that_used_it_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with fake_model([Turn(text="first", input_tokens=30, output_tokens=10)]) as fake:
        settings, store, session = model_session(
            home, "anthropic", fake.base, "budget", daily_token_budget=25
        )
        first = store.schedule_task(session.id, {"prompt": "a", "recurrence": WEEKDAYS_AT_9})
        second = store.schedule_task(session.id, {"prompt": "b", "recurrence": WEEKDAYS_AT_9})
        async with running_host(settings) as sweeper:
            store.run_now(first.id)
            assert (await wait_for(lambda: finished_run(store, first.id))).outcome is RunOutcome.OK
            store.run_now(second.id)
            refused = await wait_for(lambda: finished_run(store, second.id), LOOP_GUARD)
            assert sweeper.gateways is not None
            assert sweeper.gateways.tokens_today(session.id) == 40
    assert refused.outcome is RunOutcome.ERROR
    assert refused.error == (
        "the model API answered 403: the session's daily token budget of 25 tokens is used up"
    )
    assert len(fake.requests) == 1  # the refused call never reached the vendor


def conversation(fake: FakeModel, request: int) -> list[str]:
    """The texts of one request's messages (system prompt left out), in order."""
    texts = []
    for message in fake.requests[request]["messages"]:
        content = message["content"]
        if message["role"] == "system":
            continue
        if isinstance(content, list):
            content = " ".join(b.get("text") or str(b.get("content") or "") for b in content)
        texts.append(f"{message['role']}: {content}")
    return texts


async def test_a_later_chat_sees_the_earlier_exchanges_and_an_isolated_task_sees_none(
    tmp_path: Path, provider: str
) -> None:
    home = tmp_path / "home"
    turns = [
        call("list_tasks", {}),
        say("Nice to meet you, Ada."),
        say("Here is your digest."),
        say("Your name is Ada."),
    ]
    with fake_model(turns) as fake:
        settings, store, session = model_session(home, provider, fake.base, "talk")
        digest = store.schedule_task(
            session.id, {"prompt": "write the digest", "recurrence": WEEKDAYS_AT_9,
                         "isolated": True},
        )  # fmt: skip
        async with running_host(settings):
            hello = store.send_message(session.id, "my name is Ada")
            await wait_for(lambda: replies_to(store, session.id, hello.id), LOOP_GUARD)
            run = store.run_now(digest.id)
            assert await wait_for(lambda: replies_to(store, session.id, run.id), LOOP_GUARD) == [
                "Here is your digest."
            ]
            ask = store.send_message(session.id, "what is my name?")
            answer = await wait_for(lambda: replies_to(store, session.id, ask.id), LOOP_GUARD)
    assert answer == ["Your name is Ada."]
    # The isolated run saw its own prompt only: no history.
    [isolated] = conversation(fake, 2)
    assert "write the digest" in isolated
    # The next chat saw the first exchange, its tool turn included, and not the digest.
    later = conversation(fake, 3)
    assert "my name is Ada" in later[0] and "Nice to meet you, Ada." in later[-2]
    assert len(later) == 5  # prompt, tool call, tool result, answer; then the new prompt
    assert "what is my name?" in later[-1]
    assert not any("[scheduled task" in text or "Here is your digest" in text for text in later)
