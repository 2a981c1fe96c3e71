"""Natural-language scheduling end to end: a real host and runner, the official SDKs
against local servers that speak the vendors' wire protocols, the real MCP server.

The fake model is scripted per call; what the runner sends it (prompts, tool results)
and what the host ends up with (the task, its runs, the replies) are checked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from cronbox_shared.models import RunOutcome
from host.config import Settings
from host.service import Cronbox
from host.store.records import Session
from tests.cli_harness import as_json, cli_for, ok
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
    home: Path,
    provider: str,
    base: str,
    name: str,
    timezone: str | None = None,
    *,
    runtime: str = "process",
    idle_timeout: float = 1.0,
    **extra: Any,
) -> tuple[Settings, Cronbox, Session]:
    """A home whose profile ``model`` speaks to the fake at ``base``, and a session on it."""
    write_profile(home, provider, base, **extra)
    settings = make_settings(home, runtime=runtime, idle_timeout=idle_timeout)
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
    tmp_path: Path, provider: str, runtime: str, stream: bool
) -> None:
    """With the docker runtime the container has no network: the host's gateway is its
    only way to the model (the fake vendor listens on the host's loopback)."""
    home = tmp_path / "home"
    turns = [
        call("schedule_task", {"prompt": "check the build", "recurrence": WEEKDAYS_AT_9}),
        say("Done: every weekday at 9 I will remind you to check the build."),
        Turn(text="Reminder: check the build.", input_tokens=40, output_tokens=9),
    ]
    with fake_model(turns) as fake:
        settings, store, session = model_session(
            home,
            provider,
            fake.base,
            "nl",
            timezone="Europe/Berlin",
            runtime=runtime,
            stream=stream,
        )
        async with running_host(settings):
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
            chat_run = store.runs_of(session.id, [ask.id])[ask.id]
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
    # What each run cost, as the gateway counted it: the chat took two calls of 11/7.
    assert (chat_run.input_tokens, chat_run.output_tokens) == (22, 14), (
        "no tokens charged to the run: is the agent image older than the runner that names "
        "its rows to the gateway? `cronbox image build`"
    )
    cli = cli_for(home)
    history = as_json(cli("task", "history", task.id, "--json"))
    assert [(r["input_tokens"], r["output_tokens"]) for r in history["runs"]] == [(40, 9)]
    assert (history["input_tokens"], history["output_tokens"]) == (40, 9)
    assert "40 / 9" in ok(cli("task", "history", task.id)).stdout
    today = as_json(cli("status", "--json"))["tokens_today"]
    assert (today["input_tokens"], today["output_tokens"]) == (62, 23)
    assert [(s["session"], s["input_tokens"], s["output_tokens"]) for s in today["sessions"]] == [
        ("nl", 62, 23)
    ]
    shown = ok(cli("status")).stdout
    assert "model tokens today" in shown and "62 in, 23 out" in shown


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


async def test_no_key_nor_its_name_reaches_the_runner_its_gates_logs_or_files(
    tmp_path: Path, runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The host's gateway adds the key: neither it nor its variable's name is in the
    runner's world (a gate script's environment reaches the model here), in the
    container's configuration (``docker inspect``) or its log, in the host's log, or in
    any file of the home but the user's own agents.toml."""
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    with fake_model([say("seen")]) as fake:
        # The runner stays up after its work, so its container can be inspected.
        settings, store, session = model_session(
            home, "openai", fake.base, "keys", runtime=runtime, idle_timeout=60.0
        )
        # Python, as the agent image has it (and no jq): the whole environment as data.
        script = (
            'python3 -c \'import json, os; print(json.dumps({"wakeAgent": True, '
            '"data": "\\n".join(f"{k}={v}" for k, v in os.environ.items())}))\''
        )
        task = store.schedule_task(
            session.id, {"prompt": "p", "recurrence": WEEKDAYS_AT_9, "script": script}
        )
        async with running_host(settings):
            store.run_now(task.id)
            run = await wait_for(lambda: finished_run(store, task.id), LOOP_GUARD)
            containers = await anyio.to_thread.run_sync(inspect_runners, runtime, home)
    assert run.outcome is RunOutcome.OK, run.error
    [prompt] = fake.user_texts()
    assert "CRONBOX_GATEWAY=gateway/model.sock" in prompt  # the script's env did arrive
    assert KEY not in prompt and KEY_VAR not in prompt
    assert KEY in fake.headers[0]["authorization"]  # added by the gateway
    if runtime == "docker":
        [(inspected, logs)] = containers
        assert inspected["HostConfig"]["NetworkMode"] == "none"
        assert "runner started" in logs
        assert KEY not in inspected_text(inspected) + logs
        assert KEY_VAR not in inspected_text(inspected) + logs
    host_log = "\n".join(record.getMessage() for record in caplog.records)
    assert "model call 200" in host_log  # the gateway's own line is there
    assert KEY not in host_log and KEY_VAR not in host_log
    databases = 0
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data, path
            if path.name != "agents.toml":
                assert KEY_VAR.encode() not in data, path
            databases += path.suffix == ".db"
    assert databases >= 3  # cronbox.db and the session's inbound.db and outbound.db


def inspect_runners(runtime: str, home: Path) -> list[tuple[dict[str, Any], str]]:
    """``docker inspect`` and the log of each running container of ``home``."""
    if runtime != "docker":
        return []
    from tests.docker_support import containers_of, ready_engine

    found = containers_of(ready_engine(), home)
    return [(c.attrs, bytes(c.logs()).decode("utf-8", "replace")) for c in found]


def inspected_text(inspected: dict[str, Any]) -> str:
    return json.dumps(inspected)


async def test_the_daily_token_budget_stops_a_session_across_a_host_restart(
    tmp_path: Path,
) -> None:
    """The gateway's counts are stored: a host started after the budget was used up
    still refuses the session's next model call, and the run fails saying why."""
    home = tmp_path / "home"
    with fake_model([Turn(text="first", input_tokens=30, output_tokens=10)]) as fake:
        settings, store, session = model_session(
            home, "anthropic", fake.base, "budget", daily_token_budget=25
        )
        first = store.schedule_task(session.id, {"prompt": "a", "recurrence": WEEKDAYS_AT_9})
        second = store.schedule_task(session.id, {"prompt": "b", "recurrence": WEEKDAYS_AT_9})
        async with running_host(settings):
            store.run_now(first.id)
            spent = await wait_for(lambda: finished_run(store, first.id), LOOP_GUARD)
        async with running_host(settings):
            store.run_now(second.id)
            refused = await wait_for(lambda: finished_run(store, second.id), LOOP_GUARD)
    assert spent.outcome is RunOutcome.OK
    assert (spent.input_tokens, spent.output_tokens) == (30, 10)  # the gateway's count
    assert store.tokens_today(session.id).total == 40
    assert refused.outcome is RunOutcome.ERROR
    assert refused.error == (
        "the session's daily token budget of 25 tokens is used up (40 used today, UTC); "
        "raise daily_token_budget in agents.toml or wait for tomorrow"
    )
    assert (refused.input_tokens, refused.output_tokens) == (0, 0)
    assert len(fake.requests) == 1  # the refused call never reached the vendor
    [used] = as_json(cli_for(home)("status", "--json"))["tokens_today"]["sessions"]
    assert (used["session"], used["input_tokens"], used["output_tokens"]) == ("budget", 30, 10)
    assert used["daily_token_budget"] == 25


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
