"""Host settings: ``CRONBOX_*`` environment variables and ``.env`` (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.timeutil import resolve_host_timezone


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cronbox"


class Settings(BaseSettings):
    """Everything an operator can set; see the configuration table in README.md."""

    model_config = SettingsConfigDict(env_prefix="CRONBOX_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=default_home)
    sweep_interval: float = Field(default=DEFAULTS.sweep_interval, gt=0)
    max_containers: int = Field(default=DEFAULTS.max_containers, ge=1)
    idle_timeout: float = Field(default=DEFAULTS.idle_timeout, gt=0)
    runtime: Literal["process", "docker"] = "process"
    min_interval: float = Field(default=DEFAULTS.min_interval, gt=0)
    max_tasks_per_session: int = Field(default=DEFAULTS.max_tasks_per_session, ge=1)
    task_timeout: float = Field(default=DEFAULTS.task_timeout, gt=0)
    keep_finished: float = Field(default=DEFAULTS.keep_finished, gt=0)
    """Seconds a finished inbox row is kept (``CRONBOX_KEEP_FINISHED``); runs stay."""

    def timezone(self) -> str:
        """The host's zone name (TZ env, ``TZ=`` in ./.env, system zone, UTC)."""
        tz, _source = resolve_host_timezone()
        return tz.key
