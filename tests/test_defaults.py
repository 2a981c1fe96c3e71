"""Every default comes from one table, whichever module applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runner import gate
from cronbox_shared.defaults import DEFAULTS
from host.config import Settings
from host.sweep import SweepConfig


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("SWEEP_INTERVAL", "MAX_CONTAINERS", "IDLE_TIMEOUT", "MIN_INTERVAL",
                 "MAX_TASKS_PER_SESSION", "TASK_TIMEOUT", "KEEP_FINISHED"):  # fmt: skip
        monkeypatch.delenv(f"CRONBOX_{name}", raising=False)
    return Settings(home=tmp_path)


@pytest.mark.parametrize(
    "field",
    ["sweep_interval", "max_containers", "idle_timeout", "min_interval",
     "max_tasks_per_session", "task_timeout", "keep_finished"],
)  # fmt: skip
def test_host_settings_default_to_the_table(settings: Settings, field: str) -> None:
    assert getattr(settings, field) == getattr(DEFAULTS, field)


@pytest.mark.parametrize(
    ("field", "default"),
    [("sweep_interval", "sweep_interval"), ("max_containers", "max_containers"),
     ("idle_timeout", "idle_timeout"), ("task_timeout", "task_timeout"),
     ("runner_poll", "runner_poll")],
)  # fmt: skip
def test_the_sweep_defaults_to_the_table(field: str, default: str) -> None:
    assert getattr(SweepConfig(), field) == getattr(DEFAULTS, default)


def test_finished_rows_are_kept_a_week_unless_cronbox_keep_finished_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULTS.keep_finished == 604800
    monkeypatch.setenv("CRONBOX_KEEP_FINISHED", "3600")
    assert Settings(home=tmp_path).keep_finished == 3600.0
    monkeypatch.setenv("CRONBOX_KEEP_FINISHED", "0")
    with pytest.raises(ValueError, match="keep_finished"):
        Settings(home=tmp_path)


def test_gate_scripts_default_to_the_tables_timeout_and_output_cap() -> None:
    defaults = gate.run_gate.__kwdefaults__ or {}
    assert defaults["timeout"] == DEFAULTS.gate_timeout == 30.0
    assert defaults["output_cap"] == DEFAULTS.gate_output_cap == 1024 * 1024


def test_the_table_cannot_be_changed_while_cronbox_runs() -> None:
    with pytest.raises(AttributeError):
        DEFAULTS.sweep_interval = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        DEFAULTS.not_a_default = 1  # type: ignore[attr-defined]
