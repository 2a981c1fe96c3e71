"""The runner's settings: rendered by the host, parsed by the runner and the MCP server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.errors import RunnerConfigError, ToolConfigError
from cronbox_shared.settings import RunnerSettings
from cronbox_shared.timeutil import ManualClock
from host.delivery import Delivery
from host.runtimes import ProcessRuntime
from host.service import Cronbox, Limits
from host.sweep import SweepConfig, Sweeper
from mcp_tools.config import ToolConfig


def test_every_setting_has_one_cronbox_variable() -> None:
    assert RunnerSettings.env_names() == (
        "CRONBOX_SESSION_DIR", "CRONBOX_PROVIDER", "CRONBOX_TIMEZONE", "CRONBOX_IDLE_TIMEOUT",
        "CRONBOX_POLL_INTERVAL", "CRONBOX_IDLE_POLL", "CRONBOX_CHANGE_SIGNAL",
        "CRONBOX_MAX_BATCH", "CRONBOX_GATE_TIMEOUT",
        "CRONBOX_MIN_INTERVAL", "CRONBOX_MAX_TASKS", "CRONBOX_SECRET_NAMES",
        "CRONBOX_MODEL", "CRONBOX_BASE_URL", "CRONBOX_API_KEY_ENV", "CRONBOX_SYSTEM",
        "CRONBOX_MAX_TURNS", "CRONBOX_MAX_TOKENS", "CRONBOX_COMMAND", "CRONBOX_COMMAND_TIMEOUT",
        "CRONBOX_STREAM", "CRONBOX_HISTORY_TOKENS", "CRONBOX_ALLOWED_TOOLS",
        "CRONBOX_GATEWAY",
    )  # fmt: skip
    with pytest.raises(KeyError):
        RunnerSettings.env_name("no_such_setting")


def test_unset_settings_take_the_tables_defaults(tmp_path: Path) -> None:
    settings = RunnerSettings.from_env({"CRONBOX_SESSION_DIR": str(tmp_path)})
    assert (settings.provider, settings.timezone, settings.secret_names) == ("echo", "UTC", ())
    assert settings.idle_timeout == DEFAULTS.idle_timeout
    assert settings.poll_interval == DEFAULTS.runner_poll
    assert settings.max_batch == DEFAULTS.max_batch
    assert settings.gate_timeout == DEFAULTS.gate_timeout
    assert settings.min_interval == DEFAULTS.min_interval
    assert settings.max_tasks == DEFAULTS.max_tasks_per_session


def test_what_the_host_renders_the_runner_reads_back_unchanged(tmp_path: Path) -> None:
    settings = RunnerSettings(
        session_dir=tmp_path, provider="scripted", timezone="Europe/Berlin", idle_timeout=2.5,
        poll_interval=0.05, max_batch=3, gate_timeout=1, min_interval=1, max_tasks=7,
        secret_names=("OPENAI_API_KEY", "GITHUB_TOKEN"),
    )  # fmt: skip
    env = settings.to_env()
    assert set(env) == set(RunnerSettings.env_names())
    assert env["CRONBOX_SECRET_NAMES"] == "GITHUB_TOKEN,OPENAI_API_KEY"
    assert RunnerSettings.from_env(env) == settings


def test_blank_values_are_unset_and_values_are_stripped(tmp_path: Path) -> None:
    settings = RunnerSettings.from_env(
        {"CRONBOX_SESSION_DIR": f" {tmp_path} ", "CRONBOX_PROVIDER": "  ",
         "CRONBOX_MAX_BATCH": " 4 ", "CRONBOX_SECRET_NAMES": " B , A,, "}
    )  # fmt: skip
    assert (settings.session_dir, settings.provider) == (tmp_path, "echo")
    assert (settings.max_batch, settings.secret_names) == (4, ("A", "B"))


def test_only_the_given_mapping_is_read_never_the_process_env_or_a_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CRONBOX_MAX_BATCH=3\nCRONBOX_PROVIDER=fail\n")
    monkeypatch.setenv("CRONBOX_GATE_TIMEOUT", "1")
    monkeypatch.setenv("CRONBOX_TIMEZONE", "Mars/Base")
    settings = RunnerSettings.from_env({"CRONBOX_SESSION_DIR": str(tmp_path)})
    assert (settings.max_batch, settings.provider) == (DEFAULTS.max_batch, "echo")
    assert (settings.gate_timeout, settings.timezone) == (DEFAULTS.gate_timeout, "UTC")
    assert RunnerSettings(session_dir=tmp_path) == settings


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "CRONBOX_IDLE_TIMEOUT",
            "0",
            'CRONBOX_IDLE_TIMEOUT "0" is not a positive number of seconds',
        ),
        ("CRONBOX_POLL_INTERVAL", "soon", 'CRONBOX_POLL_INTERVAL "soon" is not a positive number'),
        ("CRONBOX_GATE_TIMEOUT", "-1", 'CRONBOX_GATE_TIMEOUT "-1" is not a positive number'),
        ("CRONBOX_GATE_TIMEOUT", "nan", 'CRONBOX_GATE_TIMEOUT "nan" is not a positive number'),
        ("CRONBOX_MIN_INTERVAL", "inf", 'CRONBOX_MIN_INTERVAL "inf" is not a positive number'),
        ("CRONBOX_MAX_BATCH", "0", 'CRONBOX_MAX_BATCH "0" is not a positive whole number'),
        ("CRONBOX_MAX_TASKS", "2.5", 'CRONBOX_MAX_TASKS "2.5" is not a positive whole number'),
        ("CRONBOX_TIMEZONE", "Mars/Base", 'timezone "Mars/Base" (from CRONBOX_TIMEZONE)'),
        ("CRONBOX_SECRET_NAMES", "A B", 'CRONBOX_SECRET_NAMES "A B" is not a comma-separated'),
        ("CRONBOX_SESSION_DIR", "/no/such/dir", 'CRONBOX_SESSION_DIR "/no/such/dir" is not a dir'),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_variable_and_value(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    with pytest.raises(RunnerConfigError) as info:
        RunnerSettings.from_env({"CRONBOX_SESSION_DIR": str(tmp_path), variable: value})
    assert str(info.value).startswith(says)
    assert "\n" not in str(info.value)


def test_a_missing_session_dir_says_what_to_set() -> None:
    with pytest.raises(RunnerConfigError, match=r"^CRONBOX_SESSION_DIR is not set; set it to"):
        RunnerSettings.from_env({"CRONBOX_PROVIDER": "echo"})


def test_the_tools_need_a_session_dir_that_holds_the_inbox(tmp_path: Path) -> None:
    with pytest.raises(ToolConfigError, match=r'"\S+" holds no inbox/inbound.db; point it'):
        ToolConfig.from_env({"CRONBOX_SESSION_DIR": str(tmp_path)})
    store = Cronbox(tmp_path / "home")
    session = store.create_session("s", timezone="Europe/Berlin")
    settings = RunnerSettings(
        session_dir=store.session_dir(session.id), timezone=session.timezone,
        min_interval=90, max_tasks=3,
    )  # fmt: skip
    config = ToolConfig.from_env(settings.to_env())
    assert (config.session_dir, config.timezone) == (settings.session_dir, "Europe/Berlin")
    assert (config.min_interval, config.max_tasks) == (timedelta(seconds=90), 3)


def sweeper_for(store: Cronbox) -> Sweeper:
    config = SweepConfig(idle_timeout=12.0, runner_poll=0.3)
    return Sweeper(store, ProcessRuntime(), Delivery(store, []), config, store.clock)


def test_the_host_renders_what_it_knows_of_the_session_and_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in RunnerSettings.env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRONBOX_PROVIDER", "fail")  # the session's agent wins
    limits = Limits(min_interval=timedelta(seconds=5), max_tasks_per_session=9)
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-01T00:00:00Z"), limits=limits)
    session = store.create_session("s", agent="scripted", timezone="Asia/Tokyo")
    settings = RunnerSettings.from_env(sweeper_for(store).default_runner_env(session))
    assert settings == RunnerSettings(
        session_dir=store.session_dir(session.id).resolve(), provider="scripted",
        timezone="Asia/Tokyo", idle_timeout=12.0, poll_interval=0.3, min_interval=5,
        max_tasks=9,
    )  # fmt: skip


def test_an_operator_tunes_gates_and_batches_through_the_hosts_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONBOX_GATE_TIMEOUT", "2")
    monkeypatch.setenv("CRONBOX_MAX_BATCH", "4")
    monkeypatch.setenv("CRONBOX_SECRET_NAMES", "HOST_TOKEN")  # never from the host's env
    store = Cronbox(tmp_path / "home", clock=ManualClock("2026-01-01T00:00:00Z"))
    session = store.create_session("s")
    env = sweeper_for(store).default_runner_env(session)
    assert (env["CRONBOX_GATE_TIMEOUT"], env["CRONBOX_MAX_BATCH"]) == ("2.0", "4")
    assert env["CRONBOX_SECRET_NAMES"] == ""
    monkeypatch.setenv("CRONBOX_MAX_BATCH", "many")
    with pytest.raises(RunnerConfigError, match='CRONBOX_MAX_BATCH "many"'):
        sweeper_for(store).default_runner_env(session)
