"""A runner's environment is an allowlist: the rules by table, then real runners started by
the process runtime, whose own environment and whose gate scripts' are read back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from agent_runner.mcp_client import server_parameters
from agent_runner.provider import SessionContext
from cronbox_shared import sessiondb as sdb
from cronbox_shared.environment import gate_environment, runner_environment, tool_environment
from cronbox_shared.errors import InvalidSecret, UnknownRunnerSetting
from cronbox_shared.settings import RunnerSettings
from host.runtimes import ProcessRuntime, RunnerHandle, RunnerSpec, RunnerStartFailed
from host.service import Cronbox
from host.store.records import Session

# Bounds that turn a hang into a failure; never a statement about how long things take.
HANG_GUARD = 30

HOST = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/op", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8",
    "LC_ALL": "C.UTF-8", "TZ": "Europe/Berlin", "OPENAI_API_KEY": "sk-host",
    "AWS_SECRET_ACCESS_KEY": "aws-host", "CRONBOX_HOME": "/srv/cronbox",
    "CRONBOX_API_KEY": "host-api-key", "PYTHONPATH": "/somewhere", "LANGUAGE": "de",
    "SSH_AUTH_SOCK": "/tmp/agent.sock", "XLC_ALL": "x",
}  # fmt: skip
SETTINGS = {"CRONBOX_PROVIDER": "echo", "CRONBOX_TIMEZONE": "UTC"}
LABELS = {"CRONBOX_HOST_HOME": "/srv/cronbox", "CRONBOX_SESSION_DIR": "/srv/cronbox/sessions/s"}


@pytest.mark.parametrize(
    ("name", "passes"),
    [
        ("PATH", True), ("HOME", True), ("LANG", True), ("LC_TIME", True), ("LC_ALL", True),
        ("TZ", True), ("OPENAI_API_KEY", False), ("AWS_SECRET_ACCESS_KEY", False),
        ("CRONBOX_HOME", False), ("CRONBOX_API_KEY", False), ("PYTHONPATH", False),
        ("LANGUAGE", False), ("SSH_AUTH_SOCK", False), ("XLC_ALL", False),
    ],
)  # fmt: skip
def test_only_the_basic_variables_of_the_host_reach_a_runner(name: str, passes: bool) -> None:
    env = runner_environment(HOST, SETTINGS, {}, LABELS)
    assert (name in env) is passes
    if passes:
        assert env[name] == HOST[name]


def test_a_runner_gets_its_settings_labels_and_secrets_and_the_secrets_names() -> None:
    env = runner_environment(HOST, SETTINGS, {"GITHUB_TOKEN": "gh", "DB_PASSWORD": "pw"}, LABELS)
    assert env == {
        "PATH": "/usr/bin:/bin", "HOME": "/home/op", "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "Europe/Berlin",
        **SETTINGS, **LABELS, "CRONBOX_SECRET_NAMES": "DB_PASSWORD,GITHUB_TOKEN",
        "GITHUB_TOKEN": "gh", "DB_PASSWORD": "pw",
    }  # fmt: skip


def test_the_secret_names_come_from_the_secrets_whatever_the_settings_say() -> None:
    settings = {**SETTINGS, "CRONBOX_SECRET_NAMES": "SOMETHING_ELSE"}
    assert runner_environment(HOST, settings, {}, LABELS)["CRONBOX_SECRET_NAMES"] == ""


def test_labels_win_over_the_settings_of_the_same_name() -> None:
    settings = {**SETTINGS, "CRONBOX_SESSION_DIR": "/elsewhere"}
    env = runner_environment(HOST, settings, {}, LABELS)
    assert env["CRONBOX_SESSION_DIR"] == LABELS["CRONBOX_SESSION_DIR"]


def test_a_variable_that_is_no_runner_setting_is_refused() -> None:
    with pytest.raises(UnknownRunnerSetting, match=r"^OPENAI_API_KEY is not a runner setting"):
        runner_environment(HOST, {**SETTINGS, "OPENAI_API_KEY": "sk"}, {}, LABELS)


@pytest.mark.parametrize(
    "name",
    ["PATH", "TZ", "LC_CTYPE", "CRONBOX_PROVIDER", "CRONBOX_SECRET_NAMES", "CRONBOX_HOST_HOME",
     "USER", "SHELL", "has space", "A,B", "1ABC", ""],
)  # fmt: skip
def test_a_secret_may_not_shadow_another_variable_or_be_an_odd_name(name: str) -> None:
    with pytest.raises(InvalidSecret, match="rename it in the agent profile"):
        runner_environment(HOST, SETTINGS, {name: "x"}, LABELS)


def test_a_gate_script_gets_the_runners_environment_minus_every_secret() -> None:
    runner = runner_environment(HOST, SETTINGS, {"GITHUB_TOKEN": "gh", "DB_PASSWORD": "pw"}, LABELS)
    gate = gate_environment(runner, ["GITHUB_TOKEN", "DB_PASSWORD"])
    assert gate == {k: v for k, v in runner.items() if k not in {"GITHUB_TOKEN", "DB_PASSWORD"}}
    assert "CRONBOX_PROVIDER" in gate and "PATH" in gate


def test_the_mcp_server_gets_the_settings_and_basics_and_no_secret(tmp_path: Path) -> None:
    settings = RunnerSettings(session_dir=tmp_path, secret_names=("GITHUB_TOKEN",))
    runner = {**HOST, **settings.to_env(), "GITHUB_TOKEN": "gh"}
    env = tool_environment(settings, runner)
    assert env == {
        "PATH": "/usr/bin:/bin", "HOME": "/home/op", "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "Europe/Berlin",
        **settings.to_env(),
    }  # fmt: skip
    context = SessionContext(tmp_path, "Asia/Tokyo", datetime(2026, 1, 1, tzinfo=UTC))
    params = server_parameters(context, runner)
    assert params.env is not None
    assert "GITHUB_TOKEN" not in params.env and "OPENAI_API_KEY" not in params.env
    assert params.env["CRONBOX_TIMEZONE"] == "Asia/Tokyo"
    assert params.env["CRONBOX_SESSION_DIR"] == str(tmp_path)


# --- real runners ------------------------------------------------------------------------

CANARIES = {"CRONBOX_CANARY": "leaked-1", "CANARY_API_KEY": "leaked-2"}
SECRET = ("AGENT_TEST_SECRET", "s3cret-value")
# Writes its environment where the test can read it, then lets the occurrence be skipped.
DUMP_ENV = "env -0 > gate.env.tmp && mv gate.env.tmp gate.env; echo '{\"wakeAgent\": false}'"


def environ_of(raw: bytes) -> dict[str, str]:
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {k.decode(): v.decode() for k, sep, v in pairs if sep}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cronbox:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TZ", "UTC")
    return Cronbox(tmp_path / "home")


class Runners:
    """A process runtime whose runners are all killed when the test ends."""

    def __init__(self) -> None:
        self.runtime = ProcessRuntime()
        self.handles: list[RunnerHandle] = []

    async def start(self, spec: RunnerSpec) -> RunnerHandle:
        with anyio.fail_after(HANG_GUARD):
            handle = await self.runtime.start(spec)
        self.handles.append(handle)
        return handle


@pytest.fixture
async def runners(anyio_backend: str) -> AsyncIterator[Runners]:
    pool = Runners()
    try:
        yield pool
    finally:
        with anyio.fail_after(HANG_GUARD):
            for handle in pool.handles:
                await pool.runtime.kill(handle)


def spec_for(store: Cronbox, session: Session, secrets: dict[str, str]) -> RunnerSpec:
    directory = store.session_dir(session.id).resolve()
    settings = RunnerSettings(session_dir=directory, idle_timeout=600, poll_interval=0.05)
    return RunnerSpec(session.id, directory, store.home, settings.to_env(), secrets)


async def read_when_written(path: Path) -> bytes:
    with anyio.fail_after(HANG_GUARD):
        # The gate writes its file once; a file has no change event, so poll for it.
        while not await anyio.Path(path).exists():  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return await anyio.Path(path).read_bytes()


@pytest.mark.anyio
@pytest.mark.e2e
async def test_host_variables_reach_neither_a_runner_nor_its_gate_and_secrets_only_the_runner(
    store: Cronbox, runners: Runners
) -> None:
    session = store.create_session("env")
    store.schedule_task(session.id, {"prompt": "p", "processAfter": "now", "script": DUMP_ENV})
    handle = await runners.start(spec_for(store, session, dict([SECRET])))

    directory = store.session_dir(session.id)
    gate = environ_of(await read_when_written(directory / sdb.WORKSPACE / "gate.env"))
    runner = environ_of(await anyio.Path(f"/proc/{handle.ref}/environ").read_bytes())

    for name in CANARIES:
        assert name not in runner, f"{name} leaked into the runner"
        assert name not in gate, f"{name} leaked into the gate script"
    name, value = SECRET
    assert runner[name] == value
    assert runner["CRONBOX_SECRET_NAMES"] == name
    assert name not in gate
    for env in (runner, gate):
        assert env["PATH"] == os.environ["PATH"] and env["TZ"] == "UTC"
        assert env["CRONBOX_SESSION_DIR"] == str(directory.resolve())
        assert env["CRONBOX_HOST_HOME"] == str(store.home)
    assert set(runner) - {"PWD", "SHLVL", "_"} <= (
        {"PATH", "HOME", "LANG", "TZ", "CRONBOX_HOST_HOME", name}
        | set(RunnerSettings.env_names())
        | {k for k in os.environ if k.startswith("LC_")}
    )


@pytest.mark.anyio
async def test_a_secret_that_shadows_a_runner_variable_is_a_start_failure(
    store: Cronbox, runners: Runners
) -> None:
    session = store.create_session("bad-secret")
    with pytest.raises(RunnerStartFailed, match='secret "PATH" has the name of a variable'):
        await runners.start(spec_for(store, session, {"PATH": "/evil"}))
    assert runners.handles == []
